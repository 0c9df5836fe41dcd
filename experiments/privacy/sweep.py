"""Privacy sweep: utility and attacks vs ε, private vs shared heads, SecAgg on/off.

    python -m experiments.privacy.sweep            # the full sweep, resumes finished cells
    python -m experiments.privacy.sweep --help     # smaller grids, other settings

Grid: {fedper, fedavg, local} × {no DP, ε = 8, 3, 1 (dp-sgd, σ calibrated to spend ε over the
run)} × {secagg off, on} × seeds, on MultiDigits, every cell a real Flower simulation through
one `SimulationEngine`. SecAgg+ is refused for fedavg (it would have to aggregate per-task
heads) and local (nothing is shared): those cells are recorded as n/a, not run.

After each run, every client's deployed model is rebuilt outside Flower from the run's own
outputs — the encoder from `shared_arrays.npz`, the heads from the client's state dir
(`state.npz`) or, for fedavg, the server's averaged heads (`task_arrays.npz`), which is what
the run evaluated — and attacked:

- M1 loss threshold and M2 LiRA-offline (shadow models trained with the client training code
  on an attacker's own MultiDigits pool) on each client's deployed model; members = its train
  split, non-members = its test split.
- M3 from an encoder update, in the server's view: one client's update (secagg off) or only
  the aggregate (secagg on). Round 1 is replayed exactly with the client code (same seeds;
  DP runs therefore draw their noise from the seed: `dp-insecure-seeded-noise = true`);
  a further round from the final state shows the trained model's update.
- R2 gradient inversion and label recovery on single examples and a small batch of a client's
  `left` task: head unknown for fedper (private heads: only encoder gradients reach the
  server), head known plus label recovery from the head gradient for fedavg.

Each cell writes `privacy.json` next to its run; `docs/PRIVACY.md` and the plots under
`docs/privacy/` are generated from those files only. The modules: `grid` (cells, base
config), `sweep` (running them through the kit), `models` and `cell_attacks` (the attacks on
one cell), `report`, `findings` and `plots` (the document).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from common.config import RunConfig, parse_run_config
from common.storage import atomic_write_json
from deploy.runs import parse_overrides
from deploy.simulation import SimulationEngine
from experiments.kit import cli
from experiments.kit.cells import finished, read_record
from experiments.kit.report import command
from experiments.kit.runner import Job, flower_run, run_jobs
from experiments.privacy.grid import (
    ALGORITHMS,
    BASE,
    EPSILONS,
    SEEDS,
    Cell,
    Settings,
    not_applicable,
)


def _config(cell: Cell, settings: Settings) -> tuple[RunConfig, Path]:
    """The cell's resolved config and its run directory."""
    root = Path(settings.results_dir).resolve()
    return parse_run_config(cell.overrides(settings.base, root)), root / cell.name


def finished_record(cell: Cell, settings: Settings) -> dict[str, Any] | None:
    """The cell's privacy.json when the cell is finished: its run by the kit's rule, and
    the attacks on it made with this sweep's attack settings (`Settings.attack_key`)."""
    cfg, run_dir = _config(cell, settings)
    if not finished(read_record(run_dir / "summary.json"), cfg):
        return None
    record = read_record(run_dir / "privacy.json")
    return record if record and record.get("attack_key") == settings.attack_key() else None


def attack_run(engine: SimulationEngine, cell: Cell, settings: Settings) -> dict[str, Any]:
    """A cell's work: the Flower run (unless it is finished already), then the attacks on
    it, written to privacy.json."""
    from experiments.privacy.cell_attacks import attack_cell

    cfg, run_dir = _config(cell, settings)
    record_path = run_dir / "privacy.json"
    if not finished(read_record(run_dir / "summary.json"), cfg):
        # A stale state dir would hand the new run old heads and a spent DP budget.
        shutil.rmtree(cfg.state_dir, ignore_errors=True)
        record_path.unlink(missing_ok=True)
        result = flower_run(engine, cell.overrides(settings.base, run_dir.parent))
        if result["status"] != "completed":
            return result
    summary = read_record(run_dir / "summary.json")
    assert summary is not None
    record = attack_cell(cell, cfg, run_dir, summary, settings, run_dir.parent)
    atomic_write_json(record_path, record)
    return {"status": "completed"}


