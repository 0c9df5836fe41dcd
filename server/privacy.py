"""Client-level central DP through Flower's strategy wrappers, with ε accounted every round.

Fixed clipping uses the wrappers' own RDP accountant (Flower 1.42, `flwr[dp]`), which insists
on what makes the accounting valid: FedAvg's aggregation, equal client weights (clients
report `num-examples = 1` under central DP) and exactly the configured number of sampled
clients per round. Sampling is accounted without amplification (conservative: Flower samples
a fixed-size subset, not Poisson); Flower's fixed-clipping wrappers refuse any other sampling
method. With `cdp-amplification = "without-replacement"` the rounds also report ε amplified by
that uniform sample (`amplified_epsilon`), which holds under replace-one neighbours while the
sample is secret; the budget stays on the conservative ε. Adaptive clipping wrappers have no
accountant of their own; the same RDP accountant is composed here with the configured σ,
which the wrapper splits between the update sum and the clipped-count query.

Every release is composed where it happens (`release`, or the SecAgg+ wrapper in
`server.secure_aggregation`); a round short of its fixed sample releases nothing
(`unreleasable`); the noise never follows the run seed.
"""

from __future__ import annotations

from typing import Any

from flwr.app import Message
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
from common.randomness import unpredictable_numpy

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


def amplified_epsilon(
    noise_multiplier: float, sampled: int, population: int, releases: int, delta: float
) -> float:
    """ε after `releases` rounds that each sample `sampled` of `population` clients
    uniformly without replacement and add N(0, (σC)²) to the sum of updates clipped to C.

    The subsampled-Gaussian bound for sampling without replacement (Wang, Balle and
    Kasiviswanathan 2019, through Flower's RDP accountant) holds for replace-one
    neighbours, under which the clipped sum's sensitivity is 2C: the noise multiplier
    relative to it is σ/2. The population size is public under this relation."""
    if releases == 0:
        return 0.0
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=population,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
        )
    )
    accountant.compose(GaussianPrivacyEvent(noise_multiplier / 2, sampled, population), releases)
    return accountant.get_epsilon(delta)


def wrap_central_dp(strategy: Strategy, cfg: RunConfig, population: int) -> Strategy:
    """The strategy inside Flower's DP wrapper chosen by `cdp-clipping`."""
    sampled = sampled_per_round(cfg, population)
    cls = WRAPPERS[cfg.cdp_clipping]
    if cfg.cdp_clipping.startswith("fixed"):
        wrapper = cls(
            strategy,
            noise_multiplier=cfg.cdp_noise_multiplier,
            clipping_norm=cfg.clipping_norm,
            num_sampled_clients=sampled,
            accountant=make_accountant(cfg, population),
        )
        wrapper.fedmtl_amplification = cfg.cdp_amplification
        return wrapper
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


def accountant_of(strategy: Any) -> RdpAccountant | None:
    """The RDP accountant of a central-DP wrapper (ours or Flower's), if any."""
    return getattr(strategy, "fedmtl_accountant", None) or getattr(strategy, "accountant", None)


def next_release(strategy: Any) -> GaussianPrivacyEvent:
    """The privacy event of the strategy's next release: σ over its fixed client sample."""
    return GaussianPrivacyEvent(
        noise_multiplier=getattr(strategy, "fedmtl_sigma", strategy.noise_multiplier),
        sample_size=strategy.num_sampled_clients,
        population_size=accountant_of(strategy).config.population_size,
    )


def check_budget(strategy: Any) -> None:
    """Refuse a round whose release would exceed `dp-epsilon`. `strategy` is the wrapper
    whose accountant composes the releases (under SecAgg+ the one its workflow drives)."""
    accountant = accountant_of(strategy)
    if accountant is not None and accountant.would_exceed(next_release(strategy)):
        spent = accountant.get_privacy_spent()
        raise PrivacyBudgetExhausted(
            f"the next release would exceed dp-epsilon = {accountant.config.max_epsilon} "
            f"(spent ε = {spent.epsilon:.3f} at δ = {spent.delta})"
        )


def unreleasable(strategy: Any, usable: int, problems: list[str]) -> str | None:
    """Why a central-DP round must release nothing, or None.

    The noise (σ·C/n) and the accounting assume exactly n = `num_sampled_clients` clipped
    updates. With fewer (rejected or missing replies) Flower's fixed-clipping wrappers
    return nothing and its adaptive ones would average fewer updates under noise sized for
    n, a weaker release than the one accounted. Policy: such a round releases nothing
    (no noise drawn, no clipping-norm update, the encoder stays as it was), costs no ε,
    and is recorded as skipped with this reason."""
    if accountant_of(strategy) is None or usable == strategy.num_sampled_clients:
        return None
    return (
        f"central DP released nothing: {usable} usable updates of the "
        f"{strategy.num_sampled_clients} its noise is calibrated for"
        + (f" ({'; '.join(problems)})" if problems else "")
    )


def release(strategy: Any, rnd: int, replies: list[Message]) -> tuple[Any, Any]:
    """`strategy.aggregate_train`; under central DP its noise (and adaptive clipping's count
    noise), which Flower draws from NumPy's global RNG, comes from OS entropy, never from
    the run seed, and a release is composed into our accountant (Flower's fixed-clipping
    wrappers compose their own)."""
    if accountant_of(strategy) is None:
        return strategy.aggregate_train(rnd, replies)
    with unpredictable_numpy():
        arrays, metrics = strategy.aggregate_train(rnd, replies)
    if arrays is not None and hasattr(strategy, "fedmtl_accountant"):
        strategy.fedmtl_accountant.compose(next_release(strategy))
    return arrays, metrics


def privacy_after_round(strategy: Any) -> dict[str, float] | None:
    """Cumulative client-level (ε, δ) after this round, or None without central DP."""
    accountant = accountant_of(strategy)
    if accountant is None:
        return None
    spent = accountant.get_privacy_spent()
    out = {"epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases}
    if getattr(strategy, "fedmtl_amplification", "none") != "none":
        event = next_release(strategy)
        out["epsilon_amplified"] = amplified_epsilon(
            event.noise_multiplier,
            event.sample_size,
            event.population_size,
            spent.num_releases,
            spent.delta,
        )
    if hasattr(strategy, "clipping_norm"):
        out["clipping_norm"] = float(strategy.clipping_norm)
    return out
