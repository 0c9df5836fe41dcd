"""Loss-weighting study: `ew` vs `pcgrad`, `mgda`, `cagrad` on SynthCorr, fedper.

    python -m experiments.weighting_study                        # ρ = 0.1, seeds 0 1 2
    python -m experiments.weighting_study --correlations 0.1 0.9 # with the related-task contrast

Gradient-conflict methods are meant to help when tasks pull the shared encoder in different
directions, i.e. at low task correlation ρ (`synth-correlation`). Every run is a real Flower
simulation through the kit's runner (finished runs are resumed). The report,
`docs/WEIGHTING.md`, gives each task's final-round test metric (mean over the clients holding
it) as mean ± std over seeds, and each method's difference to `ew` paired by seed with its
95 % t interval; a method is called better or worse on a task only when the paired t-test
rejects "no difference" at α = `ALPHA` (`experiments.kit.stats.paired_verdict`).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from common.federation import split_indices
from deploy.runs import REPO, parse_overrides
from deploy.simulation import SimulationEngine
from experiments.kit import cli, plots
from experiments.kit.cells import finished, read_record
from experiments.kit.report import command, task_counts, training_text, write, written_by
from experiments.kit.runner import Job, Timings, flower_run, run_jobs
from experiments.kit.scores import final_metrics, task_delta_m
from experiments.kit.stats import mean_std, paired, paired_verdict, pm
from experiments.kit.tables import md_header, md_row

METHODS = ("ew", "pcgrad", "mgda", "cagrad")
CORRELATIONS = (0.1,)
SEEDS = (0, 1, 2)
ALPHA = 0.05  # better/worse only when the paired t-test rejects "no difference" at this level
BASE: dict[str, Any] = {
    "dataset": "synthcorr",
    "algorithm": "fedper",
    "num-clients": 6,
    "num-server-rounds": 10,
    "samples-per-client": 300,
    "local-epochs": 2,
}


@dataclass
class StudySettings:
    methods: tuple[str, ...] = METHODS
    correlations: tuple[float, ...] = CORRELATIONS
    seeds: tuple[int, ...] = SEEDS
    base: dict[str, Any] = field(default_factory=lambda: dict(BASE))
    results_dir: Path = REPO / "results" / "weighting-study"
    out: Path = REPO / "docs" / "WEIGHTING.md"
    plots: Path = REPO / "docs" / "weighting"
    command: str = "python -m experiments.weighting_study"

    def cells(self) -> list[Cell]:
        return [(r, m, s) for r in self.correlations for m in self.methods for s in self.seeds]


Cell = tuple[float, str, int]  # (ρ, method, seed)
Values = dict[Cell, dict[str, tuple[str, float]]]  # per cell: {task: (metric, final value)}


def run_name(correlation: float, method: str, seed: int) -> str:
    return f"synthcorr-rho{correlation:g}-{method}-s{seed}"


def overrides(settings: StudySettings, correlation: float, method: str, seed: int) -> dict:
    return {
        **settings.base,
        "synth-correlation": correlation,
        "weighting": method,
        "seed": seed,
        "run-name": run_name(correlation, method, seed),
        "results-dir": str(Path(settings.results_dir).resolve()),
    }


def finished_summary(settings: StudySettings, cell: Cell) -> dict[str, Any] | None:
    """The cell's summary when the cell is finished (the kit's rule), else None."""
    cfg = parse_run_config(overrides(settings, *cell))
    summary = read_record(Path(settings.results_dir) / cfg.name / "summary.json")
    return summary if finished(summary, cfg) else None


def job(settings: StudySettings, cell: Cell) -> Job:
    def detail() -> str:
        values = final_metrics(finished_summary(settings, cell) or {})
        return "".join(f"{t} {v[1]:.3f} " for t, v in sorted(values.items()))

    return Job(run_name(*cell), "flower", flower_run, (overrides(settings, *cell),), detail=detail)


def paired_difference(
    method: Sequence[float], ew: Sequence[float], higher_is_better: bool
) -> dict[str, Any]:
    """Method − ew per seed: the mean, its sample std (the plot's error bar), its 95 % t
    interval and the paired t-test's verdict: "better" / "worse" at α = `ALPHA`, else "n.s."
    (also with fewer than two seeds)."""
    diff = paired(method, ew).stat
    test = paired_verdict(method, ew, alpha=ALPHA, higher_is_better=higher_is_better)
    verdict = test.verdict.split()[0] if test.verdict.startswith(("better", "worse")) else "n.s."
    return {
        "mean": diff.mean,
        "std": diff.spread if diff.n > 1 else None,
        "low": test.low,
        "high": test.high,
        "p": test.p,
        "verdict": verdict,
        "n": diff.n,
    }


def run_study(
    settings: StudySettings, engine: SimulationEngine | None = None, *, report_only: bool = False
) -> dict[str, Any]:
    """Every (ρ, method, seed) run not finished yet, then the report from the runs on disk;
    returns the table's numbers. With `report_only` nothing runs. A cell without a finished
    run is an error: the table pairs every method with ew on every seed."""
    cells = settings.cells()
    if not report_only:
        todo = [c for c in cells if finished_summary(settings, c) is None]
        run_jobs(
            "weighting",
            [job(settings, c) for c in todo],
            total=len(cells),
            results_dir=Path(settings.results_dir).resolve(),
            engine=engine,
        )
    summaries = {c: finished_summary(settings, c) for c in cells}
    missing = [run_name(*c) for c, s in summaries.items() if s is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} cell(s) without a finished run under {settings.results_dir}: "
            f"{', '.join(missing)} (see their flower.log)"
        )
    values = {c: final_metrics(s) for c, s in summaries.items() if s is not None}
    table = build_table(values, settings)
    write_report(table, settings, _run_times(settings, summaries))
    return {"values": values, "table": table}


def _run_times(
    settings: StudySettings, summaries: dict[Cell, dict[str, Any] | None]
) -> tuple[float, list[float], float]:
    """From the result files: the ServerApps' run time summed over the runs, each timed
    run's time outside its ServerApp (Flower's start-up), and the invocations' wall time."""
    timings = Timings(Path(settings.results_dir) / "timings.json")
    server = {run_name(*c): float(s.get("wall_time_s") or 0.0) for c, s in summaries.items() if s}
    startup = [timings.cells[n] - t for n, t in server.items() if n in timings.cells]
    return sum(server.values()), startup, sum(i["wall_s"] for i in timings.ran())


