"""The comparison's command line: the grid the arguments describe, then run and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import CHOICES, parse_run_config
from deploy.runs import REPO, parse_overrides
from experiments.compare.grid import (
    FEDERATED,
    FILE_DATA,
    METHODS,
    Grid,
    TransferSpec,
    default_grid,
    settings_of,
)
from experiments.compare.page import write_reports
from experiments.compare.references import REFERENCES
from experiments.compare.run import run_grid
from experiments.kit import cli
from experiments.kit.report import command
from experiments.kit.runner import GridRun, hms

DESCRIPTION = """\
Compare federated learning methods on the same data, splits and model: Local, Local
single-task, FedAvg, FedAvg-FT, FedPer, FedRep, Ditto, FedRoD and the centralized
references, over a grid of (dataset, partitioning, algorithm, weighting, strategy, seed).
Writes compare.csv, table.md (mean ± std over seeds) and plots under the grid directory;
finished cells are skipped, so an interrupted grid resumes where it stopped."""

EPILOG = """\
examples:
  fedmtl-compare --datasets multidigits --alphas 0.5 --algorithms local fedavg fedper \\
      --seeds 0 1 -c num-server-rounds=5
  fedmtl-compare --datasets user --data-file mydata.csv --schema-file mydata.schema.json \\
      --algorithms local fedavg fedper --seeds 0 1 -c num-clients=10
  fedmtl-compare --report-only --grid-dir results/compare/custom   # tables from disk
With no options it runs the default suite behind docs/RESULTS.md (hours on a laptop)."""


def build_grid(args: argparse.Namespace) -> tuple[Grid, bool]:
    """The grid the arguments describe, and whether it is the unmodified default suite."""
    grid = default_grid()
    custom = any(
        getattr(args, k) is not None
        for k in ("datasets", "alphas", "algorithms", "weightings", "strategies", "seeds")
    ) or bool(args.run_config)
    if args.datasets is not None or args.alphas is not None:
        datasets = args.datasets or ["multidigits"]
        files = data_files(args, datasets)
        partitioner = parse_overrides(args.run_config).get("partitioner", "dirichlet")
        grid.settings = [
            s for d in datasets for s in settings_of(d, args.alphas or [0.5], files, partitioner)
        ]
    for key in ("algorithms", "weightings", "strategies", "seeds"):
        value = getattr(args, key)
        if value is not None:
            setattr(grid, "methods" if key == "algorithms" else key, list(value))
    grid.common = {**grid.common, **parse_overrides(args.run_config)}
    if args.no_transfer:
        grid.transfer = None
    else:
        # Natural partitions (penguins' islands) cannot leave a client out of the partitioning;
        # a shared data file (user, hf) partitioned for N − h clients overlaps its N-client
        # partitioning, so the new clients' examples would be in the federation.
        candidates = [
            x.label
            for x in grid.settings
            if x.config.get("partitioner") != "natural" and x.config["dataset"] not in FILE_DATA
        ]
        if args.transfer_setting and args.transfer_setting not in candidates:
            raise SystemExit(
                f"--transfer-setting must be one of {candidates} (not natural partitions, "
                f"not {list(FILE_DATA)}: their held-out clients would share the federation's "
                "examples)"
            )
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


def data_files(args: argparse.Namespace, datasets: list[str]) -> dict[str, str]:
    """`data-file` / `schema-file` of the user's data, as absolute paths (the runs start in
    another directory); both required with `--datasets user`."""
    files = {
        key: str(Path(value).resolve())
        for key, value in (("data-file", args.data_file), ("schema-file", args.schema_file))
        if value
    }
    if "user" in datasets and len(files) < 2:
        raise SystemExit(
            "--datasets user needs --data-file F (CSV or NPZ) and --schema-file S (its task "
            "schema); see README.md, 'Bring your own data'"
        )
    if files and not any(d in FILE_DATA for d in datasets):
        raise SystemExit(f"--data-file / --schema-file go with --datasets {' or '.join(FILE_DATA)}")
    for key, path in files.items():
        if not Path(path).is_file():
            raise SystemExit(f"--{key} {path}: no such file")
    return files


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fedmtl-compare",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_study_options(p, seeds=None)
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=CHOICES["dataset"],
        help="settings to compare on; 'user' is your own CSV/NPZ (--data-file, --schema-file)",
    )
    p.add_argument("--data-file", help="your data file (CSV with a header, or NPZ)")
    p.add_argument("--schema-file", help="its task schema (JSON; README: Bring your own data)")
    p.add_argument(
        "--alphas",
        nargs="+",
        type=float,
        help="Dirichlet α of the partitioning (not for penguins; for your data unless "
        "-c partitioner=... names another)",
    )
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
