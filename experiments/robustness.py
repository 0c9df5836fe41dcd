"""Byzantine robustness of the shared encoder: each aggregation defence, clean and under
attack, over seeds, on one SuperLink. Writes docs/ROBUSTNESS.md and docs/robustness/*.png.

    python -m experiments.robustness                                  # sign-flip only
    python -m experiments.robustness --attacks sign-flip:10 scale:10 noise:0.1

Every cell is a real Flower simulation (`deploy.simulation.SimulationEngine`, one SuperLink
for the whole grid). A cell whose `summary.json` says `completed` under the same config is not
run again, so an interrupted grid resumes where it stopped. The tables are computed from
the cells' `summary.json` files (and `metrics.jsonl` for the rejection counts), never typed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import parse_run_config, same_training
from common.storage import atomic_write_bytes, atomic_write_json
from deploy.runs import REPO, parse_overrides
from deploy.simulation import SimulationEngine

# The federation every cell shares. 20 short rounds: Flower/Ray start-up dominates a cell
# (30-90 s on 2 shared cores), a round costs about a second, and 10 rounds leave the encoder
# too undertrained for an attack to show against the seed-to-seed noise.
BASE: dict[str, Any] = {
    "dataset": "multidigits",
    "num-clients": 10,
    "num-server-rounds": 20,
    "samples-per-client": 300,
    "local-epochs": 2,
}
ATTACKERS = 2
CLASSIFICATION_TASKS = ("left", "right", "parity", "equal")  # MultiDigits' `sum` is regression
TOLERANCE = 0.02  # the target: the best defence under attack within 2 points of clean FedAvg

# Each defence on its own: the default reply check `max-update-ratio = 10` is switched off
# (0) everywhere except in the norm-bounded row, so no row borrows another mechanism's help.
DEFENCES: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": "fedavg", "max-update-ratio": 0.0},
    "fedavg+norm-bound": {"strategy": "fedavg", "max-update-ratio": 3.0},
    "krum": {"strategy": "krum", "num-malicious": 2, "max-update-ratio": 0.0},
    # Multi-Krum averages m = n − f of the n updates (Blanchard et al. 2017, sec. 4).
    "multikrum": {
        "strategy": "multikrum",
        "num-malicious": 2,
        "krum-select": 8,
        "max-update-ratio": 0.0,
    },
    "fedmedian": {"strategy": "fedmedian", "max-update-ratio": 0.0},
    # trim-beta 0.2 cuts 2 of 10 values at each end per coordinate: as many as attack.
    "fedtrimmedavg": {"strategy": "fedtrimmedavg", "trim-beta": 0.2, "max-update-ratio": 0.0},
    # Bulyan needs n ≥ 4f + 3: with 10 clients f ≤ 1, one fewer than there are attackers.
    "bulyan": {"strategy": "bulyan", "num-malicious": 1, "max-update-ratio": 0.0},
}


def defence_note(name: str, base: dict[str, Any]) -> str:
    """The table's 'settings' cell, written from the defence's resolved config."""
    cfg = parse_run_config({**base, **DEFENCES[name]})
    n, f = cfg.num_clients, cfg.num_malicious
    if name == "fedavg+norm-bound":
        r = cfg.max_update_ratio
        return (
            f"FedAvg after `server.validation` drops updates > {r:g} × the round's median norm "
            f"(`max-update-ratio = {r:g}`)"
        )
    if name == "fedtrimmedavg":
        # Flower's trimmed mean cuts int(beta · n) values at each end per coordinate.
        return f"`trim-beta = {cfg.trim_beta:g}` ({int(cfg.trim_beta * n)} of {n} cut at each end)"
    if name == "bulyan":
        return (
            f"`num-malicious = {f}`: n ≥ 4f + 3 allows at most f = {bulyan_max_f(n)} with {n} "
            f"clients; it faces {ATTACKERS} attackers"
        )
    if cfg.strategy == "fedmedian":
        return "coordinate-wise median"
    settings = [("num-malicious", f)] if cfg.strategy in ("krum", "multikrum") else []
    if cfg.strategy == "multikrum":
        settings.append(("krum-select", cfg.krum_select))
    if not settings:
        return f"no defence (`max-update-ratio = {cfg.max_update_ratio:g}`)"
    return ", ".join(f"`{k} = {v}`" for k, v in settings)


def bulyan_max_f(num_clients: int) -> int:
    """The largest f Bulyan accepts with n clients (n ≥ 4f + 3)."""
    return max((num_clients - 3) // 4, 0)


DEFAULT_ATTACKS = ("sign-flip:10", "scale:10", "label-flip")


@dataclass(frozen=True)
class Attack:
    """An attack and its `attack-scale` (sign-flip/scale factor s, noise std)."""

    name: str
    scale: float

    @property
    def key(self) -> str:
        return f"{self.name}-x{self.scale:g}"

    @property
    def label(self) -> str:
        return f"{self.name} (s={self.scale:g})"


def parse_attack(spec: str) -> Attack:
    """'sign-flip:10' -> Attack('sign-flip', 10.0); a bare name means scale 1. Checked
    against the run config's valid attacks so a typo fails before any cell runs."""
    name, _, scale = spec.partition(":")
    cfg = parse_run_config({"attack": name, "attack-scale": float(scale or 1.0)})
    if cfg.attack == "none":
        raise ValueError("attack 'none' is the clean column; list real attacks only")
    return Attack(cfg.attack, cfg.attack_scale)


