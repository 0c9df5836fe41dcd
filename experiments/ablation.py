"""Ablation of the shared modules on one setting (the generated scenes or MultiDigits at
Dirichlet α = 0.5): the sharing depth (the whole encoder or its first block), the
architecture (hps, mmoe, mtan, cross-stitch) and the server's aggregation of the encoder
(mean, pcgrad, hca), each under fedper, against hps sharing the whole encoder with mean
aggregation.

    python -m experiments.ablation                                   # scenes, seeds 0 1 2
    python -m experiments.ablation --setting multidigits-a0.5 --seeds 0 1 2 3 4

Every variant is a real Flower simulation through the kit's runner (finished runs are
resumed). Δm is measured per (client, task) against the single-task reference of the same
seed (one model per client and task, trained in process on the same splits), LibMTL's
convention (`experiments.kit.scores`); lower is better. Each variant is compared with the
baseline paired by seed: the mean difference of Δm with its 95 % t interval and the paired
t-test, "better / worse / no difference at α = 0.05". Written to
docs/ablation/<setting>.md with the curves next to it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.runs import REPO, parse_overrides
from experiments.compare.grid import SCENES, Setting, dirichlet_setting
from experiments.compare.plots import Curves, plot_rounds
from experiments.compare.references import SINGLE_TASK, run_reference
from experiments.kit import cli
from experiments.kit.cells import finished, read_record
from experiments.kit.report import command, task_counts, training_text, write, written_by
from experiments.kit.runner import Job, Timings, flower_run, run_jobs
from experiments.kit.scores import delta_m, final_metrics, task_headlines
from experiments.kit.stats import mean_std, paired_verdict, pm
from experiments.kit.tables import md_header, md_row
from server.results import read_metrics

# What each variant changes on top of the base config; the first is the baseline.
VARIANTS: dict[str, dict[str, Any]] = {
    "hps": {},
    "shared-1": {"shared-layers": 1},  # sharing depth: only the first encoder block
    "mmoe": {"architecture": "mmoe"},
    "mtan": {"architecture": "mtan"},
    "cross-stitch": {"architecture": "cross-stitch"},
    "pcgrad": {"aggregation": "pcgrad"},
    "hca": {"aggregation": "hca"},
}
BASELINE = "hps"
SEEDS = (0, 1, 2)


def _base(setting: Setting, rounds: int) -> dict[str, Any]:
    return {**setting.config, "algorithm": "fedper", "num-server-rounds": rounds}


# Each setting's base config. Scenes: 10 rounds (a scenes round costs several seconds on
# 2 cores). MultiDigits: 50 rounds, where its curves have flattened (the report shows them).
SETTINGS: dict[str, dict[str, Any]] = {
    "scenes": _base(SCENES, 10),
    "multidigits-a0.5": _base(dirichlet_setting("multidigits", 0.5), 50),
}
DEFAULT_SETTING = "scenes"
BASE = SETTINGS[DEFAULT_SETTING]
RESULTS_DIR = REPO / "results" / "ablation"
DOCS = REPO / "docs" / "ablation"  # <setting>.md and <setting>-curves.png
LAST_ROUNDS = 3  # the report gives each curve's change over its last rounds
CELL_TIMEOUT_S = 1800.0

Cell = tuple[str, int]  # (variant or SINGLE_TASK, seed)


def setting_of(base: dict[str, Any]) -> str:
    """The setting label of a base config: the one in `SETTINGS` whose keys it keeps."""
    for label, cfg in SETTINGS.items():
        if all(base.get(k) == v for k, v in cfg.items() if k != "num-server-rounds"):
            return label
    raise ValueError(f"base config matches none of the settings {sorted(SETTINGS)}")


def run_name(variant: str, seed: int, setting: str = DEFAULT_SETTING) -> str:
    return f"{setting}-{variant}-s{seed}"


def overrides(base: dict[str, Any], results_dir: Path, variant: str, seed: int) -> dict:
    """A cell's run config; the reference trains like `local` (nothing is federated)."""
    extra = {"algorithm": "local"} if variant == SINGLE_TASK else VARIANTS[variant]
    return {
        **base,
        **extra,
        "seed": seed,
        "run-name": run_name(variant, seed, setting_of(base)),
        "results-dir": str(Path(results_dir).resolve()),
    }


def cells(variants: tuple[str, ...], seeds: tuple[int, ...]) -> list[Cell]:
    return [(v, s) for s in seeds for v in (*variants, SINGLE_TASK)]


