"""The strategy factory: config names -> Flower strategies applied to the shared arrays."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import FedAvg, Strategy

from common.config import RunConfig
from server.metrics import aggregate_task_metrics


def _fedavg(cfg: RunConfig, common: dict) -> Strategy:
    return FedAvg(**common)


STRATEGIES: dict[str, Callable[[RunConfig, dict], Strategy]] = {
    "fedavg": _fedavg,
}


def build_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy for the shared arrays; evaluation metrics go through our per-task
    aggregation because clients hold different tasks."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy '{cfg.strategy}' is unknown; valid: {sorted(STRATEGIES)}")
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
        evaluate_metrics_aggr_fn=aggregate_task_metrics,
    )
    return STRATEGIES[cfg.strategy](cfg, common)