@dataclass(frozen=True)
class Cell:
    defence: str
    attack: Attack | None  # None: the clean run
    seed: int
    attackers: int = ATTACKERS

    @property
    def column(self) -> str:
        return self.attack.key if self.attack else "clean"

    @property
    def run_name(self) -> str:
        return f"{self.defence}-{self.column}-s{self.seed}"

    def overrides(self, base: dict[str, Any], results_dir: Path) -> dict[str, Any]:
        attack = (
            {"attack": self.attack.name, "attackers": self.attackers}
            | {"attack-scale": self.attack.scale}
            if self.attack
            else {"attack": "none", "attackers": 0}
        )
        return {
            **base,
            **DEFENCES[self.defence],
            **attack,
            "seed": self.seed,
            "run-name": self.run_name,
            "results-dir": str(results_dir),
        }


def grid(defences: Iterable[str], attacks: Sequence[Attack], seeds: Iterable[int]) -> list[Cell]:
    """Seed-major order: a partial grid already has every defence for the first seeds."""
    return [Cell(d, a, s) for s in seeds for d in defences for a in (None, *attacks)]


@dataclass
class CellResult:
    cell: Cell
    status: str  # completed, failed, missing
    accuracy: float | None = None  # honest clients' test accuracy: what the tables report
    val_accuracy: float | None = None  # the same on validation: what the verdict selects on
    wall_s: float | None = None
    rejected_attackers: int = 0
    rejected_honest: int = 0
    lost: int = 0  # honest clients without a final evaluation (their model went non-finite)
    error: str = ""
    round_seconds: list[float] = field(default_factory=list)  # metrics.jsonl `seconds`
    cpus: int | None = None  # CPU count of the machine that ran the cell (cell.json)


def read_summary(results_dir: Path, cell: Cell) -> dict[str, Any] | None:
    path = results_dir / cell.run_name / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def diverged(summary: dict[str, Any]) -> bool:
    """The run stopped because the model blew up: every reply non-finite (`RoundFailed`).
    That is the attack's outcome, not a harness failure: rerunning the seed repeats it."""
    error = str(summary.get("error", ""))
    return summary.get("status") == "failed" and "RoundFailed" in error and "non-finite" in error


def is_done(cell: Cell, base: dict[str, Any], results_dir: Path) -> bool:
    """Finished (completed, or diverged) under the same resolved config: a changed BASE,
    defence or default reruns the cell; keys added to RunConfig since (absent from the
    stored config) do not."""
    summary = read_summary(results_dir, cell)
    if not summary or not (summary.get("status") == "completed" or diverged(summary)):
        return False
    stored = summary.get("config", {})
    cfg = parse_run_config(cell.overrides(base, results_dir))
    return (
        same_training(stored, cfg)
        and stored.get("num-server-rounds") == cfg.num_server_rounds
        and stored.get("eval-every", 1) == cfg.eval_every
    )


