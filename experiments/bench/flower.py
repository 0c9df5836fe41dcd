"""Submitting runs to a `SimulationEngine`'s SuperLink with what the benchmark needs beyond
`SimulationEngine.run`: any `--federation-config` key (Ray backend options, not only the CPUs
per client), a timestamp on every streamed line (where the time of a run goes), the engine's
processes (the SuperLink's tree and its Ray head's) sampled for memory, and stopping a run
once the rounds to time are logged (so a scale sweep does not pay the final full evaluation
of 1000 clients each time)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.simulation import CONNECTION, SimulationEngine, client_state_dir, federation_config
from experiments.bench.sampling import TreeSampler, descendants, process_table

BENCH_DIR = Path(__file__).resolve().parent
PROBE_APP = BENCH_DIR / "probe"
PROBE_PAYLOAD = 1000  # float32 values the probe sends each way per message
ROUND_LINE = re.compile(r"fedmtl \| round\s+(\d+)/(\d+)")


@dataclass
class Submission:
    """One `flwr run --stream`: its run id, Flower's status, the wall time from submit to
    the CLI's exit, and (seconds since submit, line) for every line it printed."""

    run_id: str
    wall_s: float
    status: str
    lines: list[tuple[float, str]] = field(default_factory=list)
    stopped_early: bool = False
    peak_rss_bytes: int = 0
    peak_pss_bytes: int = 0
    memory_samples: int = 0

    def first(self, pattern: str) -> float | None:
        """Seconds since submit of the first line matching `pattern`."""
        rx = re.compile(pattern)
        return next((t for t, line in self.lines if rx.search(line)), None)

    def round_marks(self) -> dict[int, float]:
        """Round -> seconds since submit when its line was printed."""
        out: dict[int, float] = {}
        for t, line in self.lines:
            if m := ROUND_LINE.search(line):
                out.setdefault(int(m.group(1)), t)
        return out


class EngineSampler(TreeSampler):
    """A `TreeSampler` over every process an engine runs: the SuperLink's tree (the
    simulation processes) and, when the engine has a Ray head of its own, the tree of each of
    its nodes (GCS, raylet, agents and the ClientApp actors live there, not below the
    SuperLink)."""

    def __init__(self, engine: SimulationEngine, **kwargs: Any) -> None:
        assert engine.superlink is not None, "use inside `with SimulationEngine() as engine`"
        super().__init__(engine.superlink.pid, **kwargs)
        self.roots = [engine.superlink.pid, *(engine.cluster.pids() if engine.cluster else [])]

    def sample(self) -> tuple[int, int, int]:
        table = process_table()
        for root in self.roots:
            if root in table:
                self.tracked.setdefault(root, table[root][1])
            for pid in descendants(root, table):
                self.tracked.setdefault(pid, table[pid][1])
        # TreeSampler's own pass adds nothing new (its root is the SuperLink) and does the
        # rest: forgets exited processes, sums the memory, keeps the peaks.
        return super().sample()


def submit(
    engine: SimulationEngine,
    app_dir: Path,
    run_config: dict[str, Any],
    federation: str,
    log_path: Path,
    *,
    timeout: float = 1800.0,
    stop_when: Callable[[list[tuple[float, str]]], bool] | None = None,
    sample_memory: bool = False,
) -> Submission:
    """Run one app on the engine's SuperLink and wait for it (or for `stop_when`, then stop
    the run); every line of the log gets its time since submission."""
    assert engine.superlink is not None, "use inside `with SimulationEngine() as engine`"
    sampler = EngineSampler(engine) if sample_memory else None
    if sampler:
        sampler.start()
    try:
        streamed = engine.submit(
            app_dir,
            run_config,
            federation,
            log_path,
            timeout=timeout,
            stop_when=stop_when,
            timestamps=True,
        )
        if streamed.stopped:
            _stop_run(engine, streamed.run_id)
    finally:
        if sampler:
            sampler.stop()
    status = engine.status(streamed.run_id)
    sub = Submission(streamed.run_id, streamed.wall_s, status, streamed.lines, streamed.stopped)
    if sampler:
        sub.peak_rss_bytes, sub.peak_pss_bytes = sampler.peak_rss, sampler.peak_pss
        sub.memory_samples = sampler.samples
    return sub


