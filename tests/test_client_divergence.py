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
    remedy = r"lower 'lr' or set 'max-grad-norm'"  # a key that exists
    with pytest.raises(DivergedError, match=rf"client 0: .*round 2 .*non-finite.*{remedy}"):
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


def test_max_grad_norm_bounds_every_step() -> None:
    """One SGD step from a fresh momentum buffer moves the weights by lr × the gradient: with
    `max-grad-norm` the gradient's norm over every trainable parameter is at most the bound,
    so the step is at most lr × bound; without it the same batch steps further."""
    import torch

    from client.train import build_model, train_epochs
    from common.config import ConfigError, parse_run_config
    from common.federation import load_client_data
    from common.weighting import EqualWeighting

    def step_length(max_norm: float) -> float:
        cfg = parse_run_config({"max-grad-norm": max_norm, "batch-size": 10_000})
        data = load_client_data(cfg, 0, cfg.num_clients)
        torch.manual_seed(0)
        model = build_model(cfg, data.tasks, data.input_shape)
        before = [p.detach().clone() for p in model.parameters()]
        gen = torch.Generator().manual_seed(0)
        weighting = EqualWeighting([t.name for t in data.tasks])
        train_epochs(model, data.train, weighting, cfg, epochs=1, generator=gen)
        moved = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
        return float(torch.linalg.vector_norm(torch.cat([m.flatten() for m in moved])))

    lr = parse_run_config({}).lr
    assert step_length(0.0) > lr * 0.05  # unclipped: the gradient norm is above 0.05
    assert step_length(0.05) <= lr * 0.05 * (1 + 1e-5)
    with pytest.raises(ConfigError, match="set dp-max-grad-norm instead"):
        parse_run_config({"privacy": "dp-sgd", "max-grad-norm": 1.0})
