"""The strategy factory: config names -> Flower strategies applied to the shared arrays.

Each entry passes the strategy's own parameters from run-config keys: exactly the keys its
row in `common.strategy_table` lists (a test checks). Task heads that are federated (`fedavg`,
`fedrod`) are not these strategies' business: `server.task_heads.TaskAwareHeads` wraps the
strategy and averages each head over the clients that hold its task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    Strategy,
)

from common.config import ConfigError, RunConfig
from server.metrics import aggregate_task_metrics


def _fedopt(cls: type, *, betas: bool = True) -> Callable[[RunConfig, dict], Strategy]:
    """FedOpt family (Reddi et al. 2021); FedAdagrad has no momentum terms."""

    def build(cfg: RunConfig, kw: dict) -> Strategy:
        extra = {"beta_1": cfg.beta_1, "beta_2": cfg.beta_2} if betas else {}
        return cls(**kw, eta=cfg.fedopt_eta, eta_l=cfg.lr, tau=cfg.tau, **extra)

    return build


STRATEGY_BUILDERS: dict[str, Callable[[RunConfig, dict[str, Any]], Strategy]] = {
    "fedavg": lambda cfg, kw: FedAvg(**kw),
    "fedprox": lambda cfg, kw: FedProx(**kw, proximal_mu=cfg.proximal_mu),
    "fedadam": _fedopt(FedAdam),
    "fedyogi": _fedopt(FedYogi),
    "fedadagrad": _fedopt(FedAdagrad, betas=False),
    "fedavgm": lambda cfg, kw: FedAvgM(
        **kw, server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum
    ),
    "fedmedian": lambda cfg, kw: FedMedian(**kw),
    "fedtrimmedavg": lambda cfg, kw: FedTrimmedAvg(**kw, beta=cfg.trim_beta),
    "krum": lambda cfg, kw: Krum(**kw, num_malicious_nodes=cfg.num_malicious),
    "multikrum": lambda cfg, kw: MultiKrum(
        **kw, num_malicious_nodes=cfg.num_malicious, num_nodes_to_select=cfg.krum_select
    ),
    "bulyan": lambda cfg, kw: Bulyan(**kw, num_malicious_nodes=cfg.num_malicious),
}


def build_strategy(cfg: RunConfig) -> Strategy:
    """The Flower strategy for the shared arrays; evaluation metrics go through our per-task
    aggregation because clients hold different tasks."""
    if cfg.strategy not in STRATEGY_BUILDERS:
        raise ConfigError(
            f"strategy '{cfg.strategy}' is unknown; valid: {sorted(STRATEGY_BUILDERS)}"
        )
    common = dict(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_nodes,
        min_evaluate_nodes=cfg.min_nodes,
        # Amplified ε assumes the sample is drawn from the whole population: wait for it.
        min_available_nodes=cfg.num_clients if cfg.cdp_amplification != "none" else cfg.min_nodes,
        evaluate_metrics_aggr_fn=aggregate_task_metrics,
    )
    return STRATEGY_BUILDERS[cfg.strategy](cfg, common)