def job(cell: Cell, settings: Settings) -> Job:
    def detail() -> str:
        r = finished_record(cell, settings) or {}
        if not r:
            return ""
        return (
            f"acc {r['utility']['mean_acc']:.3f} M1 {r['membership']['m1_auc']:.3f} "
            f"M2 {r['membership']['m2_auc']:.3f} "
        )

    kind = "dp-sgd" if cell.epsilon is not None else "no-dp"
    return Job(cell.name, kind, attack_run, (cell, settings), detail=detail)


def run_sweep(
    settings: Settings, engine: SimulationEngine | None = None, *, report_only: bool = False
) -> dict[str, Any]:
    """Every applicable cell not finished yet (run and attacked), then the report from the
    privacy.json records on disk; returns what the report used. With `report_only` nothing
    runs. A cell without a finished record is an error."""
    from experiments.privacy.report import write_report

    root = Path(settings.results_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cells = settings.cells()
    na = {c: r for c in cells if (r := not_applicable(c, settings.base, root))}
    todo = [c for c in cells if c not in na]
    if not report_only:
        torch.set_num_threads(1)  # a shared box: the simulation's actors need the rest
        run_jobs(
            "privacy",
            [job(c, settings) for c in todo if finished_record(c, settings) is None],
            total=len(todo),
            results_dir=root,
            engine=engine,
        )
    records = {c: finished_record(c, settings) for c in todo}
    missing = [c.name for c, r in records.items() if r is None]
    if missing:
        raise RuntimeError(
            f"{len(missing)} cell(s) without a finished run and attack record under {root}: "
            f"{', '.join(missing)} (see their flower.log)"
        )
    found = {c: r for c, r in records.items() if r is not None}
    return {"records": found, "na": na, "report": write_report(found, na, settings)}


def _eps(value: str) -> float | None:
    return None if value.lower() in ("none", "inf", "nodp") else float(value)


def main(argv: list[str] | None = None) -> int:
    cli.stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_study_options(parser, seeds=SEEDS)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument(
        "--epsilons", nargs="+", type=_eps, default=list(EPSILONS), help="'none' = no DP"
    )
    parser.add_argument("--secagg", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--shadows", type=int, default=4)
    parser.add_argument("--r2-steps", type=int, default=300)
    parser.add_argument("--results-dir", type=Path, default=Settings.results_dir)
    parser.add_argument("--out", type=Path, default=Settings.out)
    parser.add_argument("--plots", type=Path, default=Settings.plots)
    given = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(given)
    if args.shadows < 2:
        parser.error(f"--shadows {args.shadows}: LiRA's per-example variance needs at least 2")
    settings = Settings(
        algorithms=tuple(args.algorithms),
        epsilons=tuple(args.epsilons),
        secagg=tuple(s == "on" for s in args.secagg),
        seeds=tuple(args.seeds),
        base={**BASE, **parse_overrides(args.run_config)},
        shadows=args.shadows,
        r2_steps=args.r2_steps,
        results_dir=args.results_dir,
        out=args.out,
        plots=args.plots,
        command=command("experiments.privacy.sweep", given),
    )
    if args.dry_run:
        root = Path(settings.results_dir).resolve()
        na = {c for c in settings.cells() if not_applicable(c, settings.base, root)}
        return cli.dry_run(
            ("refused", c.name, "n/a")
            if c in na
            else ("flower", c.name, finished_record(c, settings) is not None)
            for c in settings.cells()
        )
    try:
        run_sweep(settings, report_only=args.report_only)
    except RuntimeError as err:
        print(f"privacy: {err}", file=sys.stderr)
        return 1
    print(f"wrote {settings.out} and plots under {settings.plots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
