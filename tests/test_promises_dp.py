"""DP-SGD's budget and its accounting, on the paths tests/test_dp.py does not take: the round
that would pass `dp-epsilon` is refused before it trains (the budget fits exactly one round
here, so the refusal is immediate), and a local round that went non-finite is refused but
still counted: its data were used, so the accountant history kept in the client's state
includes it and the next round's ε does too."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.app import DivergedError, open_session, train_session
from client.dp import PrivacyBudgetExhausted, dp_round, epsilon
from client.state import read_state_files
from client.train import build_model, build_weighting
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.federation import load_client_data
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model
from tests.helpers import TINY

DP_SGD = {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0, "dp-epsilon": 100.0}


def _context(state_dir: Path, state: RecordDict, **overrides: object) -> Context:
    run_config = {**TINY, **DP_SGD, "state-dir": str(state_dir), **overrides}
    node = {"partition-id": 0, "num-partitions": TINY["num-clients"]}
    return Context(run_id=1, node_id=1, node_config=node, state=state, run_config=run_config)


def _received():
    cfg = parse_run_config({**TINY, **DP_SGD})
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


def test_a_diverged_dp_sgd_round_still_counts_in_the_accountant_history(tmp_path: Path) -> None:
    state = RecordDict()
    train_session(open_session(_context(tmp_path, state), _received()), 1, 0.0)
    _, meta = read_state_files(tmp_path / "default" / "client-0")
    assert len(meta["dp_history"]) == 1
    blown = _context(tmp_path, state, lr=1e30)  # the weights overflow in round 2
    with pytest.raises(DivergedError, match=r"client 0: .*round 2 .*non-finite"):
        train_session(open_session(blown, _received()), 2, 0.0)
    _, meta = read_state_files(tmp_path / "default" / "client-0")
    assert meta["round"] == 1, "the non-finite state was kept"
    assert len(meta["dp_history"]) == 2, "the refused round's privacy cost was forgotten"
    # The next round reports ε over all three rounds' steps, the refused one included.
    reply = train_session(open_session(_context(tmp_path, state), _received()), 3, 0.0)
    _, meta = read_state_files(tmp_path / "default" / "client-0")
    assert len(meta["dp_history"]) == 3
    reported = float(reply["task-metrics"]["dp-epsilon"])
    delta = parse_run_config(DP_SGD).dp_delta
    assert reported == pytest.approx(epsilon(meta["dp_history"], delta), rel=1e-12)


def test_the_round_that_would_pass_dp_epsilon_is_refused_before_it_trains() -> None:
    cfg = parse_run_config({**TINY, **DP_SGD})
    data = load_client_data(cfg, 0, cfg.num_clients)
    model = build_model(cfg, data.tasks, data.input_shape)
    weighting = build_weighting(cfg, data.task_names, data.task_names)
    _, history, first = dp_round(model, data, weighting, cfg, 1, [])
    two_rounds = epsilon(history * 2, cfg.dp_delta)
    budget = (first + two_rounds) / 2  # room for one round, not for two
    cfg = parse_run_config({**TINY, **DP_SGD, "dp-epsilon": budget})
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(PrivacyBudgetExhausted, match=r"client 0: round 2 would bring ε to"):
        dp_round(model, data, weighting, cfg, 2, history)
    assert all(p.detach().equal(b) for p, b in zip(model.parameters(), before, strict=True))
