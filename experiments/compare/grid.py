"""The comparison grid: settings (a dataset and its partitioning), the rows (algorithms and
references), cells, the run config of each cell, and when a cell is finished."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import CHOICES, parse_run_config
from deploy.runs import REPO
from experiments.celeba_like import CELEBA_SUBSET, celeba_like_schema, write_celeba_like
from experiments.compare.references import CENTRALIZED, CENTRALIZED_TUNED, SINGLE_TASK
from experiments.compare.transfer import FRACTIONS, federation_overrides
from experiments.kit import cells as kit_cells

FEDERATED = CHOICES["algorithm"]
# Row order of every table: baselines, federated MTL algorithms, the pooled reference.
METHODS = (
    "local",
    SINGLE_TASK,
    "fedavg",
    "fedavg-ft",
    "fedper",
    "fedrep",
    "ditto",
    "fedrod",
    CENTRALIZED,
    CENTRALIZED_TUNED,
)
LABELS = {
    "local": "Local",
    SINGLE_TASK: "Local single-task",
    "fedavg": "FedAvg",
    "fedavg-ft": "FedAvg-FT",
    "fedper": "FedPer",
    "fedrep": "FedRep",
    "ditto": "Ditto",
    "fedrod": "FedRoD",
    CENTRALIZED: "Centralized",
    CENTRALIZED_TUNED: "Centralized (lr on val)",
}
CELL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Setting:
    """A dataset and its partitioning: one block of the results table."""

    label: str
    overrides: tuple[tuple[str, Any], ...]
    methods: tuple[str, ...] | None = None  # this setting's rows, where not every grid row

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.overrides)

    @property
    def alpha(self) -> float | None:
        cfg = self.config
        return (
            float(cfg.get("dirichlet-alpha", 0.5))
            if cfg.get("partitioner") == "dirichlet"
            else None
        )


def dirichlet_setting(dataset: str, alpha: float) -> Setting:
    return Setting(
        f"{dataset}-a{alpha:g}",
        (("dataset", dataset), ("partitioner", "dirichlet"), ("dirichlet-alpha", float(alpha))),
    )


def natural_setting(dataset: str, num_clients: int) -> Setting:
    return Setting(
        dataset,
        (("dataset", dataset), ("partitioner", "natural"), ("num-clients", num_clients)),
    )


PENGUINS = natural_setting("penguins", 3)
# Generated scenes (`common.scenes`): one scene style per client (natural partitioning), the
# CNN encoder, dense tasks (segmentation, depth) next to scene-level ones; the federated
# rows and the single-task reference. At the default lr (0.05) the single-task `count`
# model diverged in round 1 on 2 of 6 clients (seed 1); 0.02 trains every row, so the
# setting uses it for all of them. 300 examples per client keep its cells short.
SCENES_METHODS = ("local", "fedavg", "fedper", "fedrod", SINGLE_TASK)
SCENES = Setting(
    "scenes",
    (
        ("dataset", "scenes"),
        ("partitioner", "natural"),
        ("num-clients", 6),
        ("encoder", "cnn"),
        ("lr", 0.02),
        ("samples-per-client", 300),
    ),
    methods=SCENES_METHODS,
)
# CelebA's layout, generated offline (`experiments.celeba_like`): 32x32 RGB faces, clients =
# identities, five boolean attributes of which three show in the image, one is the same for
# all of an identity's images and one is noise. The federated rows that matter for it.
CELEBA_LIKE_DIR = REPO / "results" / "compare" / "data" / "celeba-like"
CELEBA_LIKE_METHODS = ("local", "fedavg", "fedper", "fedrod")


def celeba_like_setting(folder: Path = CELEBA_LIKE_DIR, identities: int = 6) -> Setting:
    """The generated CelebA-schema setting: `dataset = "hf"` on `folder` (written by
    `prepare_data`), natural partitioning by identity, the CNN encoder."""
    return Setting(
        "celeba-like",
        (
            ("dataset", "hf"),
            ("hf-dataset", str(folder / "data")),
            ("hf-subset", CELEBA_SUBSET),
            ("schema-file", str(folder / "celeba-like.schema.json")),
            ("partitioner", "natural"),
            ("num-clients", identities),
            ("encoder", "cnn"),
        ),
        methods=CELEBA_LIKE_METHODS,
    )


def prepare_data(grid: Grid) -> None:
    """Write the generated data sets the grid's settings name and do not find on disk."""
    for setting in grid.settings:
        if setting.label != "celeba-like":
            continue
        folder = Path(setting.config["hf-dataset"]).parent
        schema = Path(setting.config["schema-file"])
        if not (folder / "data").is_dir():
            write_celeba_like(folder / "data", identities=int(setting.config["num-clients"]))
        if not schema.is_file():
            schema.write_text(json.dumps(celeba_like_schema(), indent=2) + "\n", encoding="utf-8")


