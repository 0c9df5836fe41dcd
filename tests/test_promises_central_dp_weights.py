"""Central DP's accounting assumes every client weighs the same: clients report
`num-examples = 1`, and Flower's fixed-clipping wrappers refuse unequal weights. A client may
claim any other weight, though, and the reply check only bounds weights from above (r × the
median). Such a reply must be rejected like any other bad reply, under every `cdp-clipping`:

- fixed clipping: Flower's wrapper raises on unequal weights inside `aggregate_train`, so one
  client claiming 2 stops the whole run instead of losing its own reply;
- adaptive clipping: the wrapper averages with the claimed weights, under noise sized for
  equal ones; a client claiming a tiny weight leaves the others a larger share of the
  average than the accountant assumes (their ε is then understated)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.differential_privacy import KEY_NORM_BIT
from flwr.supercore.task_identity import TaskIdentity

from common.config import parse_run_config
from server.privacy import wrap_central_dp
from server.strategies import build_strategy
from server.validation import ReplyValidator
from tests.helpers import TINY

CLIPPINGS = ["fixed-server", "fixed-client", "adaptive-server", "adaptive-client"]


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


@pytest.mark.parametrize("weight", [2, 1e-3], ids=["heavier", "lighter"])
@pytest.mark.parametrize("clipping", CLIPPINGS)
def test_a_central_dp_reply_claiming_another_weight_is_rejected(
    server_task: None, clipping: str, weight: float
) -> None:
    cfg = parse_run_config(
        {**TINY, "privacy": "central-dp", "cdp-clipping": clipping, "cdp-clipped-count-stddev": 5.0}
    )
    strategy = wrap_central_dp(build_strategy(cfg), cfg, cfg.num_clients)
    sent = ArrayRecord({"w": Array(np.zeros(6, np.float32))})
    messages = list(strategy.configure_train(1, sent, ConfigRecord(), Nodes()))
    replies = []
    for client, msg in enumerate(messages):
        metrics = {"num-examples": weight if client == 2 else 1, "train-loss": 1.0}
        if clipping == "adaptive-client":
            metrics[KEY_NORM_BIT] = 0
        update = ArrayRecord({"w": Array(np.full(6, 0.1, np.float32))})
        identity = ConfigRecord({"client-id": client, "tasks": "left"})
        content = RecordDict(
            {"arrays": update, "metrics": MetricRecord(metrics), "task-metrics": identity}
        )
        replies.append(Message(content, reply_to=msg))
    good, rejected = ReplyValidator.for_run(cfg).check_train(1, replies, sent)
    assert [r.client for r in rejected] == ["2"], "a claimed weight other than 1 was accepted"
    assert "num-examples" in rejected[0].reason
    assert len(good) == 2
