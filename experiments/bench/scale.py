"""Section 2: scale. SynthCorr with 1000 simulated clients, 10 % sampled per round, 5 rounds,
with the memory of every process the engine runs (the SuperLink's tree and its Ray head's)
sampled every 0.5 s; then the time of a training round against the number of clients sampled
per round (10, 50, 100, 200) with a least-squares line.

Only the last round of the main run evaluates every client (eval-every is set past the run,
fraction-evaluate to 0): that full evaluation of 1000 clients is reported apart. The sweep
runs (8 rounds planned) are stopped once their timed rounds (2 and 3; round 1 is cold) are
logged, so they never reach the last round and its full evaluation. The main run has the
default 500 samples per client; the sweep uses 100 per client: on its first message each actor
partitions all 1000 clients, a cost that grows with the rows (see `column_read_cost`) and
would otherwise dominate the bench's budget, four times over.
"""

from __future__ import annotations

import time
from typing import Any

from experiments.bench.flower import AppRun, BenchEngine, run_fedmtl, stop_after_round
from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target, fit_line, median

MEMORY_LIMIT_GB = 4.0
MAIN_ROUNDS = 5
GB = 1e9


def scale_config(num_clients: int, sampled: int, rounds: int, samples: int) -> dict[str, Any]:
    return {
        "dataset": "synthcorr",
        "num-clients": num_clients,
        "samples-per-client": samples,
        "fraction-train": sampled / num_clients,
        "fraction-evaluate": 0.0,
        "eval-every": 10_000,
        "num-server-rounds": rounds,
        "run-name": f"bench-scale-{num_clients}-{sampled}-{samples}",
    }


def column_read_cost(rows: int = 500_000, size: int = 500, partitions: int = 40) -> dict:
    """Per partition, what `common.federation.partition_indices` pays to turn a partition's
    `idx` column into numpy: `np.asarray(ds["idx"])` (how it read it before: datasets 4 hands
    back a lazy Column that numpy walks row by row, formatting each row) vs
    `np.asarray(ds["idx"][:])` (one slice: a list; what it does now). Same selects as a
    Dirichlet partition, interleaved, identical output.
    """
    import numpy as np
    from datasets import Dataset

    table = Dataset.from_dict({"idx": np.arange(rows), "label": np.arange(rows) % 10})
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(rows, size, replace=False)) for _ in range(partitions)]
    times: dict[str, list[float]] = {"lazy": [], "slice": []}
    for pick in picks:
        part = table.select(pick)
        t0 = time.perf_counter()
        a = np.asarray(part["idx"], dtype=np.int64)
        t1 = time.perf_counter()
        b = np.asarray(part["idx"][:], dtype=np.int64)
        t2 = time.perf_counter()
        if not (np.array_equal(a, pick) and np.array_equal(b, pick)):
            raise AssertionError("the two reads disagree")
        times["lazy"].append(t1 - t0)
        times["slice"].append(t2 - t1)
    return {
        "rows": rows,
        "partition_size": size,
        "partitions_timed": partitions,
        "lazy_ms": 1000 * median(times["lazy"]),
        "slice_ms": 1000 * median(times["slice"]),
    }


def round_times(run: AppRun) -> dict[str, Any]:
    rows = run.rounds
    train = [float(r["train_seconds"]) for r in rows]
    return {
        "ok": run.ok,
        "status": run.sub.status,
        "stopped_early": run.sub.stopped_early,
        "clients_per_round": [int(r["clients"]) for r in rows],
        "round_seconds": [float(r["seconds"]) for r in rows],
        "train_seconds": train,
        "round1_s": train[0] if train else float("nan"),
        "warm_train_median_s": median(train[1:]) if len(train) > 1 else float("nan"),
        "wall_s": run.sub.wall_s,
        "peak_rss_gb": run.sub.peak_rss_bytes / GB,
        "peak_pss_gb": run.sub.peak_pss_bytes / GB,
        "memory_samples": run.sub.memory_samples,
        "failures": sum(int(r.get("failures", 0)) for r in rows),
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    t_section = time.perf_counter()
    n = 100 if ctx.quick else 1000
    samples, sweep_samples = (60, 60) if ctx.quick else (500, 100)
    sweep = [2, 5, 10, 20] if ctx.quick else [10, 50, 100, 200]
    main_sampled = n // 10
    out_dir = ctx.section_dir("scale")
    runs: dict[str, Any] = {}
    with BenchEngine() as engine:
        ctx.log(f"scale: {n} clients, {main_sampled} per round, {MAIN_ROUNDS} rounds")
        main = run_fedmtl(
            engine,
            scale_config(n, main_sampled, MAIN_ROUNDS, samples),
            out_dir,
            sample_memory=True,
            timeout=2400,
        )
        if not main.ok:
            raise RuntimeError(f"scale main run failed ({main.sub.status}); see {main.results_dir}")
        runs["main"] = round_times(main)
        final = main.rounds[-1] if main.rounds else {}
        runs["main"]["final_full_evaluation_s"] = float(final.get("seconds", 0.0)) - float(
            final.get("train_seconds", 0.0)
        )
        ctx.log(
            f"scale: main run {runs['main']['status']}, wall {main.sub.wall_s:.1f}s, "
            f"peak RSS {runs['main']['peak_rss_gb']:.2f} GB"
        )
        for k in sweep:
            ctx.log(f"scale: sweep, {k} clients per round")
            r = run_fedmtl(
                engine,
                scale_config(n, k, 8, sweep_samples),
                out_dir,
                stop_when=stop_after_round(3),
                sample_memory=True,
                timeout=2400,
            )
            if len(r.rounds) < 3:
                raise RuntimeError(
                    f"sweep run {k}/round failed ({r.sub.status}); see {r.results_dir}"
                )
            runs[f"sampled-{k}"] = round_times(r)
            ctx.log(
                f"scale: {k}/round: warm round {runs[f'sampled-{k}']['warm_train_median_s']:.2f}s"
            )
    ctx.log("scale: cost of reading a partition's index column (partition_indices)")
    column = column_read_cost(partitions=10 if ctx.quick else 40)
    points = []
    for k in sweep:
        r = runs.get(f"sampled-{k}")
        if r and r["warm_train_median_s"] == r["warm_train_median_s"]:
            points.append((k, r["warm_train_median_s"]))
    fit = fit_line([p[0] for p in points], [p[1] for p in points]) if len(points) >= 2 else {}
    peak_rss = max(r["peak_rss_gb"] for r in runs.values())
    peak_pss = max(r["peak_pss_gb"] for r in runs.values())
    targets = [
        Target(
            f"{n} clients, {main_sampled}/round, {MAIN_ROUNDS} rounds: completes, peak RSS of "
            "the tree",
            peak_rss if runs["main"]["ok"] else float("nan"),
            MEMORY_LIMIT_GB,
            unit="GB",
            note=f"status {runs['main']['status']}; PSS {peak_pss:.2f} GB",
        )
    ]
    return {
        "section": "scale",
        "clients": n,
        "samples_per_client": samples,
        "sweep_samples_per_client": sweep_samples,
        "runs": runs,
        "points": points,
        "fit": fit,
        "peak_rss_gb": peak_rss,
        "peak_pss_gb": peak_pss,
        "column_read": column,
        "targets": [t.as_dict() for t in targets],
        "seconds": time.perf_counter() - t_section,
        "leftover_processes": len(getattr(engine, "leftovers", [])),
    }
