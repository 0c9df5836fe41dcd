"""Secure aggregation of the encoder with Flower's SecAgg+ workflow.

SecAgg+ in Flower 1.42 is a workflow over the legacy (FitIns/FitRes) message layout, driven
with a `LegacyContext` and a legacy strategy. This module runs it as the training phase of a
round: the ServerApp only ever sees masked vectors and their sum, never one client's update.
Clients answer the legacy layout through `client.app` (their heads stay private as usual).
Composes with client-side clipping for central DP: the legacy DP wrapper sends the clipping
norm and adds noise to the securely aggregated sum; ε is accounted here every round.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from common.config import RunConfig, sampled_per_round
from server.metered_grid import MeteredGrid
from server.privacy import make_accountant
from server.rounds import RoundFailed, TrainOutcome


class CountingFedAvg(LegacyFedAvg):
    """Legacy FedAvg that remembers how many results the last round aggregated."""

    last_results = 0
    last_failures = 0

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
        self.last_results, self.last_failures = len(results), len(failures)
        return super().aggregate_fit(server_round, results, failures)


class SecAggTrainer:
    def __init__(self, grid: MeteredGrid, context: Context, cfg: RunConfig) -> None:
        self.grid, self.cfg = grid, cfg
        nodes = sorted(grid.get_node_ids())
        self.fedavg = CountingFedAvg(
            fraction_fit=cfg.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=cfg.min_nodes,
            min_available_clients=cfg.min_nodes,
            on_fit_config_fn=lambda rnd: {"server-round": rnd},
        )
        strategy: Any = self.fedavg
        self.dp_strategy: Any = None
        if cfg.privacy == "central-dp":
            sampled = sampled_per_round(cfg, len(nodes))
            strategy = DifferentialPrivacyClientSideFixedClipping(
                self.fedavg,
                noise_multiplier=cfg.cdp_noise_multiplier,
                clipping_norm=cfg.clipping_norm,
                num_sampled_clients=sampled,
            )
            strategy.fedmtl_accountant = make_accountant(cfg, len(nodes))
            self.dp_strategy = strategy
        self.context = LegacyContext(
            context,
            config=ServerConfig(num_rounds=cfg.num_server_rounds),
            strategy=strategy,
            client_manager=SimpleClientManager(),
        )
        for node in nodes:
            self.context.client_manager.register(GridClientProxy(node, grid, grid.run.run_id))
        self.workflow = SecAggPlusWorkflow(
            num_shares=cfg.secagg_shares,
            reconstruction_threshold=cfg.secagg_threshold,
            clipping_range=cfg.secagg_clipping_range,
            quantization_range=cfg.secagg_quantization_range,
            timeout=cfg.round_timeout,
        )

    def train_round(self, rnd: int, arrays: ArrayRecord) -> TrainOutcome:
        keys = list(arrays.keys())
        state = self.context.state
        state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([a.numpy() for a in arrays.values()])
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
        self.fedavg.last_results = 0
        self.workflow(self.grid, self.context)
        if self.fedavg.last_results < self.cfg.min_nodes:
            raise RoundFailed(
                f"round {rnd}: secure aggregation completed with {self.fedavg.last_results} "
                f"clients, fewer than min-nodes = {self.cfg.min_nodes} (see the log for dropouts)"
            )
        values = state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        new = ArrayRecord({k: Array(v) for k, v in zip(keys, values, strict=True)})
        return TrainOutcome(new, self.fedavg.last_results, self.fedavg.last_failures)