def honest_accuracy(summary: dict[str, Any], attackers: int, split: str = "test") -> float | None:
    """Final-round accuracy on `split` ('test' or 'val'), averaged over the honest clients
    (id ≥ attackers) holding each classification task, then over tasks. Attackers are left
    out of every cell, clean ones included, so all cells average over the same clients: the
    defence's job is to protect the honest ones."""
    key = f"{split}/accuracy"
    per_task: dict[str, list[float]] = {}
    for client, tasks in summary.get("per_client", {}).items():
        if int(client) < attackers:
            continue
        for task in CLASSIFICATION_TASKS:
            if task in tasks and key in tasks[task]:
                per_task.setdefault(task, []).append(float(tasks[task][key]))
    if not per_task:
        return None
    return statistics.mean(statistics.mean(v) for v in per_task.values())


def _metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rejection_counts(run_dir: Path, attackers: int) -> tuple[int, int]:
    """(attacker updates, honest updates) the reply validation rejected over the run."""
    bad = good = 0
    for row in _metric_rows(run_dir):
        for r in row.get("rejected", []):
            is_attacker = str(r.get("client", "")).isdigit() and int(r["client"]) < attackers
            bad, good = (bad + 1, good) if is_attacker else (bad, good + 1)
    return bad, good


def round_seconds(run_dir: Path) -> list[float]:
    """Each round's duration as the ServerApp logged it (`seconds` in metrics.jsonl)."""
    return [float(r["seconds"]) for r in _metric_rows(run_dir) if "seconds" in r]


def _cell_json(run_dir: Path) -> dict[str, Any]:
    """What run_grid recorded outside the run: wall time with Flower's start-up, CPUs."""
    try:
        return dict(json.loads((run_dir / "cell.json").read_text()))
    except (OSError, ValueError):
        return {}


def _cell_wall(run_dir: Path, summary: dict[str, Any]) -> float | None:
    """The cell's wall time with Flower's start-up (`cell.json`, written by run_grid), else
    the ServerApp's own."""
    try:
        return float(_cell_json(run_dir)["wall_s"])
    except (KeyError, TypeError, ValueError):
        return summary.get("wall_time_s")


def lost_clients(summary: dict[str, Any], num_clients: int, attackers: int) -> int:
    """Honest clients missing from the final evaluation (a client whose model is non-finite
    at the end is left out of `per_client`, so the accuracy mean is over the survivors);
    count them instead of hiding them."""
    present = {int(c) for c in summary.get("per_client", {})}
    return sum(1 for c in range(attackers, num_clients) if c not in present)


def collect(cells: Iterable[Cell], results_dir: Path) -> list[CellResult]:
    """Each cell's numbers, read back from its summary.json and metrics.jsonl."""
    out = []
    for cell in cells:
        summary = read_summary(results_dir, cell)
        if summary is None:
            out.append(CellResult(cell, "missing"))
            continue
        if summary.get("status") != "completed":
            status = "diverged" if diverged(summary) else "failed"
            out.append(CellResult(cell, status, error=str(summary.get("error", ""))[:200]))
            continue
        run_dir = results_dir / cell.run_name
        bad, good = rejection_counts(run_dir, ATTACKERS)
        out.append(
            CellResult(
                cell,
                "completed",
                accuracy=honest_accuracy(summary, ATTACKERS, "test"),
                val_accuracy=honest_accuracy(summary, ATTACKERS, "val"),
                wall_s=_cell_wall(run_dir, summary),
                rejected_attackers=bad,
                rejected_honest=good,
                lost=lost_clients(summary, int(summary["config"]["num-clients"]), ATTACKERS),
                round_seconds=round_seconds(run_dir),
                cpus=_cell_json(run_dir).get("cpus"),
            )
        )
    return out


