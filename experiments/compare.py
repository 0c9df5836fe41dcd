"""Compare algorithms on a grid of (dataset, α, algorithm, weighting, strategy, seed).

Federated cells run through the Flower Simulation Engine (one SuperLink for the whole grid,
one `run-name` per cell, results under `<grid-dir>/runs/`); the two references (centralized
MTL, local single-task) and the new-client transfer run in-process on the same splits and
model code, in a worker process alongside the simulations. A finished cell (its summary says
completed and its config matches) is skipped, so an interrupted grid resumes. At the end it
writes a CSV, a Markdown table, plots and, for the default suite, docs/RESULTS.md.

    python -m experiments.compare                          # the default suite -> docs/RESULTS.md
    python -m experiments.compare --datasets multidigits --alphas 0.5 \\
        --algorithms local fedper single-task --seeds 0 1 -c num-server-rounds=5
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import CHOICES, RunConfig, inactive_method_keys, parse_run_config
from common.storage import atomic_write_json
from deploy.runs import REPO, parse_overrides
from deploy.simulation import SimulationEngine
from experiments.references import (
    CENTRALIZED,
    CENTRALIZED_TUNED,
    REFERENCES,
    SINGLE_TASK,
    run_reference,
)
from experiments.transfer import FRACTIONS, federation_overrides, run_adaptation

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
# Config keys that do not change what a cell computes (absolute paths differ per checkout).
NOT_COMPARED = ("results-dir", "state-dir", "round-timeout", "digest", "reference")
CELL_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Setting:
    """A dataset and its partitioning: one block of the results table."""

    label: str
    overrides: tuple[tuple[str, Any], ...]

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
            for seed in self.seeds:
                for method in self.methods:
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
    """The suite behind docs/RESULTS.md (`compare_report.suite_note` explains its budget)."""
    return Grid(
        name="default",
        settings=[
            dirichlet_setting("multidigits", 0.1),
            dirichlet_setting("multidigits", 0.5),
            dirichlet_setting("multidigits", 5.0),
            PENGUINS,
            dirichlet_setting("synthcorr", 0.5),
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


# ---------------------------------------------------------------- resume


def expected_config(overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_run_config(overrides)
    return {**cfg.to_dict(), "run-name": cfg.name}


def same_config(recorded: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a finished cell was computed under the config the grid asks for. Other work
    adds run-config keys over time: a key one side lacks counts as its default, a key the
    code no longer has is ignored, and `fraction-evaluate` does not matter when every round
    is a full evaluation (eval-every 1), nor do the settings of an algorithm or weighting the
    cell does not use (`inactive_method_keys`)."""
    defaults = RunConfig().to_dict()
    skip = set(NOT_COMPARED) | inactive_method_keys(expected)
    for k in (set(recorded) | set(expected)) - skip:
        if k not in expected and k not in defaults:
            continue
        if k == "fraction-evaluate" and expected.get("eval-every") == 1:
            continue
        if recorded.get(k, defaults.get(k)) != expected.get(k, defaults.get(k)):
            return False
    return True


def is_done(grid: Grid, cell: Cell) -> bool:
    """Completed earlier with the same config (then the cell is skipped)."""
    expected = expected_config(grid.overrides(cell))
    if cell.kind == "transfer":
        path = grid.cell_dir(cell) / "transfer.json"
        if not path.exists():
            return False
        rec = json.loads(path.read_text())
        t = grid.transfer
        return (
            rec.get("status") == "completed"
            and same_config(rec.get("config", {}), expected)
            and t is not None
            and rec.get("holdout") == t.holdout
            and rec.get("fractions") == list(t.fractions)
        )
    path = grid.cell_dir(cell) / "summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    return summary.get("status") == "completed" and same_config(summary.get("config", {}), expected)


# ---------------------------------------------------------------- running


