"""Central DP keeps its promises: the server's noise never follows the run seed, a round that
is short of its fixed client sample releases nothing and says so, and under SecAgg+ the
budget is enforced on the accountant that actually composes the releases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent
from flwr.supercore.task_identity import TaskIdentity

from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model
from server.privacy import make_accountant, release, unreleasable, wrap_central_dp
from server.secure_aggregation import AccountedClientSideFixedClipping, CountingFedAvg
from server.strategies import build_strategy
from tests.helpers import TINY, simulate

CLIPPINGS = ["fixed-server", "fixed-client", "adaptive-server", "adaptive-client"]
SEED = 7  # the run seed, which the server chooses


class Nodes:
    """The one thing a strategy's `configure_train` asks of the grid: who is online."""

    def get_node_ids(self) -> list[int]:
        return [11, 12, 13]


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Messages can only be built inside a task; pretend to be the ServerApp's."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)
    yield


def _cfg(clipping: str = "fixed-server", **extra: object):
    return parse_run_config(
        {
            **TINY,
            "privacy": "central-dp",
            "cdp-clipping": clipping,
            "cdp-clipped-count-stddev": 5.0,
            "seed": SEED,
            **extra,
        }
    )


def _release_once(clipping: str) -> tuple[np.ndarray, float]:
    """One central-DP round through a real Flower wrapper, with NumPy's global RNG seeded
    from the run seed first (as any seeded code in the server process may leave it)."""
    cfg = _cfg(clipping)
    strategy = wrap_central_dp(build_strategy(cfg), cfg, cfg.num_clients)
    sent = ArrayRecord({"w": Array(np.zeros(6, np.float32))})
    np.random.seed(cfg.seed)
    messages = list(strategy.configure_train(1, sent, ConfigRecord(), Nodes()))
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(np.full(6, 0.1 * (i + 1), np.float32))}),
                    "metrics": MetricRecord({"num-examples": 1, "norm_bit": i % 2}),
                }
            ),
            reply_to=msg,
        )
        for i, msg in enumerate(messages)
    ]
    arrays, _ = release(strategy, 1, replies)
    return arrays["w"].numpy(), float(strategy.clipping_norm)


@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_server_noise_does_not_follow_the_global_numpy_seed(
    server_task: None, clipping: str
) -> None:
    first, norm1 = _release_once(clipping)
    second, norm2 = _release_once(clipping)
    assert not np.allclose(first, second), "the same seed gave the same central-DP noise"
    if clipping.startswith("adaptive"):  # the clipped-count query is noised too
        assert norm1 != norm2


def _fitres(value: float, client: int) -> tuple[None, FitRes]:
    params = ndarrays_to_parameters([np.full(6, value, np.float32)])
    return None, FitRes(Status(Code.OK, ""), params, 1, {"client-id": client})


def test_secagg_wrapper_noise_is_unpredictable_and_accounted() -> None:
    cfg = _cfg("fixed-client", secagg=True)
    outputs = []
    for _ in range(2):
        wrapper = AccountedClientSideFixedClipping(CountingFedAvg(), cfg, cfg.num_clients)
        np.random.seed(cfg.seed)
        params, _ = wrapper.aggregate_fit(1, [_fitres(0.1 * i, i) for i in range(3)], [])
        outputs.append(params.tensors)
        assert wrapper.fedmtl_accountant.num_releases == 1
        assert wrapper.strategy.last_clients == ["0", "1", "2"]
    assert outputs[0] != outputs[1]


def test_a_secagg_sum_short_of_the_sample_releases_nothing_and_costs_nothing() -> None:
    cfg = _cfg("fixed-client", secagg=True)
    wrapper = AccountedClientSideFixedClipping(CountingFedAvg(), cfg, cfg.num_clients)
    params, _ = wrapper.aggregate_fit(1, [_fitres(0.1, 0), _fitres(0.2, 1)], [])
    assert params is None
    assert "2 usable updates of the 3" in wrapper.skipped
    assert wrapper.fedmtl_accountant.num_releases == 0
    assert wrapper.strategy.last_clients == ["0", "1"]  # they trained (and keep state)


def test_adaptive_clipping_short_of_its_sample_is_not_released() -> None:
    """Flower's adaptive wrappers would average 2 updates under noise sized for 3."""
    cfg = _cfg("adaptive-server")
    strategy = wrap_central_dp(build_strategy(cfg), cfg, cfg.num_clients)
    reason = unreleasable(strategy, 2, ["client 0: non-finite values"])
    assert reason is not None and "2 usable updates of the 3" in reason and "client 0" in reason
    assert unreleasable(strategy, 3, []) is None
    assert unreleasable(build_strategy(cfg), 2, []) is None  # no central DP, no such rule


def _rows(outcome) -> list[dict]:
    return [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_central_dp_round_with_a_rejected_reply_is_recorded_as_skipped(tmp_path: Path) -> None:
    overrides = {"privacy": "central-dp", "attack": "nan", "attackers": 1}
    outcome = simulate(tmp_path, **overrides)
    rows = _rows(outcome)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert "central DP released nothing" in row["skipped"], row
        assert "client 0" in row["skipped"] and "non-finite" in row["skipped"]
        assert row["central_dp"]["releases"] == 0 and row["central_dp"]["epsilon"] == 0
        assert row["train_loss"] is None
    assert "round 1 trained nothing: central DP released nothing" in outcome.log_path.read_text()
    # Nothing was released: the encoder is still the initial one.
    cfg = parse_run_config({**TINY, **overrides})
    model = initial_model(cfg)
    start = arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))
    final = np.load(outcome.results_dir / "shared_arrays.npz")
    assert sorted(final.files) == sorted(start.keys())
    for key in final.files:
        np.testing.assert_array_equal(final[key], start[key].numpy(), err_msg=key)


@pytest.mark.slow
def test_secagg_with_central_dp_stops_before_the_round_that_would_pass_the_budget(
    tmp_path: Path,
) -> None:
    sigma, clients = 2.0, TINY["num-clients"]
    reference = make_accountant(_cfg(), clients)
    spent = []
    for _ in range(2):
        reference.compose(GaussianPrivacyEvent(sigma, clients, clients))
        spent.append(reference.get_privacy_spent().epsilon)
    budget = (spent[0] + spent[1]) / 2  # room for one release, not two
    outcome = simulate(
        tmp_path,
        **{
            "secagg": True,
            "privacy": "central-dp",
            "cdp-clipping": "fixed-client",
            "cdp-noise-multiplier": sigma,
            "dp-epsilon": budget,
        },
    )
    rows = _rows(outcome)
    assert [r["round"] for r in rows] == [1]
    assert all(r["central_dp"]["epsilon"] <= budget for r in rows)
    assert rows[0]["central_dp"]["epsilon"] == pytest.approx(spent[0], rel=1e-9)
    assert "privacy budget" in outcome.summary["stopped_early"]
