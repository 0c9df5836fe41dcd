"""Section 3: the server's aggregation against a memory-bandwidth reference.

100 updates of 1M float32 parameters, aggregated (a) by Flower's `aggregate_arrayrecords`
(what FedAvg's `aggregate_train` calls on the reply contents) and (b) by our task-aware head
aggregation `server.task_heads.aggregate_task_arrays` (heads of 4 tasks, 2 per client), each
against numpy summing the very same arrays, measured in the same process and interleaved
(A, B, A, B, ...) so that load from other processes hits both alike. Minimum over repeats.

Where the time goes: `Array.numpy()` deserialises every update with `np.load` (a copy),
`value.numpy() * weight` allocates a temporary per update, and the result is serialised again
with `np.save`. A zero-copy variant (`np.frombuffer` past the .npy header, then BLAS axpy into
the accumulator) is measured alongside as the proposed change.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from experiments.bench.harness import BenchContext
from experiments.bench.stats import Target, median

TARGET_RATIO = 2.0
TASKS = ("t0", "t1", "t2", "t3")


def _shapes(n_params: int) -> list[tuple[int, ...]]:
    """A weight matrix and its bias with `n_params` parameters in total (1M: 1000×999+1000)."""
    rows = max(1, round(n_params**0.5))
    cols = max(1, (n_params - rows) // rows)
    bias = n_params - rows * cols
    return [(rows, cols), (bias,)] if bias > 0 else [(rows, cols)]


def encoder_records(n_updates: int, n_params: int, seed: int = 0) -> list[RecordDict]:
    """What FedAvg aggregates: one `arrays` record and a `num-examples` weight per reply."""
    rng = np.random.default_rng(seed)
    shapes = _shapes(n_params)
    out = []
    for i in range(n_updates):
        arrays = ArrayRecord(
            {
                f"encoder.blocks.0.0.{'weight' if j == 0 else 'bias'}": Array(
                    rng.standard_normal(shape, dtype=np.float32)
                )
                for j, shape in enumerate(shapes)
            }
        )
        out.append(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 50 + i})})
        )
    return out


def head_records(n_updates: int, n_params: int, seed: int = 0) -> list[RecordDict]:
    """What the task-aware head aggregation sees: each client returns the heads of 2 of the 4
    tasks (`n_params` in total per client), in a `task-arrays` record."""
    from common.records import TASK_ARRAYS

    rng = np.random.default_rng(seed)
    shapes = _shapes(n_params // 2)
    out = []
    for i in range(n_updates):
        tasks = (TASKS[i % 4], TASKS[(i + 1) % 4])
        heads = ArrayRecord(
            {
                f"heads.{t}.0.{'weight' if j == 0 else 'bias'}": Array(
                    rng.standard_normal(shape, dtype=np.float32)
                )
                for t in tasks
                for j, shape in enumerate(shapes)
            }
        )
        out.append(
            RecordDict({TASK_ARRAYS: heads, "metrics": MetricRecord({"num-examples": 50 + i})})
        )
    return out


def _numpy_arrays(records: list[RecordDict]) -> list[list[np.ndarray]]:
    return [[a.numpy() for rec in r.array_records.values() for a in rec.values()] for r in records]


def reference_sum(arrays: list[list[np.ndarray]]) -> Callable[[], Any]:
    """The bandwidth floor: numpy adding the same (already deserialised) arrays in place."""

    def run() -> list[np.ndarray]:
        acc = [np.zeros_like(a) for a in arrays[0]]
        for update in arrays:
            for target, a in zip(acc, update, strict=True):
                target += a
        return acc

    return run


def reference_heads(records: list[RecordDict]) -> Callable[[], Any]:
    """Numpy summing, per head key, the arrays of the clients holding it (the same bytes the
    head aggregation reads)."""
    by_key: dict[str, list[np.ndarray]] = {}
    for r in records:
        for rec in r.array_records.values():
            for k, a in rec.items():
                by_key.setdefault(k, []).append(a.numpy())

    def run() -> dict[str, np.ndarray]:
        out = {}
        for k, arrs in by_key.items():
            acc = np.zeros_like(arrs[0])
            for a in arrs:
                acc += a
            out[k] = acc
        return out

    return run


def array_view(array: Array) -> np.ndarray:
    """A read-only numpy view of an Array's .npy bytes, without `np.load`'s copy."""
    fp = io.BytesIO(array.data)
    major, _ = np.lib.format.read_magic(fp)
    read_header = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(fp)
    count = int(np.prod(shape)) if shape else 1
    view = np.frombuffer(array.data, dtype=dtype, count=count, offset=fp.tell())
    return view.reshape(shape, order="F" if fortran else "C")


def zero_copy_mean(records: list[RecordDict], weight_key: str = "num-examples") -> ArrayRecord:
    """The proposed aggregation: the weighted mean of every array key over `records`, reading
    each update in place (`array_view`) and adding it scaled into the accumulator in one
    pass (BLAS axpy: acc += w·x), where Flower's makes a copy, a temporary and a sum."""
    from scipy.linalg.blas import daxpy, saxpy
    from threadpoolctl import threadpool_limits

    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]
    total = sum(weights)
    acc: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    # One BLAS thread: axpy is bound by memory bandwidth, and OpenBLAS's spinning worker
    # threads made it 5-10× slower on a loaded 2-core machine.
    with threadpool_limits(1, user_api="blas"):
        _accumulate(records, weights, total, acc, shapes, saxpy, daxpy)
    return ArrayRecord({k: Array(v.reshape(shapes[k])) for k, v in acc.items()})


