"""Small builders shared by test modules: driving a Flower strategy by hand, as the
ServerApp's round loop does (`configure_train`, then `aggregate_train` on the replies)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message
from flwr.common import Metadata
from flwr.supercore.task_identity import TaskIdentity

Arrays = dict[str, np.ndarray]


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