def summary_of(base: dict[str, Any], results_dir: Path, cell: Cell) -> dict[str, Any] | None:
    """The cell's summary when it is finished (the kit's rule), else None."""
    cfg = parse_run_config(overrides(base, results_dir, *cell))
    summary = read_record(Path(results_dir) / cfg.name / "summary.json")
    return summary if finished(summary, cfg) else None


def job(base: dict[str, Any], results_dir: Path, cell: Cell) -> Job:
    ov = overrides(base, results_dir, *cell)
    name = ov["run-name"]
    if cell[0] == SINGLE_TASK:
        out_dir = str(Path(ov["results-dir"]) / name)
        return Job(name, SINGLE_TASK, run_reference, (SINGLE_TASK, ov, out_dir), flower=False)
    return Job(name, "flower", flower_run, (ov, CELL_TIMEOUT_S))


def compare(
    summaries: dict[Cell, dict[str, Any]], variants: tuple[str, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Per variant: Δm per seed against that seed's single-task reference, the per-task
    final values, and the paired verdict against the baseline (Δm: lower is better)."""
    dm = {
        v: [
            delta_m(summaries[(v, s)]["per_client"], summaries[(SINGLE_TASK, s)]["per_client"])[1]
            for s in seeds
        ]
        for v in variants
    }
    tasks: dict[str, dict[str, list[float]]] = {}
    metric: dict[str, str] = {}
    for v in (*variants, SINGLE_TASK):
        for s in seeds:
            for task, (name, value) in final_metrics(summaries[(v, s)]).items():
                metric[task] = name
                tasks.setdefault(task, {}).setdefault(v, []).append(value)
    verdicts = {
        v: paired_verdict(dm[v], dm[BASELINE], higher_is_better=False)
        for v in variants
        if v != BASELINE
    }
    return {"delta_m": dm, "tasks": tasks, "metric": metric, "verdicts": verdicts}


def curves(
    summaries: dict[Cell, dict[str, Any]],
    results_dir: Path,
    variants: tuple[str, ...],
    setting: str = DEFAULT_SETTING,
) -> Curves:
    """Per variant and task: the client-mean test headline per round, mean over seeds, from
    each run's metrics.jsonl."""
    acc: dict[str, dict[str, dict[int, list[float]]]] = {
        v: defaultdict(lambda: defaultdict(list)) for v in variants
    }
    for (variant, seed), summary in summaries.items():
        if variant not in variants:
            continue
        heads = task_headlines(summary)
        runs = Path(results_dir) / run_name(variant, seed, setting)
        for row in read_metrics(runs / "metrics.jsonl"):
            for task, m in row.get("per_task", {}).items():
                key = f"test/{heads.get(task)}"
                if key in m:
                    acc[variant][task][row["round"]].append(m[key]["mean"])
    return {
        v: {
            t: (sorted(by_round), [sum(x) / len(x) for _, x in sorted(by_round.items())])
            for t, by_round in acc[v].items()
        }
        for v in variants
    }


def late_window(rounds: int) -> int:
    """How many final rounds the late change spans: a fifth of the budget, at least
    `LAST_ROUNDS` (over 50 rounds, a 3-round change is mostly noise)."""
    return max(LAST_ROUNDS, rounds // 5)


def late_change(
    curve: Curves, variants: tuple[str, ...], tasks: list[str], last: int = LAST_ROUNDS
) -> list[str]:
    """Table rows: per task, each variant's change of its curve over the `last` final
    rounds (how far from flat the budget leaves it)."""
    rows = []
    for task in tasks:
        cells = []
        for v in variants:
            by_round = dict(zip(*curve[v].get(task, ([], [])), strict=True))
            final = max(by_round, default=None)
            earlier = by_round.get(final - last) if final is not None else None
            cells.append("–" if earlier is None else f"{by_round[final] - earlier:+.3f}")
        rows.append(md_row(task, *cells))
    return rows


def report(
    table: dict[str, Any],
    variants: tuple[str, ...],
    seeds: tuple[int, ...],
    base: dict[str, Any],
    cmd: str,
    wall_s: float,
    curve: Curves,
    plot: str,
) -> str:
    cfg = parse_run_config(base)
    setting = setting_of(base)
    last = late_window(cfg.num_server_rounds)
    sizes = task_counts(cfg)
    changed = {v: ", ".join(f"`{k}={x}`" for k, x in VARIANTS[v].items()) for v in variants}
    lines = [
        f"# Ablation of the shared modules on {setting}",
        "",
        written_by(cmd),
        "",
        f"{len(variants)} variants × {len(seeds)} seeds as real Flower simulations, plus the "
        f"single-task reference per seed; the cells took {wall_s / 60:.1f} min in all "
        "(wall time per cell, summed; finished runs are resumed).",
        "",
        "Setting: " + ", ".join(f"`{k}={v}`" for k, v in base.items()) + f"; {training_text(cfg)}"
        f", the default {cfg.num_clients}-client task plan ({min(sizes)}–{max(sizes)} tasks per "
        "client). Every variant is fedper (heads private) and "
        f"changes one thing against `{BASELINE}` (one shared encoder, mean aggregation): "
        + "; ".join(f"{v}: {c or 'the baseline'}" for v, c in changed.items())
        + ".",
        "",
        "Δm (%) is the mean over tasks of the relative change of the task's headline metric "
        "against the single-task reference of the same seed, per client then averaged over the "
        "clients holding the task (lower is better). Paired by seed against the baseline: mean "
        "difference, its 95 % t interval and the paired t-test.",
        "",
        *md_header("variant", "Δm (%) mean ± std", f"Δm − Δm({BASELINE})"),
    ]
    for v in variants:
        verdict = table["verdicts"].get(v)
        lines.append(
            md_row(
                v,
                pm(mean_std(table["delta_m"][v]), 2),
                verdict.text(digits=2, unit=" %") if verdict else "baseline",
            )
        )
    lines += [
        "",
        "Final-round test metric per task (mean over the clients holding it; mean ± std "
        "over seeds):",
        "",
    ]
    lines += md_header("task", "metric", *variants, "single-task")
    for task in sorted(table["tasks"]):
        per = table["tasks"][task]
        lines.append(
            md_row(
                task,
                table["metric"][task],
                *(pm(mean_std(per.get(v, [])), 3) for v in (*variants, SINGLE_TASK)),
            )
        )
    lines += [
        "",
        "## Verdict",
        "",
        *(f"- {v} vs {BASELINE} on Δm: {x.verdict}." for v, x in table["verdicts"].items()),
        "",
        "## Curves",
        "",
        f"![test metric per round]({plot})",
        "",
        f"Change of each curve over its last {last} rounds (round "
        f"{cfg.num_server_rounds} minus round {cfg.num_server_rounds - last}; mean over "
        "seeds of the client-mean test metric); a curve that still moves has not converged:",
        "",
        *md_header("task", *variants),
        *late_change(curve, variants, sorted(table["tasks"]), last),
        "",
        f"Caveat: {cfg.num_server_rounds} rounds and {len(seeds)} seeds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_study_options(parser, seeds=SEEDS)
    parser.add_argument("--setting", choices=list(SETTINGS), default=DEFAULT_SETTING)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--out", type=Path, help="default: docs/ablation/<setting>.md")
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    if BASELINE not in args.variants:
        parser.error(f"the ablation compares against {BASELINE}: include it in --variants")
    variants, seeds = tuple(args.variants), tuple(args.seeds)
    setting = args.setting
    base = {**SETTINGS[setting], **parse_overrides(args.run_config)}
    out = args.out or DOCS / f"{setting}.md"
    all_cells = cells(variants, seeds)
    if args.dry_run:
        return cli.dry_run(
            (c[0], run_name(*c, setting), summary_of(base, args.results_dir, c) is not None)
            for c in all_cells
        )
    if not args.report_only:
        todo = [c for c in all_cells if summary_of(base, args.results_dir, c) is None]
        run_jobs(
            "ablation",
            [job(base, args.results_dir, c) for c in todo],
            total=len(all_cells),
            results_dir=Path(args.results_dir).resolve(),
        )
    summaries = {c: summary_of(base, args.results_dir, c) for c in all_cells}
    missing = [run_name(*c, setting) for c, s in summaries.items() if s is None]
    if missing:
        print(f"ablation: no finished run for {', '.join(missing)}", file=sys.stderr)
        return 1
    table = compare(summaries, variants, seeds)  # type: ignore[arg-type]
    per_cell = Timings(Path(args.results_dir) / "timings.json").cells
    wall = sum(per_cell.get(run_name(*c, setting), 0.0) for c in all_cells)
    cmd = command("experiments.ablation", given)
    curve = curves(summaries, args.results_dir, variants, setting)  # type: ignore[arg-type]
    png = out.with_name(f"{out.stem}-curves.png")  # next to its report, named after it
    tasks = sorted(table["tasks"])
    plot_rounds(curve, tasks, table["metric"], f"{setting} ablation", png)
    write(out, report(table, variants, seeds, base, cmd, wall, curve, png.name))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
