"""Loss-weighting study: `ew` vs `pcgrad`, `mgda`, `cagrad` on SynthCorr, fedper.

    python -m experiments.weighting_study                        # ρ = 0.1, seeds 0 1 2
    python -m experiments.weighting_study --correlations 0.1 0.9 # with the related-task contrast

Gradient-conflict methods are meant to help when tasks pull the shared encoder in different
directions, i.e. at low task correlation ρ (`synth-correlation`). Every run is a real Flower
simulation through one `SimulationEngine` (finished runs are resumed). The report,
`docs/WEIGHTING.md`, gives each task's final-round test metric (mean over the clients holding
it) as mean ± std over seeds, and each method's difference to `ew` paired by seed; a method is
called better or worse on a task only when the mean paired difference exceeds
`SIGNIFICANCE_STDS` times its std.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config import parse_run_config, same_training
from common.datasets import dataset_tasks
from common.federation import client_tasks, split_indices
from deploy.runs import REPO
from deploy.simulation import SimulationEngine

METHODS = ("ew", "pcgrad", "mgda", "cagrad")
CORRELATIONS = (0.1,)
SEEDS = (0, 1, 2)
SIGNIFICANCE_STDS = 2.0  # better/worse only when |mean paired difference| > this × its std
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


def final_metrics(summary: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """Per task: (headline metric, final-round test value, mean over the clients)."""
    out = {}
    for task, metrics in summary["per_task"].items():
        for name in ("accuracy", "mae"):
            if f"test/{name}" in metrics:
                out[task] = (name, float(metrics[f"test/{name}"]["mean"]))
                break
    return out


def run_one(engine: SimulationEngine | None, ov: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The run's summary, and whether it ran now: a completed run with the same config on
    disk is reused. Without an engine (--report-only) a missing run is an error."""
    cfg = parse_run_config(ov)
    path = Path(ov["results-dir"]) / cfg.name / "summary.json"
    if path.exists():
        summary = json.loads(path.read_text())
        if (
            summary.get("status") == "completed"
            and same_training(summary["config"], cfg)
            and summary.get("final_round") == cfg.num_server_rounds
        ):
            return summary, False
    if engine is None:
        raise SystemExit(f"--report-only: no finished run {path}; run the study without it")
    outcome = engine.run(ov, echo=False)
    if not outcome.ok or outcome.summary is None:
        err = (outcome.summary or {}).get("error", f"see {outcome.log_path}")
        raise RuntimeError(f"{cfg.name} failed ({outcome.status}/{outcome.flower_status}): {err}")
    return outcome.summary, True


def paired_difference(
    method: Sequence[float], ew: Sequence[float], higher_is_better: bool
) -> dict[str, Any]:
    """Method − ew per seed. `verdict` is better/worse only when |mean| > SIGNIFICANCE_STDS
    std of the per-seed differences (sample std; needs ≥ 2 seeds), otherwise n.s."""
    d = np.asarray(method, float) - np.asarray(ew, float)
    mean = float(d.mean())
    std = float(d.std(ddof=1)) if len(d) > 1 else None
    verdict = "n.s."
    if std is not None and abs(mean) > SIGNIFICANCE_STDS * std:
        improved = mean > 0 if higher_is_better else mean < 0
        verdict = "better" if improved else "worse"
    return {"mean": mean, "std": std, "verdict": verdict, "n": len(d)}


def relative_delta(method: dict[str, float], ew: dict[str, float], metric: dict[str, str]) -> float:
    """Δm (%) of a method against ew (LibMTL's convention, lower is better)."""
    vals = [
        (-1 if metric[t] == "accuracy" else 1) * (method[t] - ew[t]) / abs(ew[t]) * 100 for t in ew
    ]
    return float(np.mean(vals))


