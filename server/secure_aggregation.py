"""Secure aggregation of the encoder with Flower's SecAgg+ workflow.

SecAgg+ in Flower 1.42 is a workflow over the legacy (FitIns/FitRes) message layout, driven
with a `LegacyContext` and a legacy strategy. This module runs it as the training phase of a
round: the ServerApp only ever sees masked vectors and their sum, never one client's update.
Clients answer the legacy layout through `client.app` (their heads stay private as usual).
Composes with client-side clipping for central DP: the legacy DP wrapper sends the clipping
norm and adds noise to the securely aggregated sum; every release is accounted here, the
round loop checks the budget on this wrapper's accountant, and a sum short of the fixed
sample releases nothing (the policy of `server.privacy`).
"""

from __future__ import annotations

from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from common.config import RunConfig, sampled_per_round
from common.randomness import unpredictable_numpy
from server.metered_grid import MeteredGrid
from server.privacy import make_accountant, next_release, unreleasable
from server.rounds import RoundFailed, TrainOutcome


class CountingFedAvg(LegacyFedAvg):
    """Legacy FedAvg that remembers what the last round brought: how many results, which
    clients trained (they report `client-id`), and why the others failed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record([], [])

    def record(self, results: list, failures: list) -> None:
        self.last_results = len(results)
        self.last_clients = [
            str(res.metrics["client-id"]) for _, res in results if "client-id" in res.metrics
        ]
        self.last_failures = [failure_reason(f) for f in failures]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
        self.record(results, failures)
        return super().aggregate_fit(server_round, results, failures)


def failure_reason(failure: Any) -> str:
    """A SecAgg+ failure as text: the client's error reason, or the exception."""
    if isinstance(failure, tuple):  # (proxy, FitRes) with a failed status
        return f"failed reply: {failure[1].status.message}"
    error = failure.args[0] if getattr(failure, "args", None) else None
    return f"error reply: {error.reason}" if isinstance(error, Error) else str(failure)


class AccountedClientSideFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's legacy client-side fixed-clipping wrapper as SecAgg+ drives it, held to the
    policy of `server.privacy`: the noise comes from OS entropy, a sum of fewer than
    `num_sampled_clients` clipped updates (or one with failures) releases nothing, and
    every release is composed into `fedmtl_accountant`."""

    def __init__(self, inner: CountingFedAvg, cfg: RunConfig, population: int) -> None:
        super().__init__(
            inner,
            noise_multiplier=cfg.cdp_noise_multiplier,
            clipping_norm=cfg.clipping_norm,
            num_sampled_clients=sampled_per_round(cfg, population),
        )
        self.fedmtl_accountant = make_accountant(cfg, population)
        self.skipped: str | None = None

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> Any:
        self.skipped = None
        if failures or len(results) != self.num_sampled_clients:
            self.strategy.record(results, failures)
            self.skipped = (
                unreleasable(self, len(results), self.strategy.last_failures)
                or f"central DP released nothing: {len(failures)} failed client(s)"
            )
            return None, {}
        with unpredictable_numpy():
            params, metrics = super().aggregate_fit(server_round, results, failures)
        if params is not None:
            self.fedmtl_accountant.compose(next_release(self))
        return params, metrics


class SecAggTrainer:
    def __init__(self, grid: MeteredGrid, context: Context, cfg: RunConfig) -> None:
        self.grid, self.cfg = grid, cfg
        nodes = sorted(grid.get_node_ids())
        self.train_config: dict[str, Any] = {}
        self.fedavg = CountingFedAvg(
            fraction_fit=cfg.fraction_train,
            fraction_evaluate=0.0,
            min_fit_clients=cfg.min_nodes,
            min_available_clients=cfg.min_nodes,
            on_fit_config_fn=lambda rnd: {"server-round": rnd, **self.train_config},
        )
        strategy: Any = self.fedavg
        self.dp_strategy: AccountedClientSideFixedClipping | None = None
        if cfg.privacy == "central-dp":
            strategy = self.dp_strategy = AccountedClientSideFixedClipping(
                self.fedavg, cfg, len(nodes)
            )
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

    def train_round(
        self, rnd: int, arrays: ArrayRecord, config: dict[str, Any] | None = None
    ) -> TrainOutcome:
        """One SecAgg+ training phase; `config` adds keys to what every client receives."""
        keys = list(arrays.keys())
        state = self.context.state
        state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([a.numpy() for a in arrays.values()])
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
        self.train_config = dict(config or {})
        self.fedavg.record([], [])
        if self.dp_strategy is not None:
            self.dp_strategy.skipped = None
        self.workflow(self.grid, self.context)
        done, failed = self.fedavg.last_results, self.fedavg.last_failures
        rejected = [{"client": "unknown", "reason": r} for r in failed]
        extra: dict[str, Any] = {"rejected": rejected} if rejected else {}
        if done < self.cfg.min_nodes:
            raise RoundFailed(
                f"round {rnd}: secure aggregation completed with {done} clients, fewer than "
                f"min-nodes = {self.cfg.min_nodes} (see the log for dropouts)"
                + (f"; {'; '.join(failed)}" if failed else "")
            )
        trained = self.fedavg.last_clients
        if self.dp_strategy is not None and self.dp_strategy.skipped:
            extra["skipped"] = self.dp_strategy.skipped
            return TrainOutcome(arrays, done, len(failed), extra=extra, trained_clients=trained)
        values = state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
        new = ArrayRecord({k: Array(v) for k, v in zip(keys, values, strict=True)})
        return TrainOutcome(new, done, len(failed), extra=extra, trained_clients=trained)