def build_table(values: Values, settings: StudySettings) -> dict[float, dict[str, Any]]:
    out: dict[float, dict[str, Any]] = {}
    seeds = list(settings.seeds)
    for r in settings.correlations:
        tasks = sorted(values[(r, settings.methods[0], seeds[0])])
        metric = {t: values[(r, settings.methods[0], seeds[0])][t][0] for t in tasks}
        per: dict[str, dict[str, list[float]]] = {
            m: {t: [values[(r, m, s)][t][1] for s in seeds] for t in tasks}
            for m in settings.methods
        }
        diffs = {
            m: {
                t: paired_difference(per[m][t], per["ew"][t], metric[t] == "accuracy")
                for t in tasks
            }
            for m in settings.methods
            if m != "ew" and "ew" in per
        }
        dm = {
            m: [
                task_delta_m(
                    {t: per[m][t][i] for t in tasks}, {t: per["ew"][t][i] for t in tasks}, metric
                )
                for i in range(len(seeds))
            ]
            for m in diffs
        }
        out[r] = {"tasks": tasks, "metric": metric, "values": per, "diffs": diffs, "delta_m": dm}
    return out


def _ms(v: Sequence[float], digits: int = 3) -> str:
    return pm(mean_std(v), digits, bare_single=True)


def write_report(
    table: dict[float, dict[str, Any]],
    settings: StudySettings,
    times: tuple[float, Sequence[float], float] = (0.0, (), 0.0),
) -> None:
    """docs/WEIGHTING.md and its plot. `times`: the runs' server-side seconds in all, each
    timed run's start-up seconds, the grid's invocations' wall seconds (`_run_times`)."""
    run_seconds, startup_s, invocations_s = times
    runs = len(table) * len(settings.methods) * len(settings.seeds)
    startup = (
        f" (plus Flower's start-up, {statistics.fmean(startup_s):.0f} s per run on average "
        f"over the {len(startup_s)} timed run(s))"
        if startup_s
        else ""
    )
    took = f"; the grid's invocations took {invocations_s / 60:.1f} min" if invocations_s else ""
    lines = [
        "# Loss weighting under federation: ew vs pcgrad, mgda, cagrad (SynthCorr)",
        "",
        written_by(settings.command),
        "",
        f"{runs} Flower simulations: {run_seconds / 60:.0f} min of server-side run time in "
        f"all{startup}{took} (finished runs are resumed).",
        "",
        "Settings: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.base.items())
        + f", `synth-correlation` ∈ {list(settings.correlations)}, seeds {list(settings.seeds)}; "
        + f"everything else at its default (resolved: {_defaults_text(settings.base)}). "
        + _tasks_text(table)
        + "; each number is the final round's mean over the clients holding the task, then "
        "mean ± std over seeds.",
        "",
        "Δ vs ew is the per-seed difference (method − ew): its mean, its 95 % t interval and "
        f"the paired t-test's p. Marked **better**/**worse** only when p < {ALPHA:g} "
        "(two-sided); otherwise n.s. Δm (%) is LibMTL's mean relative change over tasks "
        "against ew (lower is better).",
        "",
    ]
    verdicts = []
    for r, t in table.items():
        lines += [f"## ρ = {r:g}", ""]
        methods = list(settings.methods)
        lines += md_header("task", "metric", *methods, *(f"Δ {m} vs ew" for m in t["diffs"]))
        for task in t["tasks"]:
            cells = [_ms(t["values"][m][task]) for m in methods]
            ds = []
            for m, d in t["diffs"].items():
                x = d[task]
                ci = (
                    f" [{x['low']:+.3f}, {x['high']:+.3f}], p = {x['p']:.3f}"
                    if x["std"] is not None
                    else ""
                )
                mark = f"**{x['verdict']}**" if x["verdict"] != "n.s." else "n.s."
                ds.append(f"{x['mean']:+.3f}{ci} ({mark})")
                if x["verdict"] != "n.s.":
                    verdicts.append(f"ρ={r:g}: {m} {x['verdict']} than ew on {task}")
            lines.append(md_row(task, t["metric"][task], *cells, *ds))
        lines += [
            "",
            *md_header("Δm (%) vs ew", *t["delta_m"]),
            md_row("mean ± std", *(_ms(v, 2) for v in t["delta_m"].values())),
            "",
        ]
    lines += ["## Verdict", ""]
    cfg = parse_run_config(settings.base)
    better = [v for v in verdicts if " better " in v]
    worse = [v for v in verdicts if " worse " in v]
    lines.append(
        f"- Improvements over ew (paired t-test, α = {ALPHA:g}): "
        + ("; ".join(better) if better else "none on any task: no improvement is claimed.")
    )
    if worse:
        lines.append("- Significantly worse than ew: " + "; ".join(worse) + ".")
    lines += [
        "",
        f"Caveats: with {len(settings.seeds)} seed(s) the test only finds large effects, and "
        f"with {len(table) * (len(settings.methods) - 1)} methods × ρ per task some verdicts "
        f"at α = {ALPHA:g} are expected by chance (no correction for multiple tests); "
        f"{cfg.num_server_rounds} rounds of {cfg.local_epochs} local epochs on the "
        f"{_train_share():.0%} training split of `samples-per-client = "
        f"{cfg.samples_per_client}` examples per client is a short budget; each method runs "
        "with its default options, untuned.",
        "",
        "Plot: `docs/weighting/final_metrics.png` (paired difference to ew per task, mean ± "
        "std over seeds, drawn so that up is better).",
        "",
    ]
    write(settings.out, "\n".join(lines))
    write_plot(table, settings)