def _stop_run(engine: SimulationEngine, run_id: str) -> None:
    """`flwr stop`, then wait until the SuperLink no longer reports the run as running: the
    next measurement must not share the CPUs with a run still training."""
    if not run_id:
        return
    subprocess.run(
        ["flwr", "stop", run_id, CONNECTION],
        env=engine.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if engine.status(run_id).startswith("finished"):
            return
        time.sleep(0.5)


def stop_after_round(rnd: int) -> Callable[[list[tuple[float, str]]], bool]:
    """A `stop_when` that fires once the line of round `rnd` is printed."""

    def done(lines: list[tuple[float, str]]) -> bool:
        m = ROUND_LINE.search(lines[-1][1]) if lines else None
        return bool(m and int(m.group(1)) >= rnd)

    return done


@dataclass
class AppRun:
    """A run of the fedmtl app: the submission plus what the ServerApp wrote."""

    name: str
    overrides: dict[str, Any]
    federation: str
    sub: Submission
    results_dir: Path
    rounds: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        done = self.summary is not None and self.summary.get("status") == "completed"
        return (done and self.sub.status.startswith("finished:completed")) or (
            self.sub.stopped_early and bool(self.rounds)
        )


def run_fedmtl(
    engine: SimulationEngine,
    overrides: dict[str, Any],
    results_root: Path,
    *,
    cpus_per_client: float = 1,
    federation_extra: dict[str, Any] | None = None,
    timeout: float = 1800.0,
    stop_when: Callable[[list[tuple[float, str]]], bool] | None = None,
    sample_memory: bool = False,
    app_dir: Path | None = None,
) -> AppRun:
    """`SimulationEngine.run` with any federation option, timestamps and memory sampling;
    `app_dir` submits another copy of the app (default: the engine's). As in `make run`, the
    clients keep their private state in the run's `client-state` dir (written every round)."""
    overrides = {**overrides, "results-dir": str(results_root.resolve())}
    cfg = parse_run_config(overrides)
    results_dir = results_root.resolve() / cfg.name
    results_dir.mkdir(parents=True, exist_ok=True)
    overrides["state-dir"] = str(client_state_dir(cfg, results_dir))
    for stale in ("summary.json", "metrics.jsonl"):
        (results_dir / stale).unlink(missing_ok=True)
    fed = federation_config(cfg.num_clients, cpus_per_client, **(federation_extra or {}))
    sub = submit(
        engine,
        app_dir or engine.app_path(),
        overrides,
        fed,
        results_dir / "bench-flower.log",
        timeout=timeout,
        stop_when=stop_when,
        sample_memory=sample_memory,
    )
    metrics = results_dir / "metrics.jsonl"
    rounds = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    summary_path = results_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return AppRun(cfg.name, overrides, fed, sub, results_dir, rounds, summary)


def run_probe(
    engine: SimulationEngine,
    out_dir: Path,
    *,
    nodes: int,
    waves: list[int],
    repeats: int,
    cpus_per_client: float = 1,
    payload: int = PROBE_PAYLOAD,
    federation_extra: dict[str, Any] | None = None,
    timeout: float = 900.0,
    tag: str = "probe",
    pull_interval: float = 0.1,
) -> dict[str, Any]:
    """Run the probe app; its timings plus the submission's (start-up, wall).
    `pull_interval`: how often its ServerApp looks for replies (Flower's default 0.1 s)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = (out_dir / f"{tag}.json").resolve()
    out.unlink(missing_ok=True)
    run_config = {
        "nodes": nodes,
        "waves": ",".join(map(str, waves)),
        "repeats": repeats,
        "payload": payload,
        "pull-interval": pull_interval,
        "out": str(out),
    }
    fed = federation_config(nodes, cpus_per_client, **(federation_extra or {}))
    submitted = time.time()
    sub = submit(engine, PROBE_APP, run_config, fed, out_dir / f"{tag}.log", timeout=timeout)
    if not out.exists():
        raise RuntimeError(f"probe '{tag}' wrote no result ({sub.status}); see {out_dir}")
    result = json.loads(out.read_text())
    result.update(
        tag=tag,
        federation=fed,
        pull_interval=pull_interval,
        wall_s=sub.wall_s,
        status=sub.status,
        submit_to_serverapp_s=result["server_started_unix"] - submitted,
        serverapp_end_to_exit_s=sub.wall_s - (result["finished_unix"] - submitted),
    )
    return result


class BenchEngine(SimulationEngine):
    """A `SimulationEngine` that also keeps track of every process it runs (`EngineSampler`)
    and, on exit, ends those that outlived it (Ray workers re-parented to init would otherwise
    keep CPU and memory that the next measurement needs)."""

    def __enter__(self) -> BenchEngine:
        super().__enter__()
        self.tracker = EngineSampler(self, interval=1.0, measure=False).start()
        return self

    def __exit__(self, *exc: object) -> None:
        tracker = getattr(self, "tracker", None)
        super().__exit__(*exc)
        if tracker is not None:
            tracker.stop()
            self.leftovers = tracker.kill_leftovers()