# Data sets read from files the user names (`data-file`, `schema-file`, or the run config's
# other keys for them) rather than generated or bundled.
FILE_DATA = tuple(d for d in ("user", "hf") if d in CHOICES["dataset"])


def settings_of(
    dataset: str, alphas: list[float], files: dict[str, str], partitioner: str = "dirichlet"
) -> list[Setting]:
    """The settings of one `--datasets` entry: penguins' islands; one Dirichlet setting per
    α; for the user's data (`files`: its data-file / schema-file) the same, or one setting
    with the run config's own partitioner when it names another (iid, natural, ...)."""
    if dataset == "penguins":
        return [PENGUINS]
    if dataset == "scenes":
        return [SCENES]
    if dataset not in FILE_DATA:
        return [dirichlet_setting(dataset, a) for a in alphas]
    extra = tuple(files.items())
    if partitioner != "dirichlet":
        return [Setting(f"{dataset}-{partitioner}", (("dataset", dataset), *extra))]
    return [
        Setting(s.label, (*s.overrides, *extra))
        for s in (dirichlet_setting(dataset, a) for a in alphas)
    ]


@dataclass(frozen=True)
class TransferSpec:
    """New-client transfer: the federation leaves the last `holdout` clients out."""

    setting: str
    algorithms: tuple[str, ...] = ("fedper",)
    holdout: int = 2
    fractions: tuple[float, ...] = FRACTIONS


@dataclass(frozen=True)
class Cell:
    """One unit of work. kind: 'flower' (a federated run), a reference ('centralized',
    'single-task'), 'transfer-fed' (the federation without the held-out clients) or
    'transfer' (adapting the held-out clients to it)."""

    setting: Setting
    method: str
    weighting: str
    strategy: str
    seed: int
    kind: str
    holdout: int = 0

    @property
    def name(self) -> str:
        s = self.setting.label
        if self.kind in (CENTRALIZED, CENTRALIZED_TUNED):
            return f"{s}-{self.kind}-{self.weighting}-s{self.seed}"
        if self.kind == SINGLE_TASK:
            return f"{s}-single-task-s{self.seed}"
        base = f"{self.method}-{self.weighting}-{self.strategy}-s{self.seed}"
        if self.kind == "flower":
            return f"{s}-{base}"
        name = f"{s}-holdout{self.holdout}-{base}"
        return name + "-adapt" if self.kind == "transfer" else name

    @property
    def in_flower(self) -> bool:
        return self.kind in ("flower", "transfer-fed")