def _defaults_text(base: dict[str, Any]) -> str:
    """The defaults the study relies on, read from the resolved run config."""
    cfg = parse_run_config(base)
    sizes = task_counts(cfg)
    return (
        f"{training_text(cfg)}, the default {cfg.num_clients}-client task plan of "
        f"{'–'.join(map(str, (sizes[0], sizes[-1]) if len(sizes) > 1 else sizes))} tasks each; "
        f"`cagrad-c={cfg.cagrad_c:g}`, `mgda-normalize={cfg.mgda_normalize}`"
    )


def _tasks_text(table: dict[float, dict[str, Any]]) -> str:
    """Which tasks are regression and which classification, from the runs' own metrics."""
    metric = {t: m for v in table.values() for t, m in v["metric"].items()}
    regression = [t for t, m in metric.items() if m != "accuracy"]
    classification = [t for t, m in metric.items() if m == "accuracy"]
    parts = []
    if regression:
        parts.append(f"{', '.join(regression)} regression (test MAE, lower is better)")
    if classification:
        parts.append(
            f"{', '.join(classification)} classification (test accuracy, higher is better)"
        )
    return "Tasks " + "; ".join(parts)


def _train_share() -> float:
    """The training split's share of a client's examples (what `split_indices` leaves after
    its validation and test fractions)."""
    params = inspect.signature(split_indices).parameters
    return 1.0 - params["val_fraction"].default - params["test_fraction"].default


