"""Section 1: Flower's overhead over the physical limit.

Two workloads, each against the same training in a plain in-process loop (`run_bare`: the same
clients, data, seeds and `local_round`, FedAvg of the shared arrays, in a fresh interpreter):
the default `make run` config, and a PFLlib-style federation (10 clients, lr 0.01, 1 local
epoch, batch 10, 200 rounds, evaluation at the end only) whose rounds are short, so Flower's
fixed costs weigh most. Each is measured cold (a fresh engine: SuperLink and Ray head started,
one run, stopped: what `make run` and `fedmtl-run` cost) and warm (a run on an engine whose
SuperLink and Ray head are already up: what every run of a study after its first costs); the
`make run` config also with Ray started by Flower inside the run (`ray="per-run"`, what every
run cost before the engine kept a head), so the difference is what the warm head saves per
run. From the streamed log (every line time-stamped), metrics.jsonl and an instrumented bare
loop it splits a run into fixed start-up, client compute, ClientApp bookkeeping, aggregation
and Flower dispatch. A probe app with a trivial ClientApp measures Flower's own cost per call
and per message wave, with its grid pulling every 0.1 s (Flower's default) and every 0.01 s
(fedmtl's `grid-pull-interval`): what remains is Flower's fixed wait per wave, and every
simulation knob is tried.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from deploy.runs import REPO
from deploy.simulation import NEW_INSTANCE_ONLY
from experiments.bench.costs import (
    aggregation_cost,
    bare_profile,
    bare_subprocess,
    clientapp_profile,
    fab_build_cost,
    server_writes_cost,
)
from experiments.bench.flower import AppRun, BenchEngine, run_fedmtl, run_probe
from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target, median

TARGET_RATIO = 1.2  # `make run` config, Flower / bare loop, start-up included
PFL_TARGET_RATIO = 2.5  # PFLlib-style workload, fedmtl / plain loop, whole run
# PFLlib's recipe for a digits federation: 10 clients, lr 0.01, 1 local epoch, batch 10, 200
# rounds, evaluated at the end only.
PFL: dict[str, Any] = {
    "num-clients": 10,
    "lr": 0.01,
    "local-epochs": 1,
    "batch-size": 10,
    "num-server-rounds": 200,
    "eval-every": 200,
}
PFL_QUICK: dict[str, Any] = {**PFL, "num-clients": 3, "samples-per-client": 120}
PFL_QUICK |= {"num-server-rounds": 6, "eval-every": 6}
FLOWER_PULL_S = 0.1  # InMemoryGrid's default pull interval (`report.FLOWER_FACTS` reads it)


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
        ("pull-0.1", {"grid-pull-interval": FLOWER_PULL_S}, 1, {}),
        ("4-actors", {}, 1, {"init-args-num-cpus": 4}),  # sizes Ray: a per-run engine
    ]


# --- a Flower run, taken apart ---


def breakdown(run: AppRun) -> dict[str, Any]:
    """Where the wall time of one run went, from its time-stamped log and metrics.jsonl."""
    sub, rows = run.sub, run.rounds
    secs = [float(r["seconds"]) for r in rows]
    train = [float(r["train_seconds"]) for r in rows]
    marks = sub.round_marks()
    t_server = sub.first(r"fedmtl \| run '") or 0.0
    t_sim = sub.first(r"Starting Flower Simulation") or 0.0
    last = max(marks) if marks else 0
    warm = secs[1:] or secs
    return {
        "ok": run.ok,
        "status": sub.status,
        "federation": run.federation,
        "wall_s": sub.wall_s,
        "submit_to_simulation_s": t_sim,
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
    server_writes_s: float = 0.0,
) -> dict[str, float]:
    """A warm round (medians), split: client compute (the bare loop's local_round and
    evaluate, serial), ClientApp bookkeeping (in-process profile × messages, its private
    state written to disk included), aggregation, the server's per-round files, and Flower
    dispatch = the Flower round minus those."""
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
        "server_writes_s": server_writes_s,
        "dispatch_s": flower_round - compute - bookkeeping - aggregation_s - server_writes_s,
    }


# --- the probe: Flower alone ---


PROBES: tuple[tuple[str, float, dict[str, Any], float], ...] = (
    # (tag, CPUs per client, federation options, grid pull interval s)
    ("2-actors", 1, {}, FLOWER_PULL_S),
    ("2-actors-pull-0.01", 1, {}, 0.01),
    ("1-actor", 2, {}, FLOWER_PULL_S),
    ("quiet-ray", 1, {"init-args-log-to-driver": False, "init-args-logging-level": "ERROR"}, 0.1),
)


def probes(engine: BenchEngine, ctx: BenchContext, per_run: BenchEngine) -> dict[str, Any]:
    """Per-call and per-wave cost with a trivial ClientApp, actors, the grid's pull interval
    and federation size; `per_run` (an engine whose runs start Ray themselves) takes what
    sizes Ray (`init-args-num-cpus`)."""
    d = ctx.section_dir("overhead") / "probe"
    quick = ctx.quick
    rep = 2 if quick else 5
    wide = 12 if quick else 200  # a wave this wide resolves a per-call cost under 0.1 s ticks
    out: dict[str, Any] = {}
    runs = [(engine, *p) for p in PROBES if not (quick and p[0] == "quiet-ray")]
    if not quick:
        runs.append((per_run, "4-actors", 1, {"init-args-num-cpus": 4}, FLOWER_PULL_S))
    for eng, tag, cpus, extra, pull in runs:
        ctx.log(f"overhead: probe '{tag}' ({wide} nodes)")
        out[tag] = run_probe(
            eng,
            d,
            nodes=wide,
            waves=[1, 2, wide],
            repeats=rep,
            cpus_per_client=cpus,
            federation_extra=extra,
            tag=tag,
            pull_interval=pull,
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
        "pull_interval_s": p.get("pull_interval", FLOWER_PULL_S),
    }


# --- the PFLlib-style workload ---


def pfl_workload(ctx: BenchContext) -> dict[str, Any]:
    """PFLlib's recipe (`PFL`): the plain in-process loop (fresh interpreter) before and
    after fedmtl cold (a fresh engine: start + run + stop, as `fedmtl-run`) and warm (a
    second run on that engine)."""
    over = PFL_QUICK if ctx.quick else PFL
    ctx.log(f"overhead: PFLlib-style workload {over}: plain loop")
    bares = [bare_subprocess(over)]
    t = time.perf_counter()
    with BenchEngine() as engine:
        start = time.perf_counter() - t
        cold = _flower(engine, ctx, over, "pfl-cold", 1)
        warm = _flower(engine, ctx, over, "pfl-warm", 1)
        t = time.perf_counter()
    stop = time.perf_counter() - t
    bares.append(bare_subprocess(over))
    walls = [b["process_wall_s"] for b in bares]
    bare_wall = statistics.mean(walls)
    cold_total = start + cold["wall_s"] + stop
    return {
        "overrides": over,
        "bare_walls_s": walls,
        "bare_round_median_s": median([r["seconds"] for b in bares for r in b["rounds"][1:]]),
        "engine_start_s": start,
        "engine_stop_s": stop,
        "cold": cold,
        "warm": warm,
        "cold_total_s": cold_total,
        "cold_ratio": cold_total / bare_wall,
        "cold_ratio_range": [cold_total / max(walls), cold_total / min(walls)],
        "warm_ratio": warm["wall_s"] / bare_wall,
        "warm_ratio_range": [warm["wall_s"] / max(walls), warm["wall_s"] / min(walls)],
    }


def startup_split(f: dict[str, Any]) -> dict[str, float]:
    """Where a run's time outside its warm rounds goes, from its time-stamped log: submit →
    simulation process (CLI, FAB, SuperExec poll, process start), → ServerApp (imports, Ray
    start when Flower starts it, actors created), round 1 beyond a warm round (actors import
    torch and the ClientApp, build their data), and after the last round (summary, plots,
    Ray disconnect, CLI exit)."""
    round1_extra = f["round1_s"] - f["warm_round_median_s"]
    outside = f["serverapp_outside_rounds_s"]
    return {
        "submit_to_simulation_s": f["submit_to_simulation_s"],
        "simulation_to_serverapp_s": f["submit_to_serverapp_s"] - f["submit_to_simulation_s"],
        "round1_extra_s": round1_extra,
        "serverapp_outside_rounds_s": outside,
        "last_round_to_exit_s": f["last_round_to_exit_s"],
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
    scratch = ctx.section_dir("overhead") / "scratch"
    app = clientapp_profile(default, rounds=2 if ctx.quick else 3, state_dir=scratch / "state")
    ctx.log("overhead: FAB build, repository vs slim app directory")
    fab = fab_build_cost(ctx.section_dir("overhead") / "slim-app-fab")
    agg = aggregation_cost(default)
    writes = server_writes_cost(default, scratch / "server")

    # Bare, Flower, bare, Flower, bare: the load from other processes drifts over minutes,
    # so each Flower run is compared with the two bare runs around it.
    flower: dict[str, dict[str, Any]] = {}
    t = time.perf_counter()
    engine = BenchEngine().__enter__()  # SuperLink and Ray head, started side by side
    engine_start = time.perf_counter() - t
    with BenchEngine(ray="per-run") as per_run:
        try:
            flower["cold"] = _flower(engine, ctx, default, "default-cold", 1)
            flower["warm"] = _flower(engine, ctx, default, "default-warm", 1)
            ctx.log("overhead: bare loop again")
            bares.append(bare_subprocess(default))
            flower["1-actor"] = _flower(engine, ctx, default, "default-1actor", 2)
            flower["per-run-ray"] = _flower(per_run, ctx, default, "default-per-run", 1)
            ctx.log("overhead: bare loop again")
            bares.append(bare_subprocess(default))
            knobs = {"baseline": _flower(engine, ctx, mini, "mini-baseline", 1)}
            for tag, over, cpus, extra in knob_runs(mini):
                eng = per_run if any(k in NEW_INSTANCE_ONLY for k in extra) else engine
                knobs[tag] = _flower(eng, ctx, {**mini, **over}, f"mini-{tag}", cpus, **extra)
            # Not a Flower knob but a large fixed cost found: the FAB is built by walking the
            # whole app directory. The engine submits a slim copy (`stage_app`); the same mini
            # run submitted from the repository directory shows what that saves:
            knobs["repo-dir"] = _flower(engine, ctx, mini, "mini-repo-dir", 1, app_dir=REPO)
            probe_raw = probes(engine, ctx, per_run)
        finally:
            t = time.perf_counter()
            engine.__exit__(None, None, None)
            engine_stop = time.perf_counter() - t
    pfl = pfl_workload(ctx)

    # `make run` = engine start (SuperLink and Ray head side by side) + the run + engine stop.
    make_run = engine_start + flower["cold"]["wall_s"] + engine_stop
    brackets = {
        "cold": bares[0:2],
        "warm": bares[0:2],
        "1-actor": bares[1:3],
        "per-run-ray": bares[1:3],
    }
    ratios: dict[str, Any] = {}
    for tag, f in flower.items():
        # Only the cold run pays the engine's start and stop; the others find it up.
        total = f["wall_s"] + (engine_start + engine_stop if tag == "cold" else 0.0)
        walls = [b["process_wall_s"] for b in brackets[tag]]
        warms = [sum(r["seconds"] for r in b["rounds"][1:]) for b in brackets[tag]]
        ratios[tag] = {
            "total_s": total,
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
        tag: per_round_table(f, brackets[tag], app, agg, cfg.num_clients, writes)
        for tag, f in flower.items()
    }
    bare = min(bares, key=lambda b: b["process_wall_s"])
    probe = {k: summarize_probe(v) for k, v in probe_raw.items()}
    ray_saving = flower["per-run-ray"]["wall_s"] - flower["warm"]["wall_s"]
    targets = [
        Target(
            "Flower / bare wall time, `make run` config, cold (fresh engine: start-up included)",
            ratios["cold"]["including_startup"],
            TARGET_RATIO,
            note=f"{make_run:.1f}s vs {ratios['cold']['bare_wall_s']:.1f}s (bare runs before "
            f"and after; range {_range(ratios['cold']['including_startup_range'])})",
        ),
        Target(
            "Flower / bare wall time, `make run` config, warm (engine and Ray head up)",
            ratios["warm"]["including_startup"],
            TARGET_RATIO,
            note=f"{flower['warm']['wall_s']:.1f}s vs {ratios['warm']['bare_wall_s']:.1f}s "
            f"(range {_range(ratios['warm']['including_startup_range'])}); Ray per run: "
            f"{ratios['per-run-ray']['including_startup']:.2f}×",
        ),
        Target(
            "Flower / bare wall time, excluding fixed start-up (rounds 2..N, warm)",
            ratios["warm"]["excluding_startup"],
            TARGET_RATIO,
            note=f"{flower['warm']['warm_rounds_sum_s']:.1f}s vs "
            f"{ratios['warm']['bare_warm_rounds_s']:.1f}s (range "
            f"{_range(ratios['warm']['excluding_startup_range'])})",
        ),
        Target(
            f"fedmtl / plain loop, PFLlib-style workload ({pfl['overrides']['num-clients']} "
            f"clients, {pfl['overrides']['num-server-rounds']} rounds), cold (`fedmtl-run`)",
            pfl["cold_ratio"],
            PFL_TARGET_RATIO,
            note=f"{pfl['cold_total_s']:.1f}s vs {statistics.mean(pfl['bare_walls_s']):.1f}s "
            f"(range {_range(pfl['cold_ratio_range'])})",
        ),
        Target(
            "fedmtl / plain loop, PFLlib-style workload, warm (engine and Ray head up)",
            pfl["warm_ratio"],
            PFL_TARGET_RATIO,
            note=f"{pfl['warm']['wall_s']:.1f}s (range {_range(pfl['warm_ratio_range'])})",
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
        "ray_head_saving_s": ray_saving,
        "startup": {tag: startup_split(f) for tag, f in flower.items()},
        "bare": bare,
        "bare_walls_s": [b["process_wall_s"] for b in bares],
        "clientapp": app,
        "aggregation_s": agg,
        "server_writes_s": writes,
        "fab_build": fab,
        "flower": flower,
        "ratios": ratios,
        "per_round": table,
        "knobs": knobs,
        "probe": probe,
        "pfl": pfl,
        "targets": [t.as_dict() for t in targets],
        "seconds": time.perf_counter() - t_section,
        "leftover_processes": len(getattr(engine, "leftovers", []))
        + len(getattr(per_run, "leftovers", [])),
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