def run_grid(
    cells: Sequence[Cell],
    base: dict[str, Any],
    results_dir: Path,
    *,
    engine: SimulationEngine | None = None,
    cpus_per_client: int = 1,
    timeout: float = 900.0,
) -> None:
    """Run every cell not yet done, printing one progress line per cell."""
    todo = [c for c in cells if not is_done(c, base, results_dir)]
    print(
        f"robustness: {len(cells)} cells, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to run -> {results_dir}",
        flush=True,
    )
    if not todo:
        return
    own = engine is None
    engine = engine or SimulationEngine(cpus_per_client=cpus_per_client).__enter__()
    t0 = time.perf_counter()
    try:
        for i, cell in enumerate(todo, 1):
            outcome = engine.run(cell.overrides(base, results_dir), echo=False, timeout=timeout)
            atomic_write_json(
                outcome.results_dir / "cell.json",
                {"wall_s": outcome.wall_time_s, "cpus": os.cpu_count()},
            )
            acc = honest_accuracy(outcome.summary or {}, ATTACKERS) if outcome.ok else None
            elapsed = time.perf_counter() - t0
            eta = elapsed / i * (len(todo) - i)
            shown = f"acc {acc:.3f}" if acc is not None else f"FAILED (see {outcome.log_path})"
            print(
                f"[{i}/{len(todo)}] {cell.run_name}: {shown} | {outcome.wall_time_s:.0f}s | "
                f"elapsed {elapsed / 60:.1f} min, ~{eta / 60:.1f} min left",
                flush=True,
            )
    finally:
        if own:
            engine.__exit__(None, None, None)


# ----------------------------------------------------------------------------- reporting


@dataclass
class Row:
    """One defence: accuracies per column (clean, then each attack) over seeds."""

    defence: str
    values: dict[str, list[float]] = field(default_factory=dict)  # test accuracy per seed
    val_values: dict[str, list[float]] = field(default_factory=dict)  # validation, per seed
    missing: dict[str, dict[str, int]] = field(default_factory=dict)  # column -> status -> n
    rejected: dict[str, tuple[int, int]] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    def mean(self, column: str) -> float | None:
        """Test accuracy over seeds: what the tables show."""
        v = self.values.get(column)
        return statistics.mean(v) if v else None

    def val_mean(self, column: str) -> float | None:
        """Validation accuracy over seeds (None unless every seed has one): what the
        verdict selects on."""
        v = self.val_values.get(column, [])
        return statistics.mean(v) if v and len(v) == len(self.values.get(column, [])) else None


def rows_of(results: Iterable[CellResult]) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for r in results:
        row = rows.setdefault(r.cell.defence, Row(r.cell.defence))
        col = r.cell.column
        if r.status == "completed" and r.accuracy is not None:
            row.values.setdefault(col, []).append(r.accuracy)
            if r.val_accuracy is not None:
                row.val_values.setdefault(col, []).append(r.val_accuracy)
            a, h = row.rejected.get(col, (0, 0))
            row.rejected[col] = (a + r.rejected_attackers, h + r.rejected_honest)
            row.lost[col] = row.lost.get(col, 0) + r.lost
        else:
            status = r.status if r.status != "completed" else "without accuracy"
            counts = row.missing.setdefault(col, {})
            counts[status] = counts.get(status, 0) + 1
    return rows


def mean_std(values: list[float] | None) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


