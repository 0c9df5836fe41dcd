"""Running a study's unfinished cells: one SimulationEngine for every Flower run, local work
(references, adaptations) in worker processes alongside, one progress/ETA line per cell, and
the wall time of every cell and invocation in `<results dir>/timings.json`.

A study turns each unfinished cell into a `Job`; `run_jobs` runs them all, a failed cell
does not stop the grid, and returns what happened (`GridRun`).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.storage import atomic_write_json
from deploy.simulation import SimulationEngine
from experiments.kit.cells import read_record

Result = Mapping[str, Any]  # {"status": "completed" | "failed" | ..., "error"?, "wall_s"?}


@dataclass
class Job:
    """One cell to run.

    `flower` jobs run one after another in this process: `work(engine, *args)` with the
    grid's engine. Other jobs are local work: `work(*args)` in a worker process (picklable,
    module-level `work`), or in this process with `workers=0`. Either returns a `Result`;
    status "failed" (or an exception) fails the cell, any other status finishes it. `after`
    names a job of the same invocation whose success this one needs; `detail` gives the
    progress line's headline once the job succeeded.
    """

    name: str
    kind: str
    work: Callable[..., Result]
    args: tuple[Any, ...] = ()
    flower: bool = True
    after: str | None = None
    detail: Callable[[], str] | None = None


@dataclass
class GridRun:
    """What one invocation did: cells run, skipped (finished earlier), failed, and the wall
    time of each cell it ran."""

    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    walls: dict[str, float] = field(default_factory=dict)


def flower_run(
    engine: SimulationEngine, overrides: Mapping[str, Any], timeout: float | None = None
) -> Result:
    """A `flower` job's work for one plain Flower run of the app (`timeout` in seconds)."""
    outcome = engine.run(dict(overrides), echo=False, timeout=timeout)
    return {
        "status": "completed" if outcome.ok else "failed",
        "error": "" if outcome.ok else f"see {outcome.log_path}",
    }


def hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """One line per cell: position, elapsed time, kind, name, outcome, time, headline, and
    an ETA from this invocation's mean time per queue (Flower runs; local work). Local work
    in workers overlaps the simulations, so then the ETA is the larger queue, not the sum."""

    def __init__(self, total: int, done: int, parallel: bool, out: Callable[[str], None]):
        self.total, self.done, self.parallel, self.out = total, done, parallel, out
        self.t0 = time.perf_counter()
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.left: dict[bool, int] = {True: 0, False: 0}

    def line(self, job: Job, status: str, wall_s: float, detail: str = "") -> None:
        self.done += 1
        self.times[job.flower].append(wall_s)
        self.left[job.flower] -= 1
        elapsed = time.perf_counter() - self.t0
        self.out(
            f"[{self.done:>4}/{self.total}] {hms(elapsed)} {job.kind:<12} {job.name:<48} "
            f"{status:<9} {wall_s:6.1f}s {detail}| ETA {self.eta()}"
        )

    def eta(self) -> str:
        """'?' until a queue with cells left has a timing; a queue without one yet (e.g.
        adaptations waiting for their federations) counts as free."""
        parts = [
            self.left[q] * sum(self.times[q]) / len(self.times[q])
            for q in (True, False)
            if self.left[q] > 0 and self.times[q]
        ]
        if not parts and any(self.left[q] > 0 for q in (True, False)):
            return "?"
        return hms((max(parts) if self.parallel else sum(parts)) if parts else 0.0)


