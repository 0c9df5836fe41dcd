"""The comparison's command line: the grid the arguments describe, then run and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import CHOICES, parse_run_config
from deploy.runs import REPO, parse_overrides
from experiments.compare.grid import (
    FEDERATED,
    METHODS,
    PENGUINS,
    Grid,
    TransferSpec,
    default_grid,
    dirichlet_setting,
)
from experiments.compare.page import write_reports
from experiments.compare.references import REFERENCES
from experiments.compare.run import run_grid
from experiments.kit import cli
from experiments.kit.report import command
from experiments.kit.runner import GridRun, hms

DESCRIPTION = "Compare algorithms on a grid of (dataset, α, algorithm, weighting, strategy, seed)."


def build_grid(args: argparse.Namespace) -> tuple[Grid, bool]:
    """The grid the arguments describe, and whether it is the unmodified default suite."""
    grid = default_grid()
    custom = any(
        getattr(args, k) is not None
        for k in ("datasets", "alphas", "algorithms", "weightings", "strategies", "seeds")
    ) or bool(args.run_config)
    if args.datasets is not None or args.alphas is not None:
        datasets = args.datasets or ["multidigits"]
        alphas = args.alphas or [0.5]
        grid.settings = [
            PENGUINS if d == "penguins" else dirichlet_setting(d, a)
            for d in datasets
            for a in ([0] if d == "penguins" else alphas)
        ]
    for key in ("algorithms", "weightings", "strategies", "seeds"):
        value = getattr(args, key)
        if value is not None:
            setattr(grid, "methods" if key == "algorithms" else key, list(value))
    grid.common = {**grid.common, **parse_overrides(args.run_config)}
    if args.no_transfer:
        grid.transfer = None
    else:
        # Natural partitions (penguins' islands) cannot leave a client out of the partitioning.
        candidates = [x.label for x in grid.settings if x.config.get("partitioner") != "natural"]
        if args.transfer_setting and args.transfer_setting not in candidates:
            raise SystemExit(f"--transfer-setting must be one of {candidates}")
        default = grid.transfer.setting if grid.transfer else ""
        setting = args.transfer_setting or (default if default in candidates else None)
        setting = setting or (candidates[0] if candidates else None)
        algorithms = tuple(args.transfer_algorithms or ("fedper",))
        bad = [a for a in algorithms if a in ("local", *REFERENCES) or a not in FEDERATED]
        if bad:
            raise SystemExit(f"--transfer-algorithms needs algorithms that share an encoder: {bad}")
        grid.transfer = (
            TransferSpec(setting, algorithms, args.transfer_holdout or 2) if setting else None
        )
        custom |= bool(args.transfer_setting or args.transfer_holdout or args.transfer_algorithms)
    if custom:
        grid.name = "custom"
    grid.grid_dir = (
        Path(args.grid_dir) if args.grid_dir else REPO / "results" / "compare" / grid.name
    )
    for m in grid.methods:
        if m not in METHODS:
            raise SystemExit(f"unknown algorithm '{m}'; valid: {list(METHODS)}")
    for c in grid.cells()[:1] + [c for c in grid.cells() if c.kind == "flower"][:1]:
        parse_run_config(grid.overrides(c))  # fail fast on a bad override
    return grid, not custom


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.compare", description=DESCRIPTION)
    cli.add_study_options(p, seeds=None)
    p.add_argument("--datasets", nargs="+", choices=("multidigits", "synthcorr", "penguins"))
    p.add_argument("--alphas", nargs="+", type=float, help="Dirichlet α (not for penguins)")
    p.add_argument("--algorithms", nargs="+", help=f"rows, from {list(METHODS)}")
    p.add_argument("--weightings", nargs="+", choices=CHOICES["weighting"])
    p.add_argument("--strategies", nargs="+", choices=CHOICES["strategy"])
    p.add_argument("--grid-dir", help="where the runs go (default results/compare/<grid>)")
    p.add_argument("--docs", help="write this RESULTS.md (default suite: docs/RESULTS.md)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--plots-dir", help="default: docs/results with --docs, else <grid-dir>/plots")
    p.add_argument("--no-transfer", action="store_true")
    p.add_argument("--transfer-setting")
    p.add_argument("--transfer-holdout", type=int, help="clients left out (default 2)")
    p.add_argument("--transfer-algorithms", nargs="+", help="federations to adapt to (fedper)")
    p.add_argument(
        "--workers", type=int, default=1, help="processes for the references (0: inline)"
    )
    p.add_argument(
        "--cpus-per-client",
        type=float,
        default=2,
        help="Ray CPUs per virtual client; 2 on a 2-core machine runs one actor, which measured "
        "faster than two competing ones",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    grid, is_default = build_grid(args)
    if args.dry_run:
        return cli.dry_run((c.kind, c.name, grid.finished(c)) for c in grid.cells())
    docs = (
        None
        if args.no_docs
        else (
            Path(args.docs) if args.docs else (REPO / "docs" / "RESULTS.md" if is_default else None)
        )
    )
    plots = (
        Path(args.plots_dir)
        if args.plots_dir
        else (REPO / "docs" / "results" if docs else grid.grid_dir / "plots")
    )
    run = GridRun()
    if not args.report_only:
        run = run_grid(grid, workers=args.workers, cpus_per_client=args.cpus_per_client)
        print(
            f"compare: ran {run.ran} cells in {hms(run.wall_s)}, skipped {run.skipped}, "
            f"failed {len(run.failed)}"
        )
    cmd = command("experiments.compare", argv)
    paths = write_reports(grid, plots_dir=plots, docs_path=docs, command=cmd, out=print)
    for p in paths:
        print(f"wrote {p}")
    if run.failed:
        print(f"compare: FAILED cells: {', '.join(run.failed)}", file=sys.stderr)
        return 1
    return 0