def run_study(
    settings: StudySettings, engine: SimulationEngine | None = None, *, report_only: bool = False
) -> dict[str, Any]:
    """Every (ρ, method, seed) run, then the report; returns the table's numbers. With
    `report_only` nothing runs: every cell must be finished on disk."""
    t0 = time.perf_counter()
    grid = [
        (r, m, s) for r in settings.correlations for m in settings.methods for s in settings.seeds
    ]
    values: dict[tuple[float, str, int], dict[str, tuple[str, float]]] = {}
    run_seconds = 0.0
    startup: list[float] = []  # per run executed now: its wall time outside the ServerApp
    with contextlib.ExitStack() as stack:
        if engine is None and not report_only:
            engine = stack.enter_context(SimulationEngine())
        for i, (r, m, s) in enumerate(grid, 1):
            tr = time.perf_counter()
            summary, ran = run_one(engine, overrides(settings, r, m, s))
            values[(r, m, s)] = final_metrics(summary)
            server = float(summary.get("wall_time_s") or 0.0)
            run_seconds += server
            if ran:
                startup.append(time.perf_counter() - tr - server)
            done = time.perf_counter() - t0
            print(
                f"[{i}/{len(grid)}] ρ={r:g} {m} seed {s}: "
                + ", ".join(f"{t} {v[1]:.3f}" for t, v in sorted(values[(r, m, s)].items()))
                + f" ({time.perf_counter() - tr:.0f}s; "
                f"eta {done / i * (len(grid) - i) / 60:.1f} min)",
                flush=True,
            )
    wall = time.perf_counter() - t0
    table = build_table(values, settings)
    write_report(table, settings, wall, run_seconds, startup)
    return {"values": values, "table": table, "wall_s": wall}


def build_table(
    values: dict[tuple[float, str, int], dict[str, tuple[str, float]]], settings: StudySettings
) -> dict[float, dict[str, Any]]:
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
                relative_delta(
                    {t: per[m][t][i] for t in tasks}, {t: per["ew"][t][i] for t in tasks}, metric
                )
                for i in range(len(seeds))
            ]
            for m in diffs
        }
        out[r] = {"tasks": tasks, "metric": metric, "values": per, "diffs": diffs, "delta_m": dm}
    return out


def _ms(v: Sequence[float], digits: int = 3) -> str:
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} ± {np.std(v, ddof=1):.{digits}f}"