def points(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{100 * (a - b):+.1f}"


def verdict(rows: dict[str, Row], attack: Attack, tolerance: float = TOLERANCE) -> list[str]:
    """The robustness target, computed: with the attack on, the best defence stays within
    `tolerance` of the clean, undefended run, and plain FedAvg's loss is shown. The best
    defence is the one with the highest validation accuracy of the honest clients; its test
    accuracy is what is reported and checked (choosing on test would overstate it). A
    defence with a diverged or failed seed, a lost honest client or a seed without
    validation metrics in that column is not a candidate."""
    clean = rows["fedavg"].mean("clean") if "fedavg" in rows else None
    scored = [
        (val, name)
        for name, row in rows.items()
        if name != "fedavg"
        and (val := row.val_mean(attack.key)) is not None
        and row.mean(attack.key) is not None
        and not row.missing.get(attack.key)
        and not row.lost.get(attack.key)
    ]
    if clean is None or not scored:
        return [f"- {attack.label}: not enough completed cells for a verdict."]
    best_val, name = max(scored)
    best = rows[name].mean(attack.key)
    assert best is not None  # a candidate has test values
    plain_row = rows["fedavg"]
    plain = plain_row.mean(attack.key)
    lost = plain_row.missing.get(attack.key, {}).get("diverged", 0)
    runs = lost + len(plain_row.values.get(attack.key, []))
    plain_text = f"{100 * plain:.1f} % ({points(plain, clean)} points)" if plain is not None else ""
    if lost:
        plain_text = f"**diverged** in {lost} of {runs} seeds (encoder non-finite, run stopped)" + (
            f"; {plain_text} over the others" if plain_text else ""
        )
    met = best >= clean - tolerance
    return [
        f"- **{attack.label}**: clean FedAvg {100 * clean:.1f} %; plain FedAvg under attack "
        + (plain_text or "–")
        + f"; best defence on validation **{name}** ({100 * best_val:.1f} % on validation): "
        + f"test {100 * best:.1f} % ({points(best, clean)} points). "
        + f"Target (within {100 * tolerance:.0f} points of clean FedAvg): "
        + ("**met**." if met else "**not met**.")
    ]


def render(
    results: Sequence[CellResult],
    attacks: Sequence[Attack],
    seeds: Sequence[int],
    base: dict[str, Any],
    command: str,
    plot_path: Path | None,
    out_path: Path,
) -> str:
    rows = rows_of(results)
    columns = ["clean", *(a.key for a in attacks)]
    labels = {"clean": "clean", **{a.key: a.label for a in attacks}}
    done = [r for r in results if r.status == "completed"]
    wall = sum(r.wall_s or 0.0 for r in done)
    base = {k: v for k, v in base.items() if k != "results-dir"}
    cfg = parse_run_config(base)
    n, honest = cfg.num_clients, cfg.num_clients - ATTACKERS
    default_ratio = parse_run_config({}).max_update_ratio
    lines = [
        "# Robustness to Byzantine clients",
        "",
        f"Written by `{command}` (on {platform.machine()}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}); do not edit by hand. "
        "Rerunning the command resumes: cells whose `summary.json` is complete are read back.",
        "",
        "## Setup",
        "",
        f"- {cfg.dataset}, {cfg.num_clients} clients (`num-clients`), `partitioner = "
        f"{cfg.partitioner}` (α = {cfg.dirichlet_alpha:g}), the default heterogeneous task plan, "
        f"algorithm `{cfg.algorithm}` (shared encoder, private heads), "
        f"{cfg.num_server_rounds} rounds, `samples-per-client = {cfg.samples_per_client}`, "
        f"`local-epochs = {cfg.local_epochs}`, seeds {', '.join(map(str, seeds))}.",
        f"- Attackers: clients 0..{ATTACKERS - 1} (`attackers = {ATTACKERS}`, i.e. "
        f"{ATTACKERS} of {n}). `sign-flip` with scale s sends w − s·Δ "
        "(Δ its honest update), `scale` sends w + s·Δ, `noise` sends w + Δ + N(0, s²) per "
        "coordinate, `label-flip` trains on y → C−1−y (`client/byzantine.py`). With "
        f"{honest} honest and {ATTACKERS} sign-flipping clients of equal size, the FedAvg step "
        f"is about ({honest} − {ATTACKERS}s)/{n} of an honest step: s > {honest / ATTACKERS:g} "
        "turns it around.",
        f"- Metric: final-round test accuracy of the **honest** clients ({ATTACKERS}..{n - 1}), "
        "averaged over the clients holding each classification task "
        f"({', '.join(CLASSIFICATION_TASKS)}), then over tasks; mean ± std over seeds, in %. "
        "The attackers' own accuracy is left out of every column, clean ones included, so "
        "all columns average the same clients.",
        "- Selection: the verdict's *best defence* per attack is the one with the highest "
        "mean **validation** accuracy of the honest clients (same averaging, each client's "
        "validation split); the number reported and checked against the target is its "
        "**test** accuracy. Test accuracy never chooses anything.",
        "- *diverged*: the encoder became non-finite, every reply was rejected and the run "
        "stopped (`RoundFailed`); such a seed has no accuracy, is counted next to the mean "
        "(which is over the other seeds) and is not rerun on resume. *failed*/*missing*: "
        "a harness problem or not yet run; those are rerun.",
        "- *lost*: honest clients (summed over seeds) with no final evaluation because their "
        "own model went non-finite during local training, and the mean is over the clients "
        "left. A defence with lost clients or diverged seeds in a column is not a candidate "
        "for *best* in the verdict.",
        "- Each row measures one mechanism: the default reply check "
        f"`max-update-ratio = {default_ratio:g}` is off (0) in every row but the norm-bounded "
        "one. Malformed replies (keys, shapes, "
        "dtypes, NaN) are rejected by `server/validation.py` in every row regardless.",
        "",
        "## Mean test accuracy of honest clients (%)",
        "",
        "| defence | settings | "
        + " | ".join(labels[c] for c in columns)
        + " | "
        + " | ".join(f"Δ {labels[c]} vs own clean" for c in columns[1:])
        + " |",
        "| --- | --- |" + " --- |" * (2 * len(columns) - 1),
    ]
    for name in DEFENCES:
        if name not in rows:
            continue
        row = rows[name]
        cells = []
        for c in columns:
            text = mean_std(row.values.get(c))
            if row.lost.get(c):
                text += f" ({row.lost[c]} lost)"
            for status, count in sorted(row.missing.get(c, {}).items()):
                text += f" ({count} {status})"
            cells.append(text)
        deltas = [points(row.mean(c), row.mean("clean")) for c in columns[1:]]
        note = defence_note(name, base)
        lines.append(f"| {name} | {note} | " + " | ".join(cells + deltas) + " |")
    lines += ["", "## Verdict", ""]
    for attack in attacks:
        lines += verdict(rows, attack)
    lines += [
        "",
        "## Updates rejected by the reply validation (all seeds, all rounds)",
        "",
        f"Updates of clients 0..{ATTACKERS - 1} (the attackers, in the attack columns) / of "
        f"clients {ATTACKERS}..{n - 1} that `server.validation` dropped before aggregation "
        "(`rejected` in `metrics.jsonl`), out of the updates they sent over all rounds of the "
        "completed seeds. With the norm bound off (every row but one) only malformed or "
        "non-finite replies count: honest ones are clients whose own model went non-finite "
        "(*lost*).",
        "",
        "| defence | " + " | ".join(labels[c] for c in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name in DEFENCES:
        if name in rows:
            row = rows[name]
            texts = []
            for c in columns:
                if c not in row.rejected:
                    texts.append("–")
                    continue
                seeds_done = len(row.values[c]) * cfg.num_server_rounds
                a, h = row.rejected[c]
                texts.append(f"{a} of {ATTACKERS * seeds_done} / {h} of {honest * seeds_done}")
            lines.append(f"| {name} | " + " | ".join(texts) + " |")
    if plot_path is not None:
        rel = _relative(plot_path, out_path.parent)
        lines += ["", f"![accuracy per defence]({rel})"]
    lines += [
        "",
        "## Reading it",
        "",
        "- Robust rules cost accuracy even without attackers: with label-skewed (Dirichlet) "
        "clients, honest updates differ, and Krum (one update), the median and Bulyan throw "
        "honest information away. Compare each row's clean column with FedAvg's.",
        "- The sign-flip here is large and crude: its updates are far from the honest ones in "
        "norm and direction, which is what every rule above detects. An adaptive attacker "
        "that scales its update to just under the norm bound, or coordinates small shifts "
        "inside the honest spread (e.g. 'a little is enough', Baruch et al. 2019), is not "
        "covered by these numbers.",
        *(_bulyan_reading(base, n) if "bulyan" in rows else []),
        "- Under `secagg = true` none of the robust rules and no norm check can run: the "
        "server sees only the sum (see docs/SECURITY.md).",
        "",
        f"{len(done)} of {len(results)} cells completed"
        + "".join(
            f", {sum(r.status == st for r in results)} {st}"
            for st in ("diverged", "failed", "missing")
            if any(r.status == st for r in results)
        )
        + f"; {wall / 60:.0f} min of wall time in all."
        + (f" {note}" if (note := _time_note(done)) else ""),
        "",
    ]
    return "\n".join(lines)


def _bulyan_reading(base: dict[str, Any], n: int) -> list[str]:
    f = parse_run_config({**base, **DEFENCES["bulyan"]}).num_malicious
    if f >= ATTACKERS:
        return []
    return [
        f"- Bulyan runs with f = {f} against {ATTACKERS} attackers (n ≥ 4f + 3 allows at most "
        f"f = {bulyan_max_f(n)} with {n} clients): outside its guarantee, reported as measured."
    ]


def _time_note(done: Sequence[CellResult]) -> str:
    """Where a cell's time goes, from the cells' own records: the rounds (metrics.jsonl)
    against the whole cell (cell.json), and the machine's CPU count when recorded."""
    walls = [r.wall_s for r in done if r.wall_s is not None and r.round_seconds]
    if not walls:
        return ""
    rounds = [sum(r.round_seconds) for r in done if r.wall_s is not None and r.round_seconds]
    per_round = [x for r in done for x in r.round_seconds]
    cpus = sorted({r.cpus for r in done if r.cpus})
    where = f" on {'/'.join(map(str, cpus))}-CPU machine(s)" if cpus else ""
    return (
        f"Per cell (median){where}: {statistics.median(walls):.0f} s in all, of which "
        f"{statistics.median(rounds):.0f} s are the rounds (median round "
        f"{statistics.median(per_round):.2f} s); the rest is Flower/Ray start-up and "
        "shut-down."
    )


def plot(results: Sequence[CellResult], attacks: Sequence[Attack], path: Path) -> None:
    """Grouped bars: one group per defence, one bar per column, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows_of(results)
    names = [d for d in DEFENCES if d in rows]
    columns = ["clean", *(a.key for a in attacks)]
    labels = {"clean": "clean", **{a.key: a.label for a in attacks}}
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 3.6))
    for j, col in enumerate(columns):
        means, sds = [], []
        for name in names:
            v = rows[name].values.get(col, [])
            means.append(100 * statistics.mean(v) if v else 0.0)
            sds.append(100 * statistics.stdev(v) if len(v) > 1 else 0.0)
        xs = [i + (j - (len(columns) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, means, width, yerr=sds, capsize=2, label=labels[col])
        for x, name in zip(xs, names, strict=True):
            lost = rows[name].missing.get(col, {}).get("diverged", 0)
            if lost:
                ax.text(x, 2, f"{lost} diverged", rotation=90, ha="center", fontsize=7)
    clean = rows["fedavg"].mean("clean") if "fedavg" in rows else None
    if clean is not None:
        ax.axhline(100 * clean, color="k", lw=0.8, ls="--", label="clean FedAvg")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("honest clients' test accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _relative(path: Path, start: Path) -> str:
    try:
        return str(path.resolve().relative_to(start.resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=list(DEFAULT_ATTACKS),
        help="attack[:scale] per column, e.g. sign-flip:10 scale:10 noise:0.1 label-flip",
    )
    parser.add_argument(
        "-c", "--run-config", action="append", default=[], help="override BASE: -c key=value"
    )
    parser.add_argument("--results-dir", default=str(REPO / "results" / "robustness"))
    parser.add_argument("--out", default=str(REPO / "docs" / "ROBUSTNESS.md"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "robustness" / "accuracy.png"))
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="no runs: tables only")
    args = parser.parse_args(argv)
    try:
        attacks = [parse_attack(a) for a in args.attacks]
        base = {**BASE, **parse_overrides(args.run_config)}
        for cell in grid(args.defences, attacks, args.seeds[:1]):  # fail before any run
            parse_run_config(cell.overrides(base, Path(args.results_dir)))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results_dir = Path(args.results_dir).resolve()
    cells = grid(args.defences, attacks, args.seeds)
    t0 = time.perf_counter()
    if not args.report_only:
        run_grid(cells, base, results_dir, cpus_per_client=args.cpus_per_client)
    results = collect(cells, results_dir)
    out, plot_path = Path(args.out), Path(args.plot) if args.plot else None
    if plot_path is not None:
        plot(results, attacks, plot_path)
    command = "python -m experiments.robustness " + shlex.join(
        [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    )
    text = render(results, attacks, args.seeds, base, command.strip(), plot_path, out)
    atomic_write_bytes(out, text.encode())
    print(text)
    print(f"wrote {out} in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    unfinished = [r for r in results if r.status in ("failed", "missing")]
    return 1 if unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