@dataclass
class GridRun:
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class Progress:
    """One line per cell: position, kind, name, outcome, time, and an ETA from this
    invocation's mean time per kind (references overlap the simulations when run in a
    worker, so their share of the ETA is the larger of the two queues, not the sum)."""

    def __init__(self, total: int, skipped: int, parallel: bool, out: Callable[[str], None]):
        self.total, self.done, self.parallel, self.out = total, skipped, parallel, out
        self.t0 = time.perf_counter()
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.left: dict[bool, int] = {True: 0, False: 0}

    def line(self, cell: Cell, status: str, wall_s: float, detail: str = "") -> None:
        self.done += 1
        self.times[cell.in_flower].append(wall_s)
        self.left[cell.in_flower] -= 1
        elapsed = time.perf_counter() - self.t0
        self.out(
            f"[{self.done:>4}/{self.total}] {_hms(elapsed)} {cell.kind:<12} {cell.name:<48} "
            f"{status:<9} {wall_s:6.1f}s {detail}| ETA {self.eta()}"
        )

    def eta(self) -> str:
        """'?' until a kind with cells left has a timing; a kind without one yet (e.g. the
        transfer adaptations, which wait for their federations) counts as free."""
        parts = [
            self.left[kind] * sum(self.times[kind]) / len(self.times[kind])
            for kind in (True, False)
            if self.left[kind] > 0 and self.times[kind]
        ]
        if not parts and any(self.left[kind] > 0 for kind in (True, False)):
            return "?"
        return _hms((max(parts) if self.parallel else sum(parts)) if parts else 0.0)