def _accumulate(
    records: list[RecordDict],
    weights: list[float],
    total: float,
    acc: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    saxpy: Callable[..., np.ndarray],
    daxpy: Callable[..., np.ndarray],
) -> None:
    for r, w in zip(records, weights, strict=True):
        for rec in r.array_records.values():
            for key, array in rec.items():
                view = array_view(array)
                if key not in acc:
                    shapes[key] = view.shape
                    floating = view.dtype in (np.float32, np.float64)
                    acc[key] = np.zeros(view.size, dtype=view.dtype if floating else np.float64)
                flat = view.reshape(-1)
                if view.dtype == np.float32:
                    acc[key] = saxpy(flat, acc[key], a=w / total)
                elif view.dtype == np.float64:
                    acc[key] = daxpy(flat, acc[key], a=w / total)
                else:
                    acc[key] += flat * (w / total)


def _deserialise_all(records: list[RecordDict]) -> None:
    """`Array.numpy()` of every update, each dropped at once (as the aggregation does)."""
    for r in records:
        for rec in r.array_records.values():
            for array in rec.values():
                array.numpy()


def _interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def bench_encoder(n_updates: int, n_params: int, repeats: int) -> dict[str, Any]:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    records = encoder_records(n_updates, n_params)
    arrays = _numpy_arrays(records)
    flower = aggregate_arrayrecords(records, "num-examples")
    fast = zero_copy_mean(records)
    for key in flower:
        np.testing.assert_allclose(fast[key].numpy(), flower[key].numpy(), rtol=1e-4, atol=1e-5)
    fns = {
        "flower": lambda: aggregate_arrayrecords(records, "num-examples"),
        "reference": reference_sum(arrays),
        "deserialise": lambda: _deserialise_all(records),
        "zero_copy": lambda: zero_copy_mean(records),
    }
    return _summary(_interleaved(fns, repeats), n_updates * n_params * 4)


def bench_heads(n_updates: int, n_params: int, repeats: int) -> dict[str, Any]:
    from server.task_heads import aggregate_task_arrays

    records = head_records(n_updates, n_params)
    fns = {
        "flower": lambda: aggregate_task_arrays(records),
        "reference": reference_heads(records),
    }
    return _summary(_interleaved(fns, repeats), n_updates * (n_params // 2) * 2 * 4)


def _summary(times: dict[str, list[float]], bytes_read: int) -> dict[str, Any]:
    best = {k: min(v) for k, v in times.items()}
    return {
        "times": times,
        "min_s": best,
        "median_s": {k: median(v) for k, v in times.items()},
        "ratio_min": best["flower"] / best["reference"],
        "ratio_median": median(times["flower"]) / median(times["reference"]),
        "bytes_read": bytes_read,
        "reference_gb_per_s": bytes_read / best["reference"] / 1e9,
    }


def _note(result: dict[str, Any]) -> str:
    best = result["min_s"]
    return f"{best['flower'] * 1e3:.1f} ms vs {best['reference'] * 1e3:.1f} ms"


def run(ctx: BenchContext) -> dict[str, Any]:
    t0 = time.perf_counter()
    n_updates, n_params, repeats = (10, 10_000, 2) if ctx.quick else (100, 1_000_000, 5)
    ctx.log(f"aggregation: {n_updates} updates × {n_params:,} parameters, {repeats} repeats")
    enc = bench_encoder(n_updates, n_params, repeats)
    heads = bench_heads(n_updates, n_params, repeats)
    if "zero_copy" in enc["min_s"]:
        enc["zero_copy_ratio_min"] = enc["min_s"]["zero_copy"] / enc["min_s"]["reference"]
    targets = [
        Target(
            f"FedAvg `aggregate_arrayrecords`, {n_updates} × {n_params:,} params, vs numpy sum",
            enc["ratio_min"],
            TARGET_RATIO,
            note=_note(enc),
        ),
        Target(
            "task-aware heads `aggregate_task_arrays`, same size, vs numpy sum",
            heads["ratio_min"],
            TARGET_RATIO,
            note=_note(heads),
        ),
    ]
    return {
        "section": "aggregation",
        "updates": n_updates,
        "parameters": n_params,
        "repeats": repeats,
        "encoder": enc,
        "heads": heads,
        "targets": [t.as_dict() for t in targets],
        "seconds": time.perf_counter() - t0,
    }
