"""Running a comparison grid through the kit: federated cells on the engine, the references
and the transfer adaptations as local work in worker processes (an adaptation after its
federation)."""

from __future__ import annotations

from collections.abc import Callable

from deploy.simulation import SimulationEngine
from experiments.compare.grid import CELL_TIMEOUT_S, Cell, Grid, prepare_data
from experiments.compare.references import run_reference
from experiments.compare.transfer import run_adaptation
from experiments.kit.cells import read_record
from experiments.kit.runner import GridRun, Job, flower_run, run_jobs
from experiments.kit.scores import mean_classification_accuracy


def job(grid: Grid, cell: Cell) -> Job:
    overrides = grid.overrides(cell)
    name, detail = cell.name, lambda: _detail(grid, cell)
    if cell.in_flower:
        return Job(name, cell.kind, flower_run, (overrides, CELL_TIMEOUT_S), detail=detail)
    if cell.kind == "transfer":
        t = grid.transfer
        assert t is not None
        fed = grid.federation_of(cell)
        out = grid.cell_dir(cell) / "transfer.json"
        args = (overrides, t.holdout, str(grid.cell_dir(fed)), str(out), t.fractions)
        return Job(name, cell.kind, run_adaptation, args, flower=False, after=fed.name)
    args = (cell.kind, overrides, str(grid.cell_dir(cell)))
    return Job(name, cell.kind, run_reference, args, flower=False, detail=detail)


def run_grid(
    grid: Grid,
    *,
    engine: SimulationEngine | None = None,
    workers: int = 1,
    cpus_per_client: float = 2,
    out: Callable[[str], None] = print,
) -> GridRun:
    """Run every cell that is not finished; returns counts. References and transfer
    adaptation go to `workers` worker processes (0: in this process, before the
    simulations)."""
    prepare_data(grid)
    cells = grid.cells()
    return run_jobs(
        f"compare: grid '{grid.name}'",
        [job(grid, c) for c in cells if not grid.finished(c)],
        total=len(cells),
        results_dir=grid.grid_dir,
        engine=engine,
        workers=workers,
        cpus_per_client=cpus_per_client,
        out=out,
    )


def _detail(grid: Grid, cell: Cell) -> str:
    """The progress line's headline: the mean test accuracy over classification tasks of
    the final round."""
    summary = read_record(grid.cell_dir(cell) / "summary.json")
    acc = mean_classification_accuracy(summary) if summary else float("nan")
    return f"mean acc {acc:.3f} " if acc == acc else ""