class Timings:
    """Wall time per cell and per invocation of a study's grid, in `timings.json` next to
    its runs (reports read it back: a resumed grid sums its invocations)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = read_record(path) or {}
        self.cells: dict[str, float] = data.get("cells", {})
        self.invocations: list[dict[str, Any]] = data.get("invocations", [])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"cells": self.cells, "invocations": self.invocations})

    def ran(self) -> list[dict[str, Any]]:
        """The invocations that ran cells."""
        return [i for i in self.invocations if i.get("ran", 0) > 0]

    def cpus(self) -> list[int]:
        """The CPU counts of the machines that ran cells."""
        return sorted({i["cpus"] for i in self.ran() if i.get("cpus")})


def run_jobs(
    study: str,
    jobs: list[Job],
    *,
    total: int,
    results_dir: Path,
    engine: SimulationEngine | None = None,
    workers: int = 0,
    cpus_per_client: float = 1,
    out: Callable[[str], None] = print,
) -> GridRun:
    """Run `jobs`, the unfinished ones of a grid of `total` cells; returns the counts."""
    t0 = time.perf_counter()
    run = GridRun(skipped=total - len(jobs))
    out(
        f"{study}: {total} cells, {run.skipped} done earlier (skipped), {len(jobs)} to run; "
        f"results under {results_dir}"
    )
    if not jobs:
        return run
    progress = Progress(total, run.skipped, workers > 0, out)
    for job in jobs:
        progress.left[job.flower] += 1
    timings = Timings(results_dir / "timings.json")
    # The machine may be shared: the 1-minute load average after each cell says how
    # contended the timings were. Recorded as it goes, so a killed invocation leaves its time.
    load = [os.getloadavg()[0]]
    entry: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "skipped": run.skipped,
        "cpus": os.cpu_count(),
        "finished": False,
    }
    timings.invocations.append(entry)

    def record() -> None:
        run.wall_s = time.perf_counter() - t0
        entry.update(
            wall_s=round(run.wall_s, 1),
            ran=run.ran,
            failed=len(run.failed),
            mean_load=round(sum(load) / len(load), 2),
        )
        timings.save()

    names = {j.name for j in jobs}
    waiting = [j for j in jobs if j.after in names]
    flower_queue: deque[Job] = deque()
    futures: dict[cf.Future, Job] = {}
    pool = (
        cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
        )
        if workers > 0 and any(not j.flower for j in jobs)
        else None
    )

    def finish(job: Job, result: Result, wall_s: float) -> None:
        status = str(result.get("status", "failed"))
        wall_s = float(result.get("wall_s", wall_s))
        run.ran += 1
        run.walls[job.name] = wall_s
        load.append(os.getloadavg()[0])
        timings.cells[job.name] = round(wall_s, 3)
        error = str(result.get("error") or "")
        if status == "failed":
            run.failed.append(job.name)
        detail = f"{error[:80]} " if error else (job.detail() if job.detail else "")
        progress.line(job, status, wall_s, detail)
        record()
        for follower in [j for j in waiting if j.after == job.name]:
            waiting.remove(follower)
            if status == "failed":
                finish(follower, {"status": "failed", "error": f"{job.name} failed"}, 0.0)
            else:
                start(follower)

    def start(job: Job) -> None:
        if job.flower:
            flower_queue.append(job)
        elif pool is not None:
            futures[pool.submit(job.work, *job.args)] = job
        else:
            t = time.perf_counter()
            finish(job, _attempt(job.work, job.args), time.perf_counter() - t)

    def collect(block: bool) -> None:
        done = cf.wait(
            futures,
            return_when=cf.FIRST_COMPLETED if block else cf.ALL_COMPLETED,
            timeout=None if block else 0,
        ).done
        for fut in done:
            job = futures.pop(fut)
            try:
                result = fut.result()
            except Exception as err:  # a crashed worker fails its cell, not the grid
                result = {"status": "failed", "wall_s": 0.0, "error": _error(err)}
            finish(job, result, 0.0)

    record()
    own = engine is None and any(j.flower for j in jobs)
    try:
        for job in [j for j in jobs if j not in waiting and not j.flower]:
            start(job)
        flower_queue.extend(j for j in jobs if j not in waiting and j.flower)
        if own:
            engine = SimulationEngine(cpus_per_client=cpus_per_client).__enter__()
        while flower_queue or futures:
            if flower_queue:
                job = flower_queue.popleft()
                t = time.perf_counter()
                finish(job, _attempt(job.work, (engine, *job.args)), time.perf_counter() - t)
            collect(block=not flower_queue)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if own and engine is not None:
            engine.__exit__(None, None, None)
        entry["finished"] = True
        record()
    return run


def _attempt(work: Callable[..., Result], args: tuple[Any, ...]) -> Result:
    """Run one cell's work here; an error fails the cell (traceback on stderr), not the grid."""
    try:
        return work(*args)
    except Exception as err:
        traceback.print_exc()
        return {"status": "failed", "error": _error(err)}


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _die_with_parent() -> None:
    """Worker initializer: a worker whose grid process is killed outright (SIGKILL runs no
    cleanup) ends too instead of computing for nobody (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
