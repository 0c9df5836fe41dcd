"""Section 4: communication, as measured on the messages (`bytes_up` / `bytes_down` in
metrics.jsonl, counted by `server.metered_grid.MeteredGrid`: the array payload of every
message, .npy headers included).

Algorithms: fedper, fedavg (heads travel too), ditto, partial sharing (`shared-layers=1`),
per client and training round, against the encoder's parameter count × 4 B. Compression:
`none`, `fp16`, `int8` on MultiDigits, 3 seeds, equal rounds: bytes up and the final mean
test accuracy over the classification tasks.

Evaluation is switched off in every round but the last (`fraction-evaluate=0`, `eval-every`
= the round count), set explicitly: with `fraction-evaluate` above 0, a sampled evaluation
would run every round whatever `eval-every` says, and its messages would mix into the byte
counts.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common.config import parse_run_config
from experiments.bench.flower import AppRun, BenchEngine, run_fedmtl
from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target
from experiments.kit.scores import mean_classification_accuracy

BYTES_RATIO_TARGET = 3.5
ACCURACY_DROP_TARGET = 0.5  # points
ALGORITHMS: dict[str, dict[str, Any]] = {
    "fedper": {"algorithm": "fedper"},
    "fedavg": {"algorithm": "fedavg"},
    "ditto": {"algorithm": "ditto"},
    "partial (shared-layers=1)": {"algorithm": "fedper", "shared-layers": 1},
}
CLASSIFICATION = ("left", "right", "parity", "equal")
# Runs go one at a time: two identical apps submitted together race in Flower's FAB install
# (both write the same apps/<hash> directory; one run then finds no pyproject.toml).
PARALLEL = 1


def shared_parameters(overrides: dict[str, Any]) -> int:
    """The encoder parameters that travel under the config (what the server holds)."""
    from common.algorithms import get_algorithm
    from common.models import count_parameters
    from common.records import model_shared_keys
    from server.app import initial_model

    cfg = parse_run_config(overrides)
    model = initial_model(cfg)
    keys = model_shared_keys(model, get_algorithm(cfg.algorithm), cfg.shared_layers)
    return count_parameters(model, keys)


def per_client_bytes(run: AppRun) -> dict[str, float]:
    """Bytes per client in the training-only rounds (all but the last, which evaluates);
    the first round is left out too when others exist: under fedavg the server has no
    heads to send before the first replies."""
    rows = run.rounds[:-1] or run.rounds
    steady = rows[1:] or rows
    up = [r["bytes_up"] / max(r["clients"], 1) for r in steady]
    down = [r["bytes_down"] / max(r["clients"], 1) for r in steady]
    return {"up": statistics.mean(up), "down": statistics.mean(down), "rounds": len(steady)}


def _base(ctx: BenchContext, rounds: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "num-server-rounds": rounds,
        "eval-every": rounds,
        "fraction-evaluate": 0.0,
    }
    if ctx.quick:
        base |= {"num-clients": 3, "samples-per-client": 120, "local-epochs": 1}
    return base


def _run(engine: BenchEngine, ctx: BenchContext, overrides: dict[str, Any], tag: str) -> AppRun:
    ctx.log(f"communication: {tag}")
    run = run_fedmtl(
        engine, {**overrides, "run-name": f"bench-comm-{tag}"}, ctx.section_dir("communication")
    )
    if not run.ok:
        raise RuntimeError(f"run '{tag}' failed ({run.sub.status}); see {run.results_dir}")
    return run


def run(ctx: BenchContext) -> dict[str, Any]:
    t0 = time.perf_counter()
    seeds = [0] if ctx.quick else [0, 1, 2]
    comp_rounds = 2 if ctx.quick else 10
    algo_rounds = 2 if ctx.quick else 3
    algorithms: dict[str, Any] = {}
    compression: dict[str, dict[str, Any]] = {m: {"runs": []} for m in ("none", "fp16", "int8")}
    jobs: list[tuple[str, dict[str, Any]]] = [
        (f"{method}-s{seed}", {**_base(ctx, comp_rounds), "seed": seed, "compression": method})
        for seed in seeds
        for method in compression
    ]
    algo_tags = {}
    for name, over in ALGORITHMS.items():
        if name == "fedper":
            continue  # the compression `none` run of the first seed is fedper's run
        tag = name.split()[0] + ("-sl1" if "shared-layers" in over else "")
        algo_tags[name] = tag
        jobs.append((tag, {**_base(ctx, algo_rounds), **over}))
    with BenchEngine() as engine, ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        done = dict(
            zip(
                [tag for tag, _ in jobs],
                pool.map(lambda job: _run(engine, ctx, job[1], job[0]), jobs),
                strict=True,
            )
        )
    overrides_of = dict(jobs)
    for seed in seeds:
        for method in compression:
            run = done[f"{method}-s{seed}"]
            assert run.summary is not None
            compression[method]["runs"].append(
                {
                    "seed": seed,
                    "bytes_up": int(run.summary["bytes_up"]),
                    "bytes_down": int(run.summary["bytes_down"]),
                    "bytes_up_per_client_round": per_client_bytes(run)["up"],
                    "mean_accuracy": mean_classification_accuracy(run.summary or {}),
                    "sum_mae": run.summary["per_task"]
                    .get("sum", {})
                    .get("test/mae", {})
                    .get("mean"),
                }
            )
    first = f"none-s{seeds[0]}"
    runs_by_algorithm = {"fedper": (overrides_of[first], done[first])}
    runs_by_algorithm |= {n: (overrides_of[t], done[t]) for n, t in algo_tags.items()}
    for name in ALGORITHMS:
        overrides, run = runs_by_algorithm[name]
        params = shared_parameters(overrides)
        per_client = per_client_bytes(run)
        algorithms[name] = {
            "encoder_parameters": params,
            "encoder_bytes": params * 4,
            "bytes_up_per_client": per_client["up"],
            "bytes_down_per_client": per_client["down"],
            "up_vs_encoder": per_client["up"] / (params * 4),
            "down_vs_encoder": per_client["down"] / (params * 4),
            "rounds": run.overrides["num-server-rounds"],
        }
    none = compression["none"]["runs"]
    for entry in compression.values():
        runs = entry["runs"]
        entry["bytes_up_ratio"] = sum(r["bytes_up"] for r in none) / sum(
            r["bytes_up"] for r in runs
        )
        entry["mean_accuracy"] = statistics.mean(r["mean_accuracy"] for r in runs)
        entry["accuracy_drop_points"] = 100 * (
            statistics.mean(r["mean_accuracy"] for r in none) - entry["mean_accuracy"]
        )
    int8 = compression["int8"]
    targets = [
        Target(
            "int8: bytes up, none / int8",
            int8["bytes_up_ratio"],
            BYTES_RATIO_TARGET,
            higher_is_better=True,
        ),
        Target(
            f"int8: mean accuracy drop vs none ({len(seeds)} seeds, {comp_rounds} rounds)",
            int8["accuracy_drop_points"],
            ACCURACY_DROP_TARGET,
            unit="points",
        ),
    ]
    return {
        "section": "communication",
        "algorithm_rounds": algo_rounds,
        "compression_rounds": comp_rounds,
        "seeds": seeds,
        "algorithms": algorithms,
        "compression": compression,
        "targets": [t.as_dict() for t in targets],
        "seconds": time.perf_counter() - t0,
    }