@dataclass
class Grid:
    name: str
    settings: list[Setting]
    methods: list[str]
    weightings: list[str]
    strategies: list[str]
    seeds: list[int]
    common: dict[str, Any] = field(default_factory=dict)
    transfer: TransferSpec | None = None
    grid_dir: Path = REPO / "results" / "compare" / "default"

    @property
    def runs_dir(self) -> Path:
        return self.grid_dir / "runs"

    def cells(self) -> list[Cell]:
        out: list[Cell] = []
        for setting in self.settings:
            methods = [m for m in self.methods if m in (setting.methods or self.methods)]
            for seed in self.seeds:
                for method in methods:
                    if method == SINGLE_TASK:  # one task per model: nothing to weight
                        out.append(Cell(setting, method, "ew", "none", seed, SINGLE_TASK))
                        continue
                    for w in self.weightings:
                        if method in (CENTRALIZED, CENTRALIZED_TUNED):  # no aggregation
                            out.append(Cell(setting, method, w, "none", seed, method))
                            continue
                        for s in self.strategies:
                            out.append(Cell(setting, method, w, s, seed, "flower"))
        t = self.transfer
        if t is not None:
            setting = next(x for x in self.settings if x.label == t.setting)
            for seed in self.seeds:
                for alg in t.algorithms:
                    for kind in ("transfer-fed", "transfer"):
                        out.append(
                            Cell(
                                setting,
                                alg,
                                self.weightings[0],
                                self.strategies[0],
                                seed,
                                kind,
                                t.holdout,
                            )
                        )
        return out

    def overrides(self, cell: Cell) -> dict[str, Any]:
        """The run config of a cell (the federated runs' and the references' data agree
        because everything but the algorithm and names is the same)."""
        ov = {**self.common, **cell.setting.config, "seed": cell.seed, "weighting": cell.weighting}
        ov["algorithm"] = cell.method if cell.method in FEDERATED else "local"
        if cell.strategy != "none":
            ov["strategy"] = cell.strategy
        ov["run-name"] = cell.name
        ov["results-dir"] = str(self.runs_dir)
        if cell.kind == "transfer-fed":
            ov = federation_overrides(ov, cell.holdout)
        return ov

    def cell_dir(self, cell: Cell) -> Path:
        return self.runs_dir / cell.name

    def finished(self, cell: Cell) -> bool:
        """The kit's rule on the cell's summary.json; an adaptation (transfer.json, its whole
        budget in one piece) also for the grid's holdout and data fractions."""
        cfg = parse_run_config(self.overrides(cell))
        if cell.kind != "transfer":
            return kit_cells.finished(
                kit_cells.read_record(self.cell_dir(cell) / "summary.json"), cfg
            )
        record = kit_cells.read_record(self.cell_dir(cell) / "transfer.json")
        t = self.transfer
        return (
            t is not None
            and kit_cells.finished(record, cfg, reached=cfg.num_server_rounds)
            and record is not None
            and record.get("holdout") == t.holdout
            and record.get("fractions") == list(t.fractions)
        )

    def federation_of(self, cell: Cell) -> Cell:
        """The transfer-fed cell whose encoder a transfer cell adapts to."""
        return Cell(
            cell.setting,
            cell.method,
            cell.weighting,
            cell.strategy,
            cell.seed,
            "transfer-fed",
            cell.holdout,
        )


def default_grid(grid_dir: Path | None = None) -> Grid:
    """The suite behind docs/RESULTS.md (`page.suite_note` explains its budget)."""
    return Grid(
        name="default",
        settings=[
            dirichlet_setting("multidigits", 0.1),
            dirichlet_setting("multidigits", 0.5),
            dirichlet_setting("multidigits", 5.0),
            PENGUINS,
            dirichlet_setting("synthcorr", 0.5),
            celeba_like_setting(),
            SCENES,
        ],
        methods=list(METHODS),
        weightings=["ew"],
        strategies=["fedavg"],
        seeds=[0, 1, 2],
        common=dict(DEFAULT_COMMON),
        transfer=TransferSpec("multidigits-a0.5"),
        grid_dir=grid_dir or REPO / "results" / "compare" / "default",
    )


# Run-config keys every cell of the default suite shares (on top of pyproject's defaults).
DEFAULT_COMMON: dict[str, Any] = {"num-server-rounds": 10}
