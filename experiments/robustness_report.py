"""The robustness report: docs/ROBUSTNESS.md and its plot, computed from the cells'
`summary.json` and `metrics.jsonl` (and the grid's `timings.json`) only."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from experiments.kit import plots
from experiments.kit.cells import read_record
from experiments.kit.report import relpath, written_by
from experiments.kit.runner import Timings
from experiments.kit.stats import mean_std as seed_stat
from experiments.kit.stats import pm
from experiments.kit.tables import md_header, md_row
from experiments.robustness import (
    ATTACKERS,
    CLASSIFICATION_TASKS,
    DEFENCES,
    TOLERANCE,
    Attack,
    Cell,
    bulyan_max_f,
    defence_note,
    outcome,
    read_summary,
)
from server.results import read_metrics


@dataclass
class CellResult:
    cell: Cell
    status: str  # completed, diverged, failed, missing (see `robustness.outcome`)
    accuracy: float | None = None  # honest clients' test accuracy: what the tables report
    val_accuracy: float | None = None  # the same on validation: what the verdict selects on
    wall_s: float | None = None
    rejected_attackers: int = 0
    rejected_honest: int = 0
    lost: int = 0  # honest clients without a final evaluation (their model went non-finite)
    error: str = ""
    round_seconds: list[float] = field(default_factory=list)  # metrics.jsonl `seconds`
    cpus: int | None = None  # CPU count of the machine that ran the cell, where recorded


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
    return read_metrics(path)


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


def _cell_times(
    results_dir: Path, cell: Cell, summary: dict[str, Any]
) -> tuple[float | None, int | None]:
    """The cell's wall time with Flower's start-up and the CPU count of the machine that ran
    it, from the grid's `timings.json` (grids run before it kept them in the cell's
    `cell.json`); else the ServerApp's own wall time, and the CPUs when only one machine
    ran the grid."""
    legacy = read_record(results_dir / cell.run_name / "cell.json") or {}
    timings = Timings(results_dir / "timings.json")
    wall = timings.cells.get(cell.run_name, legacy.get("wall_s"))
    machines = timings.cpus()
    cpus = legacy.get("cpus") or (machines[0] if len(machines) == 1 else None)
    return (summary.get("wall_time_s") if wall is None else float(wall)), cpus


def lost_clients(summary: dict[str, Any], num_clients: int, attackers: int) -> int:
    """Honest clients missing from the final evaluation (a client whose model is non-finite
    at the end is left out of `per_client`, so the accuracy mean is over the survivors);
    count them instead of hiding them."""
    present = {int(c) for c in summary.get("per_client", {})}
    return sum(1 for c in range(attackers, num_clients) if c not in present)


def collect(cells: Iterable[Cell], base: dict[str, Any], results_dir: Path) -> list[CellResult]:
    """Each cell's numbers, read back from its summary.json and metrics.jsonl; only
    finished cells (`robustness.outcome`) count as completed."""
    out = []
    for cell in cells:
        status = outcome(cell, base, results_dir)
        summary = read_summary(results_dir, cell) or {}
        if status != "completed":
            out.append(CellResult(cell, status, error=str(summary.get("error", ""))[:200]))
            continue
        run_dir = results_dir / cell.run_name
        bad, good = rejection_counts(run_dir, ATTACKERS)
        wall, cpus = _cell_times(results_dir, cell, summary)
        out.append(
            CellResult(
                cell,
                "completed",
                accuracy=honest_accuracy(summary, ATTACKERS, "test"),
                val_accuracy=honest_accuracy(summary, ATTACKERS, "val"),
                wall_s=wall,
                rejected_attackers=bad,
                rejected_honest=good,
                lost=lost_clients(summary, int(summary["config"]["num-clients"]), ATTACKERS),
                round_seconds=round_seconds(run_dir),
                cpus=cpus,
            )
        )
    return out


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


def percent(values: list[float] | None) -> str:
    """Accuracies over seeds as 'mean ± std' in %."""
    return pm(seed_stat(values or []), 1, scale=100)


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
        written_by(command)
        + " Rerunning the command resumes: cells whose `summary.json` is complete are read back.",
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
        *md_header(
            "defence",
            "settings",
            *(labels[c] for c in columns),
            *(f"Δ {labels[c]} vs own clean" for c in columns[1:]),
        ),
    ]
    for name in DEFENCES:
        if name not in rows:
            continue
        row = rows[name]
        cells = []
        for c in columns:
            text = percent(row.values.get(c))
            if row.lost.get(c):
                text += f" ({row.lost[c]} lost)"
            for status, count in sorted(row.missing.get(c, {}).items()):
                text += f" ({count} {status})"
            cells.append(text)
        deltas = [points(row.mean(c), row.mean("clean")) for c in columns[1:]]
        note = defence_note(name, base)
        lines.append(md_row(name, note, *cells, *deltas))
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
        *md_header("defence", *(labels[c] for c in columns)),
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
            lines.append(md_row(name, *texts))
    if plot_path is not None:
        rel = relpath(plot_path, out_path.parent)
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
    against the whole cell (timings), and the machine's CPU count when recorded."""
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
    plt = plots.pyplot()
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
    plots.save(fig, path, dpi=100)
