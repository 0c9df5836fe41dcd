"""The privacy sweep's grid: its cells (algorithm × ε × secagg × seed), the base config, the
attack settings, and which cells the run config refuses (n/a)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, parse_run_config
from deploy.runs import REPO

ALGORITHMS = ("fedper", "fedavg", "local")
EPSILONS: tuple[float | None, ...] = (None, 8.0, 3.0, 1.0)
SEEDS = (0, 1, 2)
# Sized for the shared 2-core box: four clients (plan entries 0-3: four different task sets),
# 5 rounds of 3 local epochs, ~210 training pairs per client; only the final round is
# evaluated. Rounds are the expensive part under DP: each client's accountant recomputes ε
# over its whole history every round (about 0.1-0.8 s per history entry here).
BASE: dict[str, Any] = {
    "dataset": "multidigits",
    "num-clients": 4,
    "num-server-rounds": 5,
    "samples-per-client": 300,
    "local-epochs": 3,
    "eval-every": 5,
    "fraction-evaluate": 0.0,
}
NA_REASON = {
    "fedavg": "n/a (secure aggregation of per-task heads)",
    "local": "n/a (nothing shared)",
}
INVERSION_TASK = "left"  # the 10-class task R2 and label recovery attack
PSNR_CAP_DB = 99.0  # an exact reconstruction's infinite PSNR counts as this in the means
REPORTED_FPR = 0.01  # the membership tables' TPR@FPR column (`tpr_at_1pct_fpr`)


@dataclass(frozen=True)
class Cell:
    """One point of the grid; `epsilon` None means no DP."""

    algorithm: str
    epsilon: float | None
    secagg: bool
    seed: int

    @property
    def privacy_label(self) -> str:
        return "no DP" if self.epsilon is None else f"ε={self.epsilon:g}"

    @property
    def group(self) -> tuple[str, float | None, bool]:
        """Cells that differ only in the seed."""
        return (self.algorithm, self.epsilon, self.secagg)

    @property
    def name(self) -> str:
        eps = "nodp" if self.epsilon is None else f"eps{self.epsilon:g}"
        return f"{self.algorithm}-{eps}-sa{int(self.secagg)}-s{self.seed}"

    def overrides(self, base: dict[str, Any], root: Path) -> dict[str, Any]:
        out = {
            **base,
            "algorithm": self.algorithm,
            "seed": self.seed,
            "secagg": self.secagg,
            "run-name": self.name,
            "results-dir": str(root),
            "state-dir": str(root / "state" / self.name),
        }
        if self.epsilon is not None:
            out |= {"privacy": "dp-sgd", "dp-epsilon": self.epsilon, "dp-noise-multiplier": 0.0}
            # M3 replays round 1 exactly (`replay_round`), noise included; the product draws
            # DP noise from OS entropy, which no replay can repeat. None of the attacks uses
            # the seed to remove noise, so their numbers hold for unseeded noise as well.
            out["dp-insecure-seeded-noise"] = True
        return out


@dataclass
class Settings:
    """What the sweep runs and how hard the attacks try."""

    algorithms: tuple[str, ...] = ALGORITHMS
    epsilons: tuple[float | None, ...] = EPSILONS
    secagg: tuple[bool, ...] = (False, True)
    seeds: tuple[int, ...] = SEEDS
    base: dict[str, Any] = field(default_factory=lambda: dict(BASE))
    shadows: int = 4
    r2_singles: int = 3
    r2_batch: int = 4
    r2_steps: int = 300
    results_dir: Path = REPO / "results" / "privacy-sweep"
    out: Path = REPO / "docs" / "PRIVACY.md"
    plots: Path = REPO / "docs" / "privacy"
    command: str = "python -m experiments.privacy.sweep"

    def cells(self) -> list[Cell]:
        return [
            Cell(a, e, s, seed)
            for a in self.algorithms
            for e in self.epsilons
            for s in self.secagg
            for seed in self.seeds
        ]

    def attack_key(self) -> str:
        """Hash of what the attack numbers depend on besides the run itself."""
        d = {k: getattr(self, k) for k in ("shadows", "r2_singles", "r2_batch", "r2_steps")}
        return hashlib.sha256(json.dumps([d, VERSION]).encode()).hexdigest()[:12]


VERSION = 2  # bump when the attack code changes what privacy.json holds


def not_applicable(cell: Cell, base: dict[str, Any], root: Path) -> str | None:
    """The n/a reason when the run config refuses the cell (SecAgg+ without a shared-only
    encoder), else None. The refusal comes from `parse_run_config` itself, not a copy of it."""
    try:
        parse_run_config(cell.overrides(base, root))
    except ConfigError as err:
        return NA_REASON.get(cell.algorithm, f"n/a ({err})")
    return None
