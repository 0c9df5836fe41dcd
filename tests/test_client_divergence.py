"""A client whose local round goes non-finite refuses it: the round's reply is an error,
its private state stays the last finite one (memory and disk), and it trains again next
round instead of being lost for the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import DivergedError, open_session, train_session
from client.state import read_state_files
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model
from tests.helpers import TINY


def _context(state_dir: Path, state: RecordDict, **overrides: object) -> Context:
    run_config = {**TINY, "state-dir": str(state_dir), **overrides}
    node = {"partition-id": 0, "num-partitions": 3}
    return Context(run_id=1, node_id=1, node_config=node, state=state, run_config=run_config)


def _received(**overrides: object):
    cfg = parse_run_config({**TINY, **overrides})
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


@pytest.mark.parametrize("algorithm", ["fedper", "ditto"])
def test_a_diverged_round_keeps_the_last_finite_state(tmp_path: Path, algorithm: str) -> None:
    state = RecordDict()
    ok = _context(tmp_path, state, algorithm=algorithm)
    train_session(open_session(ok, _received()), 1, 0.0)
    on_disk, meta = read_state_files(tmp_path / "default" / "client-0")
    assert meta["round"] == 1

    # Same client, same memory, a learning rate that blows the weights up.
    blown = _context(tmp_path, state, algorithm=algorithm, lr=1e30)
    with pytest.raises(DivergedError, match=r"client 0: .*round 2 .*non-finite"):
        train_session(open_session(blown, _received()), 2, 0.0)

    after, meta = read_state_files(tmp_path / "default" / "client-0")
    assert meta["round"] == 1
    assert after.keys() == on_disk.keys()
    for key, value in on_disk.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
        assert np.isfinite(after[key]).all()
    # In memory too: the next round starts from the finite state and trains normally.
    reply = train_session(open_session(ok, _received()), 3, 0.0)
    assert np.isfinite(float(reply["metrics"]["train-loss"]))
    assert read_state_files(tmp_path / "default" / "client-0")[1]["round"] == 3
