"""A client whose local round goes non-finite refuses it: the round's reply is an error,
its private state stays the last finite one (memory and disk), and it trains again next
round instead of being lost for the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict

from client.app import DivergedError, open_session, train_session
from client.state import read_state_files
from tests.helpers import client_context, received_arrays


@pytest.mark.parametrize("algorithm", ["fedper", "ditto"])
def test_a_diverged_round_keeps_the_last_finite_state(tmp_path: Path, algorithm: str) -> None:
    state = RecordDict()
    ok = client_context(tmp_path, state, algorithm=algorithm)
    train_session(open_session(ok, received_arrays()), 1, 0.0)
    on_disk, meta = read_state_files(tmp_path / "default" / "client-0")
    assert meta["round"] == 1

    # Same client, same memory, a learning rate that blows the weights up.
    blown = client_context(tmp_path, state, algorithm=algorithm, lr=1e30)
    with pytest.raises(DivergedError, match=r"client 0: .*round 2 .*non-finite"):
        train_session(open_session(blown, received_arrays()), 2, 0.0)

    after, meta = read_state_files(tmp_path / "default" / "client-0")
    assert meta["round"] == 1
    assert after.keys() == on_disk.keys()
    for key, value in on_disk.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
        assert np.isfinite(after[key]).all()
    # In memory too: the next round starts from the finite state and trains normally.
    reply = train_session(open_session(ok, received_arrays()), 3, 0.0)
    assert np.isfinite(float(reply["metrics"]["train-loss"]))
    assert read_state_files(tmp_path / "default" / "client-0")[1]["round"] == 3
