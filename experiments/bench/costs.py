"""The costs a simulated run is split into, each measured on its own: the bare loop
(instrumented, and in a fresh interpreter), the ClientApp's own work around `local_round`,
the server's files per round, one aggregation, and building the FAB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.runs import REPO, stage_app
from experiments.bench.stats import median

# --- the bare loop, instrumented ---


def bare_profile(overrides: dict[str, Any]) -> dict[str, Any]:
    """`run_bare` with its `local_round` and `evaluate` timed, per round.

    The names are patched in `experiments.bare_loop` only (where `run_bare` looks them up),
    so the training itself is untouched."""
    import experiments.bare_loop as bl

    cfg = parse_run_config(overrides)
    calls: list[tuple[str, int, float, float]] = []
    current = {"round": 0}
    local_round, evaluate = bl.local_round, bl.evaluate

    def timed_local_round(*args: Any, **kwargs: Any) -> Any:
        rnd = int(args[4] if len(args) > 4 else kwargs["server_round"])
        current["round"] = rnd
        t = time.perf_counter()
        out = local_round(*args, **kwargs)
        calls.append(("train", rnd, t, time.perf_counter()))
        return out

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = evaluate(*args, **kwargs)
        calls.append(("eval", current["round"], t, time.perf_counter()))
        return out

    bl.local_round, bl.evaluate = timed_local_round, timed_evaluate
    t0 = time.perf_counter()
    try:
        bl.run_bare(cfg)
    finally:
        bl.local_round, bl.evaluate = local_round, evaluate
    t_end = time.perf_counter()
    rounds = []
    starts = {
        r: min(s for k, rr, s, _ in calls if rr == r and k == "train")
        for r in {c[1] for c in calls}
    }
    order = sorted(starts)
    for i, r in enumerate(order):
        end = starts[order[i + 1]] if i + 1 < len(order) else t_end
        train = [e - s for k, rr, s, e in calls if rr == r and k == "train"]
        ev = sum(e - s for k, rr, s, e in calls if rr == r and k == "eval")
        wall = end - starts[r]
        rounds.append(
            {
                "round": r,
                "seconds": wall,
                "train_compute": sum(train),
                "train_per_client": train,
                "eval_compute": ev,
                "other": wall - sum(train) - ev,  # averaging, load_state_dict, metrics
            }
        )
    return {"setup_s": starts[order[0]] - t0, "wall_s": t_end - t0, "rounds": rounds}


def bare_subprocess(overrides: dict[str, Any]) -> dict[str, Any]:
    """The instrumented bare loop in a fresh interpreter: its wall time then includes the
    interpreter, torch and data start-up, as `make run`'s does for Flower."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.bench.overhead",
            "--bare-profile",
            json.dumps(overrides),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    profile = json.loads(out.stdout.strip().splitlines()[-1])
    profile["process_wall_s"] = wall
    return profile


# --- the ClientApp's own work around local_round, in process ---


def clientapp_profile(
    overrides: dict[str, Any], rounds: int = 3, state_dir: Path | None = None
) -> dict[str, Any]:
    """Per train message, what the ClientApp does besides `local_round` (config parse, data
    lookup, model reset, private-state restore and save, reply records), by calling the same
    functions its handler calls with a plain `Context`; no Flower transport involved. With
    `state_dir` the private state is also written there every round (fsynced), as in a
    simulation."""
    from flwr.app import Context, RecordDict

    import client.app as capp
    from common.algorithms import get_algorithm
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model

    if state_dir is not None:
        overrides = {**overrides, "state-dir": str(state_dir)}
    cfg = parse_run_config(overrides)
    model = initial_model(cfg)
    arrays = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    run_config = cfg.to_dict()
    contexts = [
        Context(
            run_id=1,
            node_id=100 + cid,
            node_config={"partition-id": cid, "num-partitions": cfg.num_clients},
            state=RecordDict(),
            run_config=run_config,
        )
        for cid in range(cfg.num_clients)
    ]
    inner: list[float] = []
    local_round = capp.local_round

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = local_round(*args, **kwargs)
        inner.append(time.perf_counter() - t)
        return out

    capp.local_round = timed
    rows = []
    try:
        for rnd in range(1, rounds + 1):
            for context in contexts:
                t0 = time.perf_counter()
                session = capp.open_session(context, arrays)
                t1 = time.perf_counter()
                capp.train_session(session, rnd, 0.0)
                t2 = time.perf_counter()
                rows.append(
                    {
                        "round": rnd,
                        "open_session": t1 - t0,
                        "total": t2 - t0,
                        "local_round": inner[-1],
                    }
                )
    finally:
        capp.local_round = local_round
    warm = [r for r in rows if r["round"] > 1]
    return {
        "messages": len(rows),
        "first_message_s": rows[0]["total"],
        "first_open_session_s": rows[0]["open_session"],
        "warm_total_s": median([r["total"] for r in warm]),
        "warm_local_round_s": median([r["local_round"] for r in warm]),
        "warm_open_session_s": median([r["open_session"] for r in warm]),
        "warm_overhead_s": median([r["total"] - r["local_round"] for r in warm]),
    }


def server_writes_cost(overrides: dict[str, Any], out: Path, repeats: int = 10) -> float:
    """Seconds of what the ServerApp writes every round, each file atomically and fsynced:
    the metrics line, the shared arrays and the checkpoint (the default encoder)."""
    from common.algorithms import get_algorithm
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model
    from server.checkpoint import save_checkpoint
    from server.results import RunResults
    from server.strategies import build_strategy

    cfg = parse_run_config(overrides)
    model = initial_model(cfg)
    arrays = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    strategy = build_strategy(cfg)
    results = RunResults(out, cfg.to_dict())
    clients = [str(c) for c in range(cfg.num_clients)]
    times = []
    for rnd in range(1, repeats + 1):
        t = time.perf_counter()
        results.log_round({"round": rnd, "clients": cfg.num_clients, "seconds": 0.1})
        results.save_arrays(arrays)
        save_checkpoint(
            out / "checkpoints", rnd, cfg.digest(), arrays, strategy, trained_clients=clients
        )
        times.append(time.perf_counter() - t)
    return median(times)


def aggregation_cost(overrides: dict[str, Any], repeats: int = 20) -> float:
    """Seconds of Flower's weighted average of one round's replies (the default encoder)."""
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from common.algorithms import get_algorithm
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model

    cfg = parse_run_config(overrides)
    model = initial_model(cfg)
    arrays = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    records = [
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100 + i})})
        for i in range(cfg.num_clients)
    ]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        aggregate_arrayrecords(records, "num-examples")
        times.append(time.perf_counter() - t)
    return min(times)


def fab_build_cost(slim_dir: Path, repeats: int = 2) -> dict[str, Any]:
    """What `flwr run <dir>` spends building the FAB before anything is submitted: Flower's
    `collect_files` walks every file under the directory (then filters by .gitignore), so the
    repository's .venv, .state and results are walked on every run."""
    from flwr.cli.build import build_fab_from_disk

    slim = stage_app(slim_dir)
    out: dict[str, Any] = {}
    for name, path in (("repository", REPO), ("slim", slim)):
        walked = sum(len(files) for _, _, files in os.walk(path))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            size = len(build_fab_from_disk(path))
            times.append(time.perf_counter() - t)
        out[name] = {"files_walked": walked, "fab_bytes": size, "seconds": min(times)}
    return out