def run_grid(
    grid: Grid,
    *,
    engine: SimulationEngine | None = None,
    workers: int = 1,
    cpus_per_client: float = 2,
    out: Callable[[str], None] = print,
) -> GridRun:
    """Run every cell that is not done; returns counts. References and transfer adaptation
    go to `workers` worker processes (0: in this process, before the simulations)."""
    t0 = time.perf_counter()
    cells = grid.cells()
    todo = [c for c in cells if not is_done(grid, c)]
    result = GridRun(skipped=len(cells) - len(todo))
    out(
        f"compare: grid '{grid.name}': {len(cells)} cells, {result.skipped} done earlier "
        f"(skipped), {len(todo)} to run; results under {grid.grid_dir}"
    )
    if not todo:
        return result
    progress = Progress(len(cells), result.skipped, workers > 0, out)
    for c in todo:
        progress.left[c.in_flower] += 1
    timings = _Timings(grid.grid_dir / "timings.json")
    # The machine is shared: the 1-minute load average after each cell says how contended
    # the timings were.
    load = [os.getloadavg()[0]]
    # Recorded as it goes, so an invocation that is killed still leaves its time behind.
    entry: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "skipped": result.skipped,
        "cpus": os.cpu_count(),
        "finished": False,
    }
    timings.invocations.append(entry)

    def record() -> None:
        result.wall_s = time.perf_counter() - t0
        entry.update(
            wall_s=round(result.wall_s, 1),
            ran=result.ran,
            failed=len(result.failed),
            mean_load=round(sum(load) / len(load), 2),
        )
        timings.save()

    def finished(cell: Cell, status: str, wall_s: float, error: str = "") -> None:
        result.ran += 1
        load.append(os.getloadavg()[0])
        timings.cells[cell.name] = round(wall_s, 3)
        if status != "completed":
            result.failed.append(cell.name)
        progress.line(cell, status, wall_s, _detail(grid, cell) if not error else f"{error[:80]} ")
        record()

    record()

    local_jobs = [c for c in todo if not c.in_flower]
    flower_jobs = [c for c in todo if c.in_flower]
    waiting = [
        c for c in local_jobs if c.kind == "transfer" and grid.federation_of(c) in flower_jobs
    ]
    ready = [c for c in local_jobs if c not in waiting]

    pool = (
        cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
        )
        if workers > 0 and local_jobs
        else None
    )
    futures: dict[cf.Future, Cell] = {}

    def start(cell: Cell) -> None:
        fn, args = _local_job(grid, cell)
        if pool is None:
            r = fn(*args)
            finished(cell, r["status"], r["wall_s"], r.get("error") or "")
        else:
            futures[pool.submit(fn, *args)] = cell

    def collect(block: bool) -> None:
        done = cf.wait(
            futures,
            return_when=cf.ALL_COMPLETED if block else cf.FIRST_COMPLETED,
            timeout=None if block else 0,
        ).done
        for fut in done:
            cell = futures.pop(fut)
            try:
                r = fut.result()
            except Exception as err:  # a crashed worker fails its cell, not the grid
                r = {"status": "failed", "wall_s": 0.0, "error": f"{type(err).__name__}: {err}"}
            finished(cell, r["status"], r["wall_s"], r.get("error") or "")

    try:
        for cell in ready:
            start(cell)
        if flower_jobs:
            own = engine is None
            eng = engine or SimulationEngine(cpus_per_client=cpus_per_client).__enter__()
            try:
                for cell in flower_jobs:
                    t_cell = time.perf_counter()
                    try:
                        outcome = eng.run(grid.overrides(cell), echo=False, timeout=CELL_TIMEOUT_S)
                        ok, err = outcome.ok, "" if outcome.ok else f"see {outcome.log_path}"
                    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                        ok, err = False, f"{type(exc).__name__}: {exc}"  # the grid goes on
                    wall = time.perf_counter() - t_cell
                    finished(cell, "completed" if ok else "failed", wall, err)
                    for t in [c for c in waiting if grid.federation_of(c) == cell]:
                        waiting.remove(t)
                        if ok:
                            start(t)
                        else:
                            finished(t, "failed", 0.0, "its federation failed")
                    if pool is not None:
                        collect(block=False)
            finally:
                if own:
                    eng.__exit__(None, None, None)
        if pool is not None:
            collect(block=True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        entry["finished"] = True
        record()
    return result


def _die_with_parent() -> None:
    """Worker initializer: a worker whose grid process is killed outright (SIGKILL runs no
    cleanup) ends too instead of computing references for nobody (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _local_job(grid: Grid, cell: Cell) -> tuple[Callable[..., dict[str, Any]], tuple]:
    overrides = grid.overrides(cell)
    if cell.kind == "transfer":
        t = grid.transfer
        assert t is not None
        fed = grid.federation_of(cell)
        path = str(grid.cell_dir(cell) / "transfer.json")
        return run_adaptation, (overrides, t.holdout, str(grid.cell_dir(fed)), path, t.fractions)
    return run_reference, (cell.kind, overrides, str(grid.cell_dir(cell)))


def _detail(grid: Grid, cell: Cell) -> str:
    """A short headline for the progress line: the mean test accuracy over classification
    tasks (or the first regression MAE) of the final round."""
    from experiments.compare_stats import mean_classification_accuracy

    path = grid.cell_dir(cell) / "summary.json"
    if cell.kind == "transfer" or not path.exists():
        return ""
    summary = json.loads(path.read_text())
    acc = mean_classification_accuracy(summary)
    return f"mean acc {acc:.3f} " if acc == acc else ""


class _Timings:
    """Wall time per cell and per invocation, kept in the grid dir (the report sums them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.cells: dict[str, float] = data.get("cells", {})
        self.invocations: list[dict[str, Any]] = data.get("invocations", [])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"cells": self.cells, "invocations": self.invocations})


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------- command line


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", choices=("multidigits", "synthcorr", "penguins"))
    p.add_argument("--alphas", nargs="+", type=float, help="Dirichlet α (not for penguins)")
    p.add_argument("--algorithms", nargs="+", help=f"rows, from {list(METHODS)}")
    p.add_argument("--weightings", nargs="+", choices=CHOICES["weighting"])
    p.add_argument("--strategies", nargs="+", choices=CHOICES["strategy"])
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("-c", "--run-config", action="append", default=[], help="key=value, all cells")
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
    p.add_argument("--dry-run", action="store_true", help="list the cells and what is done")
    p.add_argument("--report-only", action="store_true", help="write reports from what exists")
    return p.parse_args(argv)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM ends the grid like Ctrl-C: the SuperLink and workers are stopped and the
    time so far is recorded (the `finally` blocks run)."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    from experiments.compare_report import write_reports

    signal.signal(signal.SIGTERM, _terminate)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    grid, is_default = build_grid(args)
    if args.dry_run:
        for c in grid.cells():
            print(f"{'done' if is_done(grid, c) else 'todo'}  {c.kind:<12} {c.name}")
        return 0
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
            f"compare: ran {run.ran} cells in {_hms(run.wall_s)}, skipped {run.skipped}, "
            f"failed {len(run.failed)}"
        )
    # The command that reproduces the results (report-only is not part of producing them).
    repro = [a for a in argv if a != "--report-only"]
    command = "python -m experiments.compare" + (" " + shlex.join(repro) if repro else "")
    paths = write_reports(grid, plots_dir=plots, docs_path=docs, command=command, out=print)
    for p in paths:
        print(f"wrote {p}")
    if run.failed:
        print(f"compare: FAILED cells: {', '.join(run.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
