"""Numbers for the core: `fedper` vs `local` on the default config over seeds, and the wall
time of the Flower simulation vs the same training in a bare loop. Writes docs/CORE.md.

    python -m experiments.core_report --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from common.config import parse_run_config
from experiments.bare_loop import run_bare
from experiments.launch import REPO, run_simulation
from server.results import headline


def final_headlines(summary: dict) -> dict[str, float]:
    out = {}
    for task, metrics in summary["per_task"].items():
        h = headline(metrics)
        if h:
            out[task] = h[1]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--results-dir", default=str(REPO / "results" / "core-report"))
    parser.add_argument("--out", default=str(REPO / "docs" / "CORE.md"))
    args = parser.parse_args(argv)

    table: dict[str, dict[str, list[float]]] = {}
    walls: dict[str, list[float]] = {"flower": [], "bare": []}
    for seed in args.seeds:
        for algorithm in ("fedper", "local"):
            overrides = {"algorithm": algorithm, "seed": seed, "results-dir": args.results_dir}
            outcome = run_simulation(overrides, echo=False)
            if not outcome.ok:
                raise SystemExit(f"{algorithm} seed {seed} failed: see {outcome.log_path}")
            print(f"{algorithm} seed {seed}: {outcome.wall_time_s:.1f}s", flush=True)
            for task, value in final_headlines(outcome.summary).items():
                table.setdefault(task, {}).setdefault(algorithm, []).append(value)
            if algorithm == "fedper":
                walls["flower"].append(outcome.wall_time_s)
                t0 = time.perf_counter()
                run_bare(parse_run_config({"seed": seed}))
                walls["bare"].append(time.perf_counter() - t0)

    lines = [
        "# Core numbers: fedper vs local, Flower vs a bare loop",
        "",
        f"Written by `python -m experiments.core_report --seeds {' '.join(map(str, args.seeds))}`"
        f" on {platform.machine()}, {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Default config (`make run`): MultiDigits, 6 clients, "
        "Dirichlet α=0.5, 20 rounds. Final-round test metric, mean over the clients holding "
        "each task; mean ± std over seeds.",
        "",
        "| task | metric | fedper | local | fedper − local |",
        "| --- | --- | --- | --- | --- |",
    ]
    for task in sorted(table):
        metric = "mae" if task == "sum" else "accuracy"
        f, loc = table[task]["fedper"], table[task]["local"]
        diff = statistics.mean(f) - statistics.mean(loc)
        lines.append(f"| {task} | {metric} | {_ms(f)} | {_ms(loc)} | {diff:+.4f} |")
    ratio = statistics.mean(walls["flower"]) / statistics.mean(walls["bare"])
    lines += [
        "",
        "## Wall time",
        "",
        "| path | wall time (s), mean over seeds |",
        "| --- | --- |",
        f"| Flower simulation (`make run` path, incl. SuperLink and Ray start-up) | "
        f"{statistics.mean(walls['flower']):.1f} |",
        f"| bare in-process loop, same clients and training function | "
        f"{statistics.mean(walls['bare']):.1f} |",
        f"| ratio | {ratio:.1f}× |",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


if __name__ == "__main__":
    main()