def write_report(
    table: dict[float, dict[str, Any]],
    settings: StudySettings,
    wall_s: float,
    run_seconds: float = 0.0,
    startup_s: Sequence[float] = (),
) -> None:
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    runs = len(table) * len(settings.methods) * len(settings.seeds)
    startup = (
        f" (plus Flower's start-up, {np.mean(startup_s):.0f} s per run on average over the "
        f"{len(startup_s)} run(s) made by this invocation)"
        if startup_s
        else ""
    )
    lines = [
        "# Loss weighting under federation: ew vs pcgrad, mgda, cagrad (SynthCorr)",
        "",
        "Generated by `experiments/weighting_study.py`; reproduce with",
        "",
        "```bash",
        settings.command,
        "```",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()} (Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores); {runs} Flower simulations: "
        f"{run_seconds / 60:.0f} min of server-side run time in all{startup}; this invocation "
        f"took {wall_s / 60:.1f} min (finished runs are resumed).",
        "",
        "Settings: "
        + ", ".join(f"`{k}={v}`" for k, v in settings.base.items())
        + f", `synth-correlation` ∈ {list(settings.correlations)}, seeds {list(settings.seeds)}; "
        + f"everything else at its default (resolved: {_defaults_text(settings.base)}). "
        + _tasks_text(table)
        + "; each number is the final round's mean over the clients holding the task, then "
        "mean ± std over seeds.",
        "",
        "Δ vs ew is the per-seed difference (method − ew), mean ± std over seeds. Marked "
        f"**better**/**worse** only when |mean| > {SIGNIFICANCE_STDS:g} × std of that "
        "difference; otherwise n.s. Δm (%) is LibMTL's mean relative change over tasks against "
        "ew (lower is better).",
        "",
    ]
    verdicts = []
    for r, t in table.items():
        lines += [f"## ρ = {r:g}", ""]
        methods = list(settings.methods)
        head = (
            "| task | metric | "
            + " | ".join(methods)
            + " | "
            + " | ".join(f"Δ {m} vs ew" for m in t["diffs"])
        )
        lines += [head + " |", "|" + " --- |" * (2 + len(methods) + len(t["diffs"]))]
        for task in t["tasks"]:
            cells = [_ms(t["values"][m][task]) for m in methods]
            ds = []
            for m, d in t["diffs"].items():
                x = d[task]
                std = "–" if x["std"] is None else f"{x['std']:.3f}"
                mark = f"**{x['verdict']}**" if x["verdict"] != "n.s." else "n.s."
                ds.append(f"{x['mean']:+.3f} ± {std} ({mark})")
                if x["verdict"] != "n.s.":
                    verdicts.append(f"ρ={r:g}: {m} {x['verdict']} than ew on {task}")
            lines.append(f"| {task} | {t['metric'][task]} | " + " | ".join(cells + ds) + " |")
        lines += [
            "",
            "| Δm (%) vs ew | " + " | ".join(t["delta_m"]) + " |",
            "|" + " --- |" * (1 + len(t["delta_m"])),
            "| mean ± std | " + " | ".join(_ms(v, 2) for v in t["delta_m"].values()) + " |",
            "",
        ]
    lines += ["## Verdict", ""]
    cfg = parse_run_config(settings.base)
    better = [v for v in verdicts if " better " in v]
    worse = [v for v in verdicts if " worse " in v]
    lines.append(
        f"- Improvements over ew (mean paired difference > {SIGNIFICANCE_STDS:g} std): "
        + ("; ".join(better) if better else "none on any task: no improvement is claimed.")
    )
    if worse:
        lines.append("- Significantly worse than ew: " + "; ".join(worse) + ".")
    lines += [
        "",
        f"Caveats: {len(settings.seeds)} seed(s) make the {SIGNIFICANCE_STDS:g}-std rule a "
        "coarse screen (it neither proves nor rules out small effects); "
        f"{cfg.num_server_rounds} rounds of {cfg.local_epochs} local epochs on the "
        f"{_train_share():.0%} training split of `samples-per-client = "
        f"{cfg.samples_per_client}` examples per client is a short budget; each method runs "
        "with its default options, untuned.",
        "",
        "Plot: `docs/weighting/final_metrics.png` (paired difference to ew per task, mean ± "
        "std over seeds, drawn so that up is better).",
        "",
    ]
    settings.out.write_text("\n".join(lines))
    write_plot(table, settings)


def _defaults_text(base: dict[str, Any]) -> str:
    """The defaults the study relies on, read from the resolved run config."""
    cfg = parse_run_config(base)
    sizes = sorted(
        {
            len(client_tasks(cfg, dataset_tasks(cfg), c, cfg.num_clients))
            for c in range(cfg.num_clients)
        }
    )
    partition = f"{cfg.partitioner}" + (
        f" α={cfg.dirichlet_alpha:g}" if cfg.partitioner == "dirichlet" else ""
    )
    return (
        f"partitioner {partition}, batch {cfg.batch_size}, lr {cfg.lr:g}, hidden {cfg.hidden}, "
        f"the default {cfg.num_clients}-client task plan of "
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings.plots.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(settings.plots / "final_metrics.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from deploy.runs import parse_overrides

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--correlations", nargs="+", type=float, default=list(CORRELATIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("-c", "--run-config", action="append", default=[])
    parser.add_argument("--results-dir", type=Path, default=StudySettings.results_dir)
    parser.add_argument("--out", type=Path, default=StudySettings.out)
    parser.add_argument("--plots", type=Path, default=StudySettings.plots)
    parser.add_argument("--report-only", action="store_true", help="no runs: report from disk")
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
        command=" ".join(
            ["python -m experiments.weighting_study", *[a for a in given if a != "--report-only"]]
        ),
    )
    out = run_study(settings, report_only=args.report_only)
    print(f"wrote {settings.out} ({out['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
