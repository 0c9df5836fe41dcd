"""Numbers read off a run's `summary.json` (the server's per-task and per-client stats), so
federated rows and in-process references are scored by the same code. Δm follows LibMTL's
convention (notes/evaluation.md):

    Δ_t = (−1)^{higher-is-better(t)} · (M_method − M_reference) / M_reference · 100

on the task's headline metric; Δm is the mean over tasks (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from common.metric_names import HEADLINE_METRICS, metric_higher_is_better
from experiments.kit.stats import nanmean

PerClient = Mapping[str, Mapping[str, Mapping[str, float]]]


def headline_metric(metrics: Mapping[str, Any]) -> str | None:
    """The metric a task is judged by ('accuracy', 'mae', 'miou', 'abs_rel'), from its
    available keys."""
    for name in HEADLINE_METRICS:  # as server.results.headline reads them
        if f"test/{name}" in metrics:
            return name
    return None


def task_headlines(summary: Mapping[str, Any]) -> dict[str, str]:
    """{task: headline metric} of a run's final round."""
    out = {}
    for task, metrics in summary.get("per_task", {}).items():
        name = headline_metric(metrics)
        if name:
            out[task] = name
    return out


def final_metrics(summary: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """Per task: (headline metric, final-round test value, mean over the clients)."""
    return {
        task: (name, float(summary["per_task"][task][f"test/{name}"]["mean"]))
        for task, name in task_headlines(summary).items()
    }


def mean_classification_accuracy(summary: Mapping[str, Any], split: str = "test") -> float:
    """Mean over the classification tasks of the final-round client-mean accuracy."""
    return nanmean(
        m[f"{split}/accuracy"]["mean"]
        for m in summary.get("per_task", {}).values()
        if f"{split}/accuracy" in m
    )


def relative_delta(method: float, reference: float, metric: str) -> float:
    """One Δ term in percent; nan where the reference is 0 (undefined ratio)."""
    if reference == 0 or not (math.isfinite(method) and math.isfinite(reference)):
        return math.nan
    sign = -1.0 if metric_higher_is_better(metric) else 1.0
    return sign * (method - reference) / abs(reference) * 100.0


def task_delta_m(
    method: Mapping[str, float], reference: Mapping[str, float], metric: Mapping[str, str]
) -> float:
    """Δm over the reference's tasks of per-task values (one number per task)."""
    return nanmean(relative_delta(method[t], reference[t], metric[t]) for t in reference)


def delta_terms(
    method: PerClient, reference: PerClient, split: str = "test"
) -> dict[tuple[str, str], float]:
    """Δ per (client, task) present in both runs, on the task's headline metric."""
    out = {}
    for client, tasks in method.items():
        for task, metrics in tasks.items():
            ref = reference.get(client, {}).get(task)
            name = headline_metric(metrics)
            if ref is None or name is None or f"{split}/{name}" not in ref:
                continue
            key = f"{split}/{name}"
            out[(client, task)] = relative_delta(metrics[key], ref[key], name)
    return out


def delta_m(method: PerClient, reference: PerClient) -> tuple[dict[str, float], float]:
    """Per client: (per-task Δ averaged over the clients holding the task, Δm = the mean
    over tasks)."""
    by_task: dict[str, list[float]] = {}
    for (_, task), value in delta_terms(method, reference).items():
        by_task.setdefault(task, []).append(value)
    per_task = {t: nanmean(v) for t, v in sorted(by_task.items())}
    return per_task, nanmean(per_task.values())
