"""Central DP's budget is refused before the release that would pass it, on the accountant
that composes the releases: Flower's (fixed clipping), ours (adaptive clipping) and the
SecAgg+ wrapper's. The round loop asks `check_budget` before every round; these tests hold
that check to the numbers of the RDP accountant. And every client counts once: its reply
claims the weight 1 the accounting assumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from common.config import parse_run_config
from server.privacy import accountant_of, check_budget, make_accountant, wrap_central_dp
from server.secure_aggregation import AccountedClientSideFixedClipping, CountingFedAvg
from server.strategies import build_strategy
from tests.clientapp_round import sent_arrays, train_reply
from tests.helpers import TINY

SIGMA = 2.0
CLIENTS = TINY["num-clients"]


def one_and_a_half_releases() -> float:
    """A budget with room for one release of σ over all clients, not for two."""
    reference = make_accountant(parse_run_config({**TINY, "privacy": "central-dp"}), CLIENTS)
    spent = []
    for _ in range(2):
        reference.compose(GaussianPrivacyEvent(SIGMA, CLIENTS, CLIENTS))
        spent.append(reference.get_privacy_spent().epsilon)
    return (spent[0] + spent[1]) / 2


def private_wrapper(kind: str, budget: float) -> Any:
    """The wrapper whose accountant composes a run's releases, as the ServerApp builds it."""
    cdp = {
        **TINY,
        "privacy": "central-dp",
        "cdp-noise-multiplier": SIGMA,
        "cdp-clipped-count-stddev": 5.0,
        "dp-epsilon": budget,
    }
    if kind == "secagg":
        cfg = parse_run_config({**cdp, "secagg": True, "cdp-clipping": "fixed-client"})
        return AccountedClientSideFixedClipping(CountingFedAvg(), cfg, CLIENTS)
    cfg = parse_run_config({**cdp, "cdp-clipping": kind})
    return wrap_central_dp(build_strategy(cfg), cfg, CLIENTS)


@pytest.mark.parametrize(
    "kind", ["fixed-server", "fixed-client", "adaptive-server", "adaptive-client", "secagg"]
)
def test_the_release_that_would_pass_dp_epsilon_is_refused_before_the_round(kind: str) -> None:
    budget = one_and_a_half_releases()
    wrapper = private_wrapper(kind, budget)
    check_budget(wrapper)  # round 1: one release fits
    accountant_of(wrapper).compose(GaussianPrivacyEvent(SIGMA, CLIENTS, CLIENTS))
    with pytest.raises(PrivacyBudgetExhausted, match=rf"would exceed dp-epsilon = {budget}"):
        check_budget(wrapper)  # round 2: a second release would pass the budget
    assert accountant_of(wrapper).get_privacy_spent().epsilon <= budget


@pytest.mark.parametrize("clipping", ["fixed-server", "fixed-client"])
def test_every_client_claims_weight_one_under_central_dp(tmp_path: Path, clipping: str) -> None:
    config = {"server-round": 1, "lr": 0.05, "local-epochs": 1, "clipping_norm": 1.0}
    cdp = {"privacy": "central-dp", "cdp-clipping": clipping}
    reply = train_reply(tmp_path / "cdp", sent_arrays(**cdp), config, **cdp)
    assert reply.content["metrics"]["num-examples"] == 1
    # Without central DP the same client weighs its number of training examples.
    plain = train_reply(tmp_path / "plain", sent_arrays(), config)
    assert plain.content["metrics"]["num-examples"] > 1
