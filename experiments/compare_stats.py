"""Numbers for the comparison, as pure functions of `summary.json` contents.

Everything here reads what a run already wrote (the server's per-task and per-client stats),
so the federated rows and the in-process references are scored by the same code. Δm follows
LibMTL's convention against local single-task training (notes/evaluation.md):

    Δ_{c,t} = (−1)^{higher-is-better(t)} · (M_method − M_single) / M_single · 100

per client c and task t on the task's headline metric; Δm of a run is the mean over tasks of
the per-task mean over the clients holding it (lower is better, 0 for single-task itself).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

HEADLINES = ("accuracy", "mae")  # classification, regression (server.results.headline)
LOWER_IS_BETTER = ("mae", "rmse", "loss")

PerClient = Mapping[str, Mapping[str, Mapping[str, float]]]


def headline_metric(metrics: Mapping[str, Any]) -> str | None:
    """'accuracy' or 'mae': the metric a task is judged by, from its available keys."""
    for name in HEADLINES:
        if f"test/{name}" in metrics:
            return name
    return None


def higher_is_better(metric: str) -> bool:
    return not metric.endswith(LOWER_IS_BETTER)


def task_headlines(summary: Mapping[str, Any]) -> dict[str, str]:
    """{task: headline metric} of a run's final round."""
    out = {}
    for task, metrics in summary.get("per_task", {}).items():
        name = headline_metric(metrics)
        if name:
            out[task] = name
    return out


def relative_delta(method: float, single: float, metric: str) -> float:
    """One Δ term in percent; NaN where the single-task value is 0 (undefined ratio)."""
    if single == 0 or not (math.isfinite(method) and math.isfinite(single)):
        return math.nan
    sign = -1.0 if higher_is_better(metric) else 1.0
    return sign * (method - single) / abs(single) * 100.0


def delta_terms(
    method: PerClient, single: PerClient, split: str = "test"
) -> dict[tuple[str, str], float]:
    """Δ per (client, task) present in both runs, on the task's headline metric."""
    out = {}
    for client, tasks in method.items():
        for task, metrics in tasks.items():
            ref = single.get(client, {}).get(task)
            name = headline_metric(metrics)
            if ref is None or name is None or f"{split}/{name}" not in ref:
                continue
            key = f"{split}/{name}"
            out[(client, task)] = relative_delta(metrics[key], ref[key], name)
    return out


def delta_m(method: PerClient, single: PerClient) -> tuple[dict[str, float], float]:
    """(per-task Δ, averaged over the clients holding the task; Δm = mean over tasks)."""
    by_task: dict[str, list[float]] = {}
    for (_, task), value in delta_terms(method, single).items():
        by_task.setdefault(task, []).append(value)
    per_task = {t: _nanmean(v) for t, v in sorted(by_task.items())}
    return per_task, _nanmean(per_task.values())


def mean_classification_accuracy(summary: Mapping[str, Any], split: str = "test") -> float:
    """Mean over the classification tasks of the final-round client-mean accuracy."""
    values = [
        m[f"{split}/accuracy"]["mean"]
        for m in summary.get("per_task", {}).values()
        if f"{split}/accuracy" in m
    ]
    return _nanmean(values)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof 1; 0 for a single value) over seeds, ignoring NaN."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else math.nan
