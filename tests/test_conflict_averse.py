"""Conflict-averse server aggregation (`aggregation = pcgrad | hca`): the rules' geometry,
their composition with the wrapped strategy, hca's learned weights and their checkpoint, the
configurations they refuse, and real simulations in which nothing private reaches the
server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg, FedAvgM

from common.config import ConfigError, parse_run_config
from server.checkpoint import restore_strategy_state, strategy_state
from server.conflict_averse import (
    ConflictAverseAggregation,
    conflict_averse_direction,
    pcgrad_updates,
    wrap_aggregation,
)
from tests.helpers import TINY, act_as_serverapp, run_tiny, strategy_round

# Two clients whose updates conflict (inner product -3), and a third that agrees with both.
A, B = np.array([2.0, 1.0]), np.array([-2.0, 1.0])


def cfg(**overrides):
    return parse_run_config({"num-clients": 3, **overrides})


def test_pcgrad_removes_the_conflicting_component_and_keeps_agreeing_updates() -> None:
    rng = np.random.default_rng(0)
    out = pcgrad_updates(np.stack([A, B, np.array([0.0, 1.0])]), rng)
    # A loses its component along B (and B along A); neither conflicts with the other now.
    assert out[0] @ B == pytest.approx(0.0, abs=1e-12)
    assert out[1] @ A == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out[0], [0.8, 1.6])  # A + 0.6 B
    np.testing.assert_allclose(out[2], [0.0, 1.0])  # agrees with both: unchanged


def test_the_conflict_averse_direction_serves_the_worst_client_better_than_the_mean() -> None:
    deltas = np.stack([np.array([3.0, 0.2]), np.array([-1.0, 0.4])])
    w = np.array([0.5, 0.5])
    c = 0.4
    mean = w @ deltas
    d = conflict_averse_direction(deltas, w, c) * (1 + c**2)  # undo FedHCA²'s rescaling
    assert min(deltas @ d) > min(deltas @ mean) + 1e-3
    # ... while staying within c·‖mean‖ of the mean.
    assert np.linalg.norm(d - mean) <= c * np.linalg.norm(mean) + 1e-6
    # c = 0 is the mean itself.
    np.testing.assert_allclose(conflict_averse_direction(deltas, w, 0.0), mean, atol=1e-6)


def test_pcgrad_through_fedavg_averages_the_projected_updates(monkeypatch) -> None:
    act_as_serverapp(monkeypatch)
    theta = {"encoder.w": np.array([1.0, 1.0], np.float32)}
    updates = [{"encoder.w": theta["encoder.w"] + A}, {"encoder.w": theta["encoder.w"] + B}]
    strategy = wrap_aggregation(FedAvg(), cfg(aggregation="pcgrad"))
    got = strategy_round(strategy, 1, theta, updates, [1, 3])["encoder.w"]
    # A → [0.8, 1.6], B → [-0.8, 1.6]; weights 1/4, 3/4.
    np.testing.assert_allclose(got, [1.0 + 0.25 * 0.8 - 0.75 * 0.8, 1.0 + 1.6], rtol=1e-6)
    plain = strategy_round(FedAvg(), 1, theta, updates, [1, 3])["encoder.w"]
    np.testing.assert_allclose(plain, [1.0 + 0.5 - 1.5, 2.0], rtol=1e-6)


def test_hca_adds_the_weighted_direction_to_the_mean_update_and_composes_with_fedavgm(
    monkeypatch,
) -> None:
    act_as_serverapp(monkeypatch)
    theta = {"encoder.w": np.zeros(2, np.float32)}
    updates = [{"encoder.w": A.astype(np.float32)}, {"encoder.w": B.astype(np.float32)}]
    c = cfg(aggregation="hca", strategy="fedavgm", **{"hca-alpha-init": 0.5})
    wrapped = wrap_aggregation(FedAvgM(server_learning_rate=1.0, server_momentum=0.0), c)
    got = strategy_round(wrapped, 1, theta, updates, [1, 1])["encoder.w"]
    d = conflict_averse_direction(np.stack([A, B]), np.array([0.5, 0.5]), 0.4)
    np.testing.assert_allclose(got, (A + B) / 2 + 0.5 * d, rtol=1e-5)


def test_hca_raises_the_weight_of_a_client_that_follows_the_direction_and_lowers_the_other(
    monkeypatch,
) -> None:
    act_as_serverapp(monkeypatch)
    c = cfg(aggregation="hca", **{"hca-lr": 5.0})
    strategy = ConflictAverseAggregation(FedAvg(), c)
    theta = {"encoder.w": np.zeros(2, np.float32)}
    first = [{"encoder.w": A.astype(np.float32)}, {"encoder.w": B.astype(np.float32)}]
    after = strategy_round(strategy, 1, theta, first, [1, 1])
    d = strategy.direction["d"]
    assert set(strategy.alpha) == {"node-1", "node-2"}
    # Round 2: node 1 keeps going along d, node 2 goes against it.
    second = [
        {"encoder.w": after["encoder.w"] + d.astype(np.float32)},
        {"encoder.w": after["encoder.w"] - d.astype(np.float32)},
    ]
    strategy_round(strategy, 2, after, second, [1, 1])
    assert float(strategy.alpha["node-1"]) > 0.1 > float(strategy.alpha["node-2"])
    assert all(0.0 <= float(a) <= 1.0 for a in strategy.alpha.values())


def test_hca_state_survives_a_checkpoint(monkeypatch) -> None:
    """A resumed run continues with the weights, momenta and direction it had."""
    act_as_serverapp(monkeypatch)
    c = cfg(aggregation="hca", **{"hca-lr": 5.0})
    theta = {"encoder.w": np.zeros(2, np.float32)}
    one = [{"encoder.w": A.astype(np.float32)}, {"encoder.w": B.astype(np.float32)}]
    two = [{"encoder.w": (A + B).astype(np.float32)}, {"encoder.w": (A - B).astype(np.float32)}]
    running = ConflictAverseAggregation(FedAvg(), c)
    after = strategy_round(running, 1, theta, one, [1, 1])
    strategy_round(running, 2, after, one, [1, 1])
    saved = strategy_state(running)
    resumed = ConflictAverseAggregation(FedAvg(), c)
    restore_strategy_state(resumed, saved)
    assert {k: float(v) for k, v in resumed.alpha.items()} == {
        k: float(v) for k, v in running.alpha.items()
    }
    assert {k: float(v) for k, v in resumed.velocity.items()} == {
        k: float(v) for k, v in running.velocity.items()
    }
    np.testing.assert_array_equal(resumed.direction["d"], running.direction["d"])
    expected = strategy_round(running, 3, after, two, [1, 1])
    got = strategy_round(resumed, 3, after, two, [1, 1])
    np.testing.assert_array_equal(got["encoder.w"], expected["encoder.w"])


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"secagg": True}, "secure aggregation hides"),
        ({"privacy": "central-dp", "algorithm": "fedper"}, "central DP"),
        ({"strategy": "fedmedian"}, "fedavg, fedprox or fedavgm"),
    ],
)
@pytest.mark.parametrize("rule", ["pcgrad", "hca"])
def test_a_rule_that_needs_each_update_is_refused_where_it_cannot_have_it(
    rule: str, overrides: dict, says: str
) -> None:
    with pytest.raises(ConfigError, match=f"aggregation '{rule}'") as err:
        parse_run_config({"num-clients": 4, "aggregation": rule, **overrides})
    assert says in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["pcgrad", "hca"])
def test_a_real_simulation_with_the_rule_sends_the_server_only_the_encoder(
    rule: str, tmp_path
) -> None:
    """Clients with different task sets; every reply the server received holds encoder
    arrays only, and the run applied the rule."""
    outcome = run_tiny(
        tmp_path,
        aggregation=rule,
        plan="left,right;sum;left,sum",
        **{"audit-received": True, "num-server-rounds": 1},
    )
    assert outcome.ok
    entries = [json.loads(line) for line in (outcome.results_dir / "received.jsonl").open()]
    train = [e for e in entries if e["phase"] == "train"]
    assert len(train) == TINY["num-clients"]
    for e in train:
        assert e["records"] == ["arrays"]
        assert all(k.startswith("encoder.") for k in e["keys"]["arrays"])
    assert outcome.summary["config"]["aggregation"] == rule
