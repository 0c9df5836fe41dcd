"""The evaluation a training reply carries (one message wave per round): checked as an
evaluation reply of its own, on hand-built replies; a reply without a usable one counts as
a failed evaluation, named."""

from __future__ import annotations

from typing import Any

from flwr.app import (
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message.message import make_message

from common.config import parse_run_config
from common.records import EVALUATION_METRICS, EVALUATION_TASKS
from server.rounds import TAIL, piggybacked_evaluation, with_evaluation
from server.strategies import build_strategy
from server.validation import ReplyValidator
from tests.helpers import TINY

TASKS = ["left", "right", "sum", "parity", "equal"]
ENTRIES = {"val/left/accuracy": 0.5, "test/left/accuracy": 0.6, "test/left/n": 21}


def _reply(node: int, content: RecordDict | None, error: Error | None = None) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"m{node}",
        group_id="2",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return make_message(metadata, content=content, error=error)


def train_reply(node: int, evaluation: dict[str, Any] | None = None) -> Message:
    """Client node − 1's training reply (holding task `left`), carrying `evaluation` (the
    evaluation's metrics) when given."""
    identity = {"client-id": node - 1, "tasks": "left"}
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 100, "train-loss": 1.0}),
            "task-metrics": ConfigRecord(identity),
        }
    )
    if evaluation is not None:
        content[EVALUATION_METRICS] = ConfigRecord(evaluation)
        content[EVALUATION_TASKS] = ConfigRecord({**identity, **ENTRIES})
    return _reply(node, content)


GOOD = {"num-examples": 21, "val-loss": 2.0, "test-loss": 1.5}


def _evaluate(replies: list[Message], sent: int) -> dict[str, Any]:
    strategy = build_strategy(parse_run_config(TINY))
    validator = ReplyValidator(TASKS)
    return piggybacked_evaluation(strategy, 1, [None] * sent, replies, validator, set(range(9)))


def test_the_evaluations_a_training_wave_carries_make_the_previous_rounds_metrics() -> None:
    got = _evaluate([train_reply(1, GOOD), train_reply(2, GOOD)], sent=2)
    assert got["eval_failures"] == 0 and got["eval_rejected"] == []
    assert sorted(got["per_client"]) == ["0", "1"]
    assert got["per_client"]["0"]["left"] == {
        "val/accuracy": 0.5,
        "test/accuracy": 0.6,
        "n": 21.0,
    }
    assert got["per_task"]["left"]["test/accuracy"]["clients"] == 2


def test_a_missing_or_malformed_evaluation_is_a_named_failure() -> None:
    replies = [
        train_reply(1, GOOD),
        train_reply(2),  # none at all
        train_reply(3, {**GOOD, "test-loss": "low"}),  # not a number
        train_reply(4, {**GOOD, "extra": 1.0}),  # keys differ from an evaluation reply's
        _reply(5, None, Error(code=0, reason="boom")),
    ]
    got = _evaluate(replies, sent=6)  # and one node sent no reply at all
    assert sorted(got["per_client"]) == ["0"]
    assert got["eval_failures"] == 5
    reasons = {r["client"]: r["reason"] for r in got["eval_rejected"]}
    assert "carries no valid evaluation of round 1" in reasons["1"]
    assert "carries no valid evaluation of round 1" in reasons["2"]
    assert "'metrics' has keys" in reasons["3"]
    assert "error reply: boom" in reasons["node-5"]


def test_a_late_line_gets_its_evaluation_and_keeps_its_last_keys_last() -> None:
    row = {"round": 1, "clients": 3, "failures": 1, "bytes_up": 5, "bytes_down": 7, "seconds": 2}
    evaluation = {"eval_failures": 2, "eval_rejected": [], "per_task": {}, "per_client": {}}
    got = with_evaluation(row, evaluation)
    assert got["failures"] == 3
    assert list(got)[-len(TAIL) :] == list(TAIL)
    assert list(got)[:4] == ["round", "clients", "failures", "eval_rejected"]