def write_plot(table: dict[float, dict[str, Any]], settings: StudySettings) -> None:
    """Per ρ and task: each method's paired difference to ew (mean ± std over seeds), the
    quantity the verdict is about; sign flipped for MAE so that up is better everywhere."""
    plt = plots.pyplot()
    tasks = next(iter(table.values()))["tasks"]
    fig, axes = plt.subplots(
        len(table), len(tasks), figsize=(3.0 * len(tasks), 2.8 * len(table)), squeeze=False
    )
    for row, (r, t) in zip(axes, table.items(), strict=True):
        methods = list(t["diffs"])
        for ax, task in zip(row, t["tasks"], strict=True):
            sign = 1.0 if t["metric"][task] == "accuracy" else -1.0
            means = [sign * t["diffs"][m][task]["mean"] for m in methods]
            stds = [t["diffs"][m][task]["std"] or 0.0 for m in methods]
            ax.bar(range(len(methods)), means, yerr=stds, capsize=3, color="tab:blue")
            ax.axhline(0.0, color="black", lw=0.8)
            ax.set_xticks(range(len(methods)), methods, fontsize=8)
            better = "accuracy gain" if sign > 0 else "MAE reduction"
            ax.set_title(f"ρ={r:g} {task}: {better} vs ew", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    plots.save(fig, settings.plots / "final_metrics.png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_study_options(parser, seeds=SEEDS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--correlations", nargs="+", type=float, default=list(CORRELATIONS))
    parser.add_argument("--results-dir", type=Path, default=StudySettings.results_dir)
    parser.add_argument("--out", type=Path, default=StudySettings.out)
    parser.add_argument("--plots", type=Path, default=StudySettings.plots)
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    if "ew" not in args.methods:
        parser.error("the study compares against ew: include it in --methods")
    settings = StudySettings(
        methods=tuple(args.methods),
        correlations=tuple(args.correlations),
        seeds=tuple(args.seeds),
        base={**BASE, **parse_overrides(args.run_config)},
        results_dir=args.results_dir,
        out=args.out,
        plots=args.plots,
        command=command("experiments.weighting_study", given),
    )
    if args.dry_run:
        return cli.dry_run(
            ("flower", run_name(*c), finished_summary(settings, c) is not None)
            for c in settings.cells()
        )
    try:
        run_study(settings, report_only=args.report_only)
    except RuntimeError as err:
        print(f"weighting: {err}", file=sys.stderr)
        return 1
    print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
