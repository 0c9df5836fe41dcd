"""Everything test modules share, in one module that is imported once (as `tests.helpers`):

- real Flower simulations, small enough for CI: `TINY`, `run_tiny`, `simulate`, all on one
  SuperLink per pytest session (`engine`, stopped by the session fixture in conftest.py);
- builders that drive a Flower strategy by hand, as the ServerApp's round loop does
  (`configure_train`, then `aggregate_train` on the replies).

Test modules import from here, never from conftest.py: pytest loads conftest.py under a name
of its own, so an import of `tests.conftest` would be a second copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.common import Metadata
from flwr.supercore.task_identity import TaskIdentity

from deploy.runs import Outcome
from deploy.simulation import SimulationEngine

Arrays = dict[str, np.ndarray]

# --- real simulations ---

# Small but real: 3 clients with different task sets, 2 rounds, little data.
TINY: dict[str, Any] = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "samples-per-client": 120,
    "local-epochs": 1,
    "hidden": 32,
}

_engine: SimulationEngine | None = None


def engine() -> SimulationEngine:
    """The session's simulation engine, started on first use."""
    global _engine
    if _engine is None:
        _engine = SimulationEngine().__enter__()
    return _engine


def stop_engine() -> None:
    """Stop the session's engine (and everything it started), if one was started."""
    global _engine
    if _engine is not None:
        _engine.__exit__(None, None, None)
        _engine = None


def run_tiny(results_dir: Path, **overrides: Any) -> Outcome:
    """Run the app through Flower's simulation engine with TINY defaults + overrides."""
    cfg = {**TINY, "results-dir": str(results_dir), **overrides}
    return engine().run(cfg, echo=False, timeout=400)


def simulate(results_dir: Path, **overrides: Any) -> Outcome:
    """`run_tiny` that must succeed (the Flower log tail is shown when it does not)."""
    outcome = run_tiny(results_dir, **overrides)
    if not outcome.ok:
        tail = outcome.log_path.read_text()[-4000:] if outcome.log_path.exists() else ""
        pytest.fail(f"simulation failed ({outcome.status}/{outcome.flower_status}):\n{tail}")
    return outcome


def client_context(state_dir: Path, state: RecordDict, **overrides: Any) -> Context:
    """The Context a ClientApp gets for client 0 of 3 (TINY + overrides, `state-dir`)."""
    run_config = {**TINY, "state-dir": str(state_dir), **overrides}
    node = {"partition-id": 0, "num-partitions": 3}
    return Context(run_id=1, node_id=1, node_config=node, state=state, run_config=run_config)


def received_arrays(**overrides: Any) -> ArrayRecord:
    """The shared arrays the server sends in round 1 under TINY + overrides."""
    from common.algorithms import get_algorithm
    from common.config import parse_run_config
    from common.records import arrays_from_model, model_shared_keys
    from server.app import initial_model

    cfg = parse_run_config({**TINY, **overrides})
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


# --- driving a strategy by hand ---


class StubGrid:
    """The one thing `configure_train` asks of a Grid: which nodes are connected."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_nodes + 1))


def act_as_serverapp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this process the identity a ServerApp has, so strategies can create messages
    (restored by monkeypatch when the test ends)."""
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def record(arrays: Arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def train_reply(node: int, arrays: Arrays, num_examples: int) -> Message:
    """A training reply as the server receives it from `node`."""
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"train-{node}",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {"arrays": record(arrays), "metrics": MetricRecord({"num-examples": num_examples})}
    )
    return make_message(metadata, content=content)


def strategy_round(
    strategy: object, rnd: int, current: Arrays, updates: Sequence[Arrays], weights: Sequence[int]
) -> Arrays:
    """One round through a real strategy: it is sent `current`, the clients reply `updates`
    with `weights` examples; returns what it aggregates to."""
    grid = StubGrid(len(updates))
    list(strategy.configure_train(rnd, record(current), ConfigRecord(), grid))  # type: ignore[attr-defined]
    replies = [
        train_reply(i + 1, u, w) for i, (u, w) in enumerate(zip(updates, weights, strict=True))
    ]
    arrays, _ = strategy.aggregate_train(rnd, replies)  # type: ignore[attr-defined]
    assert arrays is not None, f"{type(strategy).__name__} aggregated nothing in round {rnd}"
    return {k: np.asarray(v.numpy()) for k, v in arrays.items()}


# --- a user-data federation (dataset `user`) ---

USER_SCHEMA: dict[str, Any] = {
    "inputs": ["a", "b", "c"],
    "tasks": [
        {"name": "diagnosis", "kind": "multiclass", "column": "dx", "num_classes": 3},
        {"name": "flag", "kind": "binary"},
        {"name": "los", "kind": "regression", "offset": 5, "scale": 2},
    ],
    "partition_by": "dx",
}


def user_federation(
    directory: Path, rows: int = 240, seed: int = 0, bad_cell: tuple[int, str] | None = None
) -> tuple[Path, Path]:
    """A generated CSV data file and its schema (the format of README's 'Bring your own
    data'): labels that depend on the inputs, so there is something to learn.
    `bad_cell` = (row, text) writes `text` into that row's `dx` cell."""
    import json

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    dx = np.digitize(x[:, 0] + 0.3 * rng.normal(size=rows), [-0.4, 0.4])
    flag = (x[:, 1] > 0).astype(int)
    los = 5 + 2 * x[:, 2] + 0.2 * rng.normal(size=rows)
    lines = ["a,b,c,dx,flag,los"]
    for i in range(rows):
        label = bad_cell[1] if bad_cell and bad_cell[0] == i else str(dx[i])
        lines.append(f"{x[i, 0]:.4f},{x[i, 1]:.4f},{x[i, 2]:.4f},{label},{flag[i]},{los[i]:.3f}")
    data, schema = directory / "site.csv", directory / "site.schema.json"
    data.write_text("\n".join(lines) + "\n")
    schema.write_text(json.dumps(USER_SCHEMA))
    return data, schema
