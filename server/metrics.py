"""Per-task and per-client metrics from the clients' ConfigRecords.

Clients hold different tasks, so per-task metrics cannot live in the MetricRecord (FedAvg
needs identical keys there). They come as `<split>/<task>/<metric>` entries in a ConfigRecord
and are aggregated here, per task over the clients that hold it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict

from common.metric_names import metric_higher_is_better

TASK_RECORD = "task-metrics"
SPLITS = ("val", "test")
# Where each per-task metric a client reports can lie (`common.tasks.TaskSpec.metrics` and the
# task losses); `n`, the split's example count, is a positive integer. A value outside its
# range can only be forged, and one forged value would move a task's mean arbitrarily far.
METRIC_RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0),
    "macro_f1": (0.0, 1.0),
    "mae": (0.0, math.inf),
    "rmse": (0.0, math.inf),
    "loss": (0.0, math.inf),
    "r2": (-math.inf, 1.0),
    "pixel_accuracy": (0.0, 1.0),
    "miou": (0.0, 1.0),
    "abs_rel": (0.0, math.inf),
}


def metric_problem(metric: str, value: Any) -> str | None:
    """Why one reported per-task metric value is impossible, or None."""
    if metric == "n":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"is {value!r}, not a positive integer"
        return None
    if metric not in METRIC_RANGES:
        return f"is not a known metric; valid: {sorted([*METRIC_RANGES, 'n'])}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"is {value!r}, not a finite number"
    low, high = METRIC_RANGES[metric]
    if not low <= value <= high:
        return f"= {value:g} is outside its range [{low:g}, {high:g}]"
    return None


def per_client(records: list[RecordDict]) -> dict[str, dict[str, dict[str, float]]]:
    """{client-id: {task: {'test/accuracy': ..., 'val/accuracy': ..., 'n': ...}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for record in records:
        cr = record.config_records.get(TASK_RECORD)
        if cr is None:
            continue
        client = str(cr["client-id"])
        tasks: dict[str, dict[str, float]] = defaultdict(dict)
        for key, value in cr.items():
            parts = key.split("/")
            if len(parts) == 3 and isinstance(value, (int, float)):
                split, task, metric = parts
                name = "n" if metric == "n" else f"{split}/{metric}"
                if metric == "n" and split != "test":
                    continue
                tasks[task][name] = float(value)
        out[client] = dict(tasks)
    return dict(sorted(out.items(), key=lambda kv: _client_sort_key(kv[0])))


def _client_sort_key(client: str) -> tuple[int, str]:
    return (int(client), "") if client.isdigit() else (1 << 30, client)


def per_task(clients: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per task and metric: sample-weighted and unweighted mean over the clients holding the
    task, the std across them and the mean of the worst 10 % (at least one client)."""
    values: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for tasks in clients.values():
        for task, metrics in tasks.items():
            n = metrics.get("n", 1.0)
            for name, value in metrics.items():
                if name != "n":
                    values[task][name].append((value, n))
    out: dict[str, dict[str, Any]] = {}
    for task in sorted(values):
        out[task] = {}
        for name, pairs in sorted(values[task].items()):
            v = np.array([p[0] for p in pairs])
            w = np.array([p[1] for p in pairs])
            higher_better = metric_higher_is_better(name)
            k = max(1, int(np.ceil(0.1 * len(v))))
            worst = np.sort(v)[:k] if higher_better else np.sort(v)[::-1][:k]
            out[task][name] = {
                "weighted": float(np.average(v, weights=w)) if w.sum() > 0 else float(v.mean()),
                "mean": float(v.mean()),
                "std": float(v.std()),
                "worst10": float(worst.mean()),
                "clients": len(v),
                # The test examples behind the mean: per-client scores of small test sets
                # move in coarse steps (1/n), which these make visible.
                "examples": int(w.sum()),
                "min_examples": int(w.min()),
            }
    return out


def aggregate_task_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """`evaluate_metrics_aggr_fn` for Flower strategies: weighted mean per task and metric,
    plus the weighted mean of the MetricRecord's own keys."""
    flat: dict[str, float] = {}
    for task, metrics in per_task(per_client(records)).items():
        for name, stats in metrics.items():
            flat[f"{name}/{task}"] = stats["weighted"]
    weights = np.array([float(r.metric_records["metrics"][weight_key]) for r in records])
    for key in records[0].metric_records["metrics"]:
        if key != weight_key:
            vals = np.array([float(r.metric_records["metrics"][key]) for r in records])
            flat[key] = (
                float(np.average(vals, weights=weights)) if weights.sum() else float(vals.mean())
            )
    return MetricRecord(flat)
