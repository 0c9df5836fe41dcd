"""Client-level central DP through Flower's strategy wrappers, with ε accounted every round.

Fixed clipping uses the wrappers' own RDP accountant (Flower 1.42, `flwr[dp]`), which insists
on what makes the accounting valid: FedAvg's aggregation, equal client weights (clients
report `num-examples = 1` under central DP) and exactly the configured number of sampled
clients per round. Sampling is accounted without amplification (conservative: Flower samples
a fixed-size subset, not Poisson). Adaptive clipping wrappers have no accountant of their own;
the same RDP accountant is composed here with the configured σ, which the wrapper splits
between the update sum and the clipped-count query.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from common.config import RunConfig, sampled_per_round

WRAPPERS = {
    "fixed-server": DifferentialPrivacyServerSideFixedClipping,
    "fixed-client": DifferentialPrivacyClientSideFixedClipping,
    "adaptive-server": DifferentialPrivacyServerSideAdaptiveClipping,
    "adaptive-client": DifferentialPrivacyClientSideAdaptiveClipping,
}


def make_accountant(cfg: RunConfig, population: int) -> RdpAccountant:
    return RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=cfg.dp_epsilon,
        )
    )


def wrap_central_dp(strategy: Strategy, cfg: RunConfig, population: int) -> Strategy:
    """The strategy inside Flower's DP wrapper chosen by `cdp-clipping`."""
    sampled = sampled_per_round(cfg, population)
    cls = WRAPPERS[cfg.cdp_clipping]
    if cfg.cdp_clipping.startswith("fixed"):
        return cls(
            strategy,
            noise_multiplier=cfg.cdp_noise_multiplier,
            clipping_norm=cfg.clipping_norm,
            num_sampled_clients=sampled,
            accountant=make_accountant(cfg, population),
        )
    wrapper = cls(
        strategy,
        noise_multiplier=cfg.cdp_noise_multiplier,
        num_sampled_clients=sampled,
        initial_clipping_norm=cfg.clipping_norm,
        clipped_count_stddev=cfg.cdp_clipped_count_stddev or None,
    )
    wrapper.fedmtl_accountant = make_accountant(cfg, population)
    # The wrapper splits σ between the update sum and the clipped-count query (Andrew et al.
    # 2021); together they are one Gaussian mechanism with the configured σ: account that.
    wrapper.fedmtl_sigma = cfg.cdp_noise_multiplier
    return wrapper


def _adaptive_event(strategy: Any) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(
        noise_multiplier=getattr(strategy, "fedmtl_sigma", strategy.noise_multiplier),
        sample_size=strategy.num_sampled_clients,
        population_size=strategy.fedmtl_accountant.config.population_size,
    )


def check_budget(strategy: Any) -> None:
    """Refuse a round whose release would exceed `dp-epsilon` (adaptive wrappers; the fixed
    ones check this themselves in `configure_train`)."""
    accountant = getattr(strategy, "fedmtl_accountant", None)
    if accountant is not None and accountant.would_exceed(_adaptive_event(strategy)):
        spent = accountant.get_privacy_spent()
        raise PrivacyBudgetExhausted(
            f"the next release would exceed dp-epsilon = {accountant.config.max_epsilon} "
            f"(spent ε = {spent.epsilon:.3f} at δ = {spent.delta})"
        )


def accountant_of(strategy: Any) -> Any:
    """The RDP accountant of a central-DP wrapper (ours or Flower's), if any."""
    return getattr(strategy, "fedmtl_accountant", None) or getattr(strategy, "accountant", None)


def privacy_after_round(strategy: Any) -> dict[str, float] | None:
    """Cumulative client-level (ε, δ) after this round's release, or None without DP."""
    spent = None
    if hasattr(strategy, "fedmtl_accountant"):
        strategy.fedmtl_accountant.compose(_adaptive_event(strategy))
        spent = strategy.fedmtl_accountant.get_privacy_spent()
    elif hasattr(strategy, "privacy_spent"):
        spent = strategy.privacy_spent()
    if spent is None:
        return None
    out = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
    if hasattr(strategy, "clipping_norm"):
        out["clipping_norm"] = float(strategy.clipping_norm)
    return out
