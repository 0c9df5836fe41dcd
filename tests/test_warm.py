"""What a warm process keeps between messages, and the simulation's grid setting.

A ClientApp process (a simulation's actor) reuses one model per task set instead of building
it for every message; a client's session must nevertheless start from exactly the model
`build_model` makes, with nothing of the client served before it. In a simulation the
ServerApp's grid looks for replies every `grid-pull-interval` seconds."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from client.app import open_session, train_session
from client.train import build_model
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model, tune_grid
from tests.helpers import TINY, StubGrid

SAME_TASKS = {**TINY, "plan": "left,right,sum"}  # every client holds the same tasks


def _context(client: int, **overrides: object) -> Context:
    node = {"partition-id": client, "num-partitions": 3}
    run_config = {**SAME_TASKS, **overrides}
    return Context(
        run_id=1, node_id=client + 1, node_config=node, state=RecordDict(), run_config=run_config
    )


def _received() -> object:
    cfg = parse_run_config(SAME_TASKS)
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("algorithm", ["fedper", "fedrod"])
def test_a_reused_model_starts_each_session_as_a_freshly_built_one(algorithm: str) -> None:
    received = _received()
    first = open_session(_context(0, algorithm=algorithm), received)
    train_session(first, 1, 0.0)  # trains the kept model in place
    trained = _state(first.model)
    second = open_session(_context(1, algorithm=algorithm), received)
    assert second.model is first.model, "the process built a new model instead of reusing it"
    cfg = parse_run_config({**SAME_TASKS, "algorithm": algorithm})
    fresh = build_model(
        cfg,
        second.data.tasks,
        second.data.input_shape,
        global_heads=get_algorithm(algorithm).global_heads,
    )
    expected = _state(fresh) | {k: v.numpy() for k, v in received.items()}
    got = _state(second.model)
    assert got.keys() == expected.keys()
    for key in got:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    private = [k for k in got if k not in received]
    assert any(not np.array_equal(trained[k], got[k]) for k in private)
    assert all(p.grad is None for p in second.model.parameters())


def test_dp_sgd_sessions_get_a_model_of_their_own() -> None:
    """Opacus wraps and hooks the module it trains: under DP-SGD nothing is reused."""
    received = _received()
    first = open_session(_context(0, privacy="dp-sgd"), received)
    second = open_session(_context(1, privacy="dp-sgd"), received)
    assert second.model is not first.model


def _in_memory_grid() -> InMemoryGrid:
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    return InMemoryGrid(state_factory=factory)


def test_the_simulations_grid_pulls_at_the_configured_interval() -> None:
    grid = _in_memory_grid()
    assert grid.pull_interval == pytest.approx(0.1)  # Flower's default
    tune_grid(grid, parse_run_config({}))
    default = parse_run_config({}).grid_pull_interval
    assert default < 0.1 and grid.pull_interval == pytest.approx(default)
    tune_grid(grid, parse_run_config({"grid-pull-interval": 0.05}))
    assert grid.pull_interval == pytest.approx(0.05)
    other = StubGrid(3)  # any other grid (a deployment's) is left as it is
    tune_grid(other, parse_run_config({}))  # type: ignore[arg-type]
    assert not hasattr(other, "pull_interval")


def test_a_pull_interval_out_of_range_is_refused() -> None:
    for bad in (0, -0.1, 2.0):
        with pytest.raises(ValueError, match="grid-pull-interval"):
            parse_run_config({"grid-pull-interval": bad})
