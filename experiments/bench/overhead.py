"""Section 1: Flower's overhead over the physical limit.

The default `make run` config goes through Flower's Simulation Engine (2 actors, as
`make run` does, and 1 actor, which is serial like the bare loop) and through `run_bare`
(the same clients, data, seeds and `local_round`, in a plain loop). From the streamed log
(every line time-stamped), metrics.jsonl (`seconds`, `train_seconds` per round) and an
instrumented bare loop it splits a run into fixed start-up, client compute, ClientApp
bookkeeping, aggregation and Flower dispatch. A probe app with a trivial ClientApp measures
Flower's own cost per call and per message wave, and every simulation knob is tried.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.runs import REPO, stage_app
from experiments.bench.flower import AppRun, BenchEngine, run_fedmtl, run_probe
from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target, median

TARGET_RATIO = 1.5


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


def clientapp_profile(overrides: dict[str, Any], rounds: int = 3) -> dict[str, Any]:
    """Per train message, what the ClientApp does besides `local_round` (config parse, data
    lookup, model build, private-state restore and save, reply records), by calling the same
    functions its handler calls with a plain `Context`; no Flower transport involved."""
    from flwr.app import Context, RecordDict

    import client.app as capp
    from common.algorithms import get_algorithm
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model

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


# --- the simulation knobs ---


def knob_runs(mini: dict[str, Any]) -> list[tuple[str, dict[str, Any], float, dict[str, Any]]]:
    """Each knob tried on the mini config: (tag, run-config overrides, CPUs per client,
    federation options). The report describes the knobs from this same list."""
    return [
        (
            "eval-every",
            {"eval-every": parse_run_config(mini).num_server_rounds, "fraction-evaluate": 0.0},
            1,
            {},
        ),
        ("4-actors", {}, 1, {"init-args-num-cpus": 4}),
    ]


# --- a Flower run, taken apart ---


def breakdown(run: AppRun) -> dict[str, Any]:
    """Where the wall time of one run went, from its time-stamped log and metrics.jsonl."""
    sub, rows = run.sub, run.rounds
    secs = [float(r["seconds"]) for r in rows]
    train = [float(r["train_seconds"]) for r in rows]
    marks = sub.round_marks()
    t_server = sub.first(r"fedmtl \| run '") or 0.0
    last = max(marks) if marks else 0
    warm = secs[1:] or secs
    return {
        "ok": run.ok,
        "status": sub.status,
        "federation": run.federation,
        "wall_s": sub.wall_s,
        "rounds": len(rows),
        "round_seconds": secs,
        "train_seconds": train,
        "submit_to_serverapp_s": t_server,
        "round1_s": secs[0] if secs else float("nan"),
        "warm_round_median_s": median(warm),
        "warm_train_median_s": median(train[1:] or train),
        "warm_rounds_sum_s": sum(warm),
        "serverapp_outside_rounds_s": (marks.get(last, t_server) - t_server) - sum(secs),
        "last_round_to_exit_s": sub.wall_s - marks.get(last, sub.wall_s),
    }


def _flower(
    engine: BenchEngine,
    ctx: BenchContext,
    overrides: dict[str, Any],
    tag: str,
    cpus: float,
    app_dir: Path | None = None,
    **extra: Any,
) -> dict[str, Any]:
    ctx.log(f"overhead: flower run '{tag}' (cpus/client {cpus}, {extra or 'no extra options'})")
    run = run_fedmtl(
        engine,
        {**overrides, "run-name": f"bench-{tag}"},
        ctx.section_dir("overhead"),
        cpus_per_client=cpus,
        federation_extra=extra,
        app_dir=app_dir,
    )
    if not run.ok:
        raise RuntimeError(f"flower run '{tag}' failed ({run.sub.status}); see {run.results_dir}")
    out = breakdown(run)
    ctx.log(
        f"overhead: '{tag}' wall {out['wall_s']:.1f}s, round 1 {out['round1_s']:.1f}s, "
        f"warm round {out['warm_round_median_s']:.2f}s"
    )
    return out


def _range(pair: list[float]) -> str:
    return f"{pair[0]:.2f}–{pair[1]:.2f}×"


def per_round_table(
    flower: dict[str, Any],
    bares: list[dict[str, Any]],
    app: dict[str, Any],
    aggregation_s: float,
    clients: int,
) -> dict[str, float]:
    """A warm round (medians), split: client compute (the bare loop's local_round and
    evaluate, serial), ClientApp bookkeeping (in-process profile × messages), aggregation,
    and Flower dispatch = the Flower round minus those."""
    warm = [r for bare in bares for r in (bare["rounds"][1:] or bare["rounds"])]
    compute = median([r["train_compute"] + r["eval_compute"] for r in warm])
    evaluated = any(
        s > t + 1e-9 for s, t in zip(flower["round_seconds"], flower["train_seconds"], strict=True)
    )
    bookkeeping = app["warm_overhead_s"] * clients + (
        app["warm_open_session_s"] * clients if evaluated else 0.0
    )
    flower_round = flower["warm_round_median_s"]
    return {
        "flower_round_s": flower_round,
        "bare_round_s": median([r["seconds"] for r in warm]),
        "client_compute_s": compute,
        "clientapp_bookkeeping_s": bookkeeping,
        "aggregation_s": aggregation_s,
        "dispatch_s": flower_round - compute - bookkeeping - aggregation_s,
    }


# --- the probe: Flower alone ---


def probes(engine: BenchEngine, ctx: BenchContext) -> dict[str, Any]:
    """Per-call and per-wave cost with a trivial ClientApp, actors and federation size."""
    d = ctx.section_dir("overhead") / "probe"
    quick = ctx.quick
    rep = 2 if quick else 5
    wide = 12 if quick else 200  # a wave this wide resolves a per-call cost under 0.1 s ticks
    out: dict[str, Any] = {}
    for tag, cpus, extra in (
        ("2-actors", 1, {}),
        ("1-actor", 2, {}),
        ("4-actors", 1, {"init-args-num-cpus": 4}),
        ("quiet-ray", 1, {"init-args-log-to-driver": False, "init-args-logging-level": "ERROR"}),
    ):
        if quick and tag in ("4-actors", "quiet-ray"):
            continue
        ctx.log(f"overhead: probe '{tag}' ({wide} nodes)")
        out[tag] = run_probe(
            engine,
            d,
            nodes=wide,
            waves=[1, 2, wide],
            repeats=rep,
            cpus_per_client=cpus,
            federation_extra=extra,
            tag=tag,
        )
    sizes = [100] if quick else [1000]  # the 200-node probes above are the smaller federation
    for n in sizes:
        waves = [10] if n < 1000 else [10, 50, 100, 200]
        ctx.log(f"overhead: probe federation of {n} nodes, waves {waves}")
        out[f"nodes-{n}"] = run_probe(
            engine, d, nodes=n, waves=waves, repeats=2 if n >= 1000 else rep, tag=f"nodes-{n}"
        )
    return out


def summarize_probe(p: dict[str, Any]) -> dict[str, Any]:
    """Median seconds per wave size, and the marginal cost per call (big wave vs 1)."""
    by_k: dict[int, list[float]] = {}
    for w in p["waves"]:
        by_k.setdefault(int(w["k"]), []).append(float(w["seconds"]))
    med = {k: median(v) for k, v in sorted(by_k.items())}
    ks = sorted(med)
    per_call = (med[ks[-1]] - med[ks[0]]) / (ks[-1] - ks[0]) if len(ks) > 1 else float("nan")
    return {
        "nodes": p["nodes"],
        "wave_median_s": {str(k): v for k, v in med.items()},
        "per_call_s": per_call,
        "cold_wave_s": p["cold"]["seconds"],
        "actors": max(int(w["actors"]) for w in p["waves"]),
        "submit_to_serverapp_s": p["submit_to_serverapp_s"],
        "serverapp_end_to_exit_s": p["serverapp_end_to_exit_s"],
        "wall_s": p["wall_s"],
        "federation": p["federation"],
    }


# --- the section ---


def run(ctx: BenchContext) -> dict[str, Any]:
    t_section = time.perf_counter()
    if ctx.quick:
        default: dict[str, Any] = {
            "num-server-rounds": 3,
            "samples-per-client": 120,
            "num-clients": 3,
        }
    else:
        default = {}  # exactly `make run`: the pyproject defaults
    cfg = parse_run_config(default)
    mini = {**default, "num-server-rounds": 2 if ctx.quick else 4}

    ctx.log("overhead: bare loop (fresh interpreter)")
    bares = [bare_subprocess(default)]
    ctx.log(f"overhead: bare wall {bares[0]['process_wall_s']:.1f}s")
    app = clientapp_profile(default, rounds=2 if ctx.quick else 3)
    ctx.log("overhead: FAB build, repository vs slim app directory")
    fab = fab_build_cost(ctx.section_dir("overhead") / "slim-app-fab")
    agg = aggregation_cost(default)

    t = time.perf_counter()
    with BenchEngine() as engine:
        engine_start = time.perf_counter() - t
        # Bare, Flower, bare, Flower, bare: the load from other processes drifts over
        # minutes, so each Flower run is compared with the two bare runs around it.
        flower: dict[str, dict[str, Any]] = {}
        for tag, cpus in (("2-actors", 1), ("1-actor", 2)):
            flower[tag] = _flower(engine, ctx, default, f"default-{tag.replace('-', '')}", cpus)
            ctx.log("overhead: bare loop again")
            bares.append(bare_subprocess(default))
            ctx.log(f"overhead: bare wall {bares[-1]['process_wall_s']:.1f}s")
        knobs = {"baseline": _flower(engine, ctx, mini, "mini-baseline", 1)}
        for tag, over, cpus, extra in knob_runs(mini):
            knobs[tag] = _flower(engine, ctx, {**mini, **over}, f"mini-{tag}", cpus, **extra)
        # Not a Flower knob but a large fixed cost found: the FAB is built by walking the
        # whole app directory. The engine submits a slim copy (`stage_app`); the same mini
        # run submitted from the repository directory shows what that saves:
        knobs["repo-dir"] = _flower(engine, ctx, mini, "mini-repo-dir", 1, app_dir=REPO)
        probe_raw = probes(engine, ctx)
        t = time.perf_counter()
    engine_stop = time.perf_counter() - t

    # `make run` = SuperLink start + the run + SuperLink stop.
    make_run = engine_start + flower["2-actors"]["wall_s"] + engine_stop
    brackets = {"2-actors": bares[0:2], "1-actor": bares[1:3]}
    ratios: dict[str, Any] = {}
    for tag, f in flower.items():
        total = engine_start + f["wall_s"] + engine_stop
        walls = [b["process_wall_s"] for b in brackets[tag]]
        warms = [sum(r["seconds"] for r in b["rounds"][1:]) for b in brackets[tag]]
        ratios[tag] = {
            "including_startup": total / statistics.mean(walls),
            "including_startup_range": [total / max(walls), total / min(walls)],
            "excluding_startup": f["warm_rounds_sum_s"] / statistics.mean(warms),
            "excluding_startup_range": [
                f["warm_rounds_sum_s"] / max(warms),
                f["warm_rounds_sum_s"] / min(warms),
            ],
            "bare_wall_s": statistics.mean(walls),
            "bare_warm_rounds_s": statistics.mean(warms),
            "fixed_startup_s": total - f["warm_round_median_s"] * f["rounds"],
        }
    table = {
        tag: per_round_table(f, brackets[tag], app, agg, cfg.num_clients)
        for tag, f in flower.items()
    }
    bare = min(bares, key=lambda b: b["process_wall_s"])
    probe = {k: summarize_probe(v) for k, v in probe_raw.items()}
    targets = [
        Target(
            "Flower / bare wall time, `make run` config, including start-up",
            ratios["2-actors"]["including_startup"],
            TARGET_RATIO,
            note=f"{make_run:.1f}s vs {ratios['2-actors']['bare_wall_s']:.1f}s (bare runs before "
            f"and after; range {_range(ratios['2-actors']['including_startup_range'])})",
        ),
        Target(
            "Flower / bare wall time, excluding fixed start-up (rounds 2..N)",
            ratios["2-actors"]["excluding_startup"],
            TARGET_RATIO,
            note=f"{flower['2-actors']['warm_rounds_sum_s']:.1f}s vs "
            f"{ratios['2-actors']['bare_warm_rounds_s']:.1f}s (range "
            f"{_range(ratios['2-actors']['excluding_startup_range'])})",
        ),
    ]
    return {
        "section": "overhead",
        "config": {
            "overrides": default,
            "resolved_clients": cfg.num_clients,
            "rounds": cfg.num_server_rounds,
            "mini": mini,
        },
        "engine_start_s": engine_start,
        "engine_stop_s": engine_stop,
        "make_run_s": make_run,
        "bare": bare,
        "bare_walls_s": [b["process_wall_s"] for b in bares],
        "clientapp": app,
        "aggregation_s": agg,
        "fab_build": fab,
        "flower": flower,
        "ratios": ratios,
        "per_round": table,
        "knobs": knobs,
        "probe": probe,
        "targets": [t.as_dict() for t in targets],
        "seconds": time.perf_counter() - t_section,
        "leftover_processes": len(getattr(engine, "leftovers", [])),
    }


def _main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "--bare-profile":
        import torch

        torch.set_num_threads(1)
        print(json.dumps(bare_profile(json.loads(argv[1]))))
        return
    raise SystemExit("usage: python -m experiments.bench.overhead --bare-profile '<json>'")


if __name__ == "__main__":
    _main(sys.argv[1:])
