"""Reply validation: every check on hand-built replies (as the server receives them), and on
real simulations: every malformed reply is rejected with a reason naming its client and the
run completes; when nothing usable is left, the run fails clearly."""

from __future__ import annotations

import json
from typing import Any

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
from flwr.serverapp.strategy import FedAvg

from client.byzantine import (
    ATTACKS,
    EVAL_ATTACKS,
    HEAD_ATTACKS,
    MIXED,
    MIXED_TASK,
    UPDATE_ATTACKS,
    attack_heads,
    attack_update,
    forge_evaluation,
)
from client.train import build_model
from common.algorithms import get_algorithm
from common.config import CHOICES, parse_run_config
from common.datasets import dataset_tasks
from common.federation import load_client_data
from common.records import TASK_ARRAYS, model_task_keys
from server.task_heads import TaskAwareHeads, initial_task_arrays
from server.validation import ReplyValidator, arrays_problem, heads_problem
from tests.helpers import TINY, run_tiny, simulate

TASKS = ["left", "sum", "parity"]
SENT = ArrayRecord({"enc.w": Array(np.zeros((2, 3), np.float32))})
# Every task's federated head, as the server starts from it.
LAYOUT = ArrayRecord(
    {
        "heads.left.0.weight": Array(np.zeros((4, 3), np.float32)),
        "heads.left.0.bias": Array(np.zeros(4, np.float32)),
        "heads.sum.0.weight": Array(np.zeros((1, 3), np.float32)),
        "heads.sum.0.bias": Array(np.zeros(1, np.float32)),
        "heads.parity.0.weight": Array(np.zeros((1, 3), np.float32)),
        "heads.parity.0.bias": Array(np.zeros(1, np.float32)),
    }
)
EVAL_RECORD = {
    "val/left/accuracy": 0.5,
    "val/left/macro_f1": 0.4,
    "val/left/loss": 1.2,
    "val/left/n": 20,
    "test/left/accuracy": 0.6,
    "test/left/n": 21,
    "test/sum/mae": 2.0,
    "test/sum/rmse": 2.5,
    "test/sum/r2": -0.3,
    "test/sum/loss": 0.8,
    "test/sum/n": 21,
}


def _message(node: int, content: RecordDict, kind: str) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=kind,
    )
    return make_message(metadata, content=content)


def train_reply(
    node: int,
    client: int | None = None,
    tasks: str = "left,sum",
    *,
    update: float = 0.1,
    head_update: float = 0.1,
    heads: dict[str, np.ndarray] | None = None,
    metrics: dict[str, Any] | None = None,
    drop: str = "",
) -> Message:
    """An honest training reply of `client` (default: node − 1) holding `tasks`: the shared
    arrays and its tasks' heads moved by `update` / `head_update`; `heads` replaces arrays,
    `metrics` the metrics, and `drop` leaves out one head array."""
    client = node - 1 if client is None else client
    own = {
        k: np.asarray(v.numpy() + head_update, np.float32)
        for k, v in LAYOUT.items()
        if k.split(".")[1] in tasks.split(",")
    }
    own = {k: v for k, v in {**own, **(heads or {})}.items() if k != drop}
    content = RecordDict(
        {
            "arrays": ArrayRecord({"enc.w": Array(np.full((2, 3), update, np.float32))}),
            TASK_ARRAYS: ArrayRecord({k: Array(v) for k, v in own.items()}),
            "metrics": MetricRecord(metrics or {"num-examples": 100, "train-loss": 1.0}),
            "task-metrics": ConfigRecord({"client-id": client, "tasks": tasks}),
        }
    )
    return _message(node, content, MessageType.TRAIN)


def eval_reply(
    node: int,
    client: int | None = None,
    tasks: str = "left,sum",
    *,
    entries: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Message:
    client = node - 1 if client is None else client
    record = {"client-id": client, "tasks": tasks, **EVAL_RECORD, **(entries or {})}
    content = RecordDict(
        {
            "metrics": MetricRecord(
                metrics or {"num-examples": 21, "val-loss": 2.0, "test-loss": 1.5}
            ),
            "task-metrics": ConfigRecord(record),
        }
    )
    return _message(node, content, MessageType.EVALUATE)


def validator(heads: ArrayRecord | None = LAYOUT, ratio: float = 10.0) -> ReplyValidator:
    return ReplyValidator(TASKS, heads, max_update_ratio=ratio)


def reasons(rejected: list) -> dict[str, str]:
    return {r.client: r.reason for r in rejected}


# -- attacks ------------------------------------------------------------------------------


def test_every_attack_name_has_an_implementation() -> None:
    handled = {"none", "label-flip", "mixed", "mixed-task"}
    handled |= set(UPDATE_ATTACKS) | set(HEAD_ATTACKS) | set(EVAL_ATTACKS)
    assert handled == set(CHOICES["attack"]) == set(ATTACKS)
    assert set(MIXED) <= set(UPDATE_ATTACKS) and set(MIXED_TASK) == {*HEAD_ATTACKS, *EVAL_ATTACKS}


def test_each_malformation_is_named() -> None:
    sent = ArrayRecord(
        {"a": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}
    )
    honest = ArrayRecord(
        {"a": Array(np.ones((2, 3), np.float32)), "b": Array(np.ones(3, np.float32))}
    )
    assert arrays_problem(honest, sent) is None
    expected = {
        "nan": "non-finite",
        "malformed-keys": "keys differ",
        "malformed-shape": "sent float32[2, 3]",
        "malformed-dtype": "float64",
    }
    for attack, needle in expected.items():
        bad = attack_update(attack, sent, honest, 1.0, seed=0)
        assert needle in arrays_problem(bad, sent), attack
    flipped = attack_update("sign-flip", sent, honest, 1.0, seed=0)
    assert np.allclose(flipped["a"].numpy(), -1.0)


def test_each_head_attack_is_named() -> None:
    honest = ArrayRecord({k: v for k, v in LAYOUT.items() if k.startswith("heads.left.")})
    assert heads_problem(honest, ["left"], LAYOUT) is None
    expected = {
        "head-shape": "expected float32[4, 3]",
        "head-missing": "missing ['heads.left.0.weight']",
        "head-nan": "non-finite",
    }
    for attack, needle in expected.items():
        bad = attack_heads(attack, honest, 1000.0)
        assert needle in heads_problem(bad, ["left"], LAYOUT), attack
    # The cut shape broadcasts against the real one: only an explicit check catches it.
    cut = attack_heads("head-shape", honest, 1.0)["heads.left.0.weight"].numpy()
    assert np.broadcast_shapes(cut.shape, (4, 3)) == (4, 3)
    scaled = attack_heads("head-scale", ArrayRecord({"h": Array(np.ones(2, np.float32))}), 50.0)
    assert np.allclose(scaled["h"].numpy(), 50.0)


def test_each_evaluation_forgery_changes_what_it_names() -> None:
    record = {"client-id": 2, "tasks": "left,sum", **EVAL_RECORD}
    ranged = forge_evaluation("eval-range", record, TASKS, 4)
    assert ranged["test/left/accuracy"] == -1.0 and ranged["test/left/n"] == -1
    assert forge_evaluation("eval-spoof-id", record, TASKS, 4)["client-id"] == 3
    foreign = forge_evaluation("eval-tasks", record, TASKS, 4)
    assert foreign["tasks"] == "left,sum,parity" and foreign["test/parity/accuracy"] == 0.6
    assert forge_evaluation("head-nan", record, TASKS, 4) == record


# -- heads --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["fedavg", "fedrod"])
def test_the_server_starts_from_every_tasks_head_as_the_clients_build_it(algorithm: str) -> None:
    cfg = parse_run_config({**TINY, "algorithm": algorithm})
    initial = initial_task_arrays(cfg)
    assert {k.split(".")[1] for k in initial} == set(dataset_tasks(cfg))
    assert TaskAwareHeads(FedAvg(), initial).task_arrays.keys() == initial.keys()
    data = load_client_data(cfg, 1, TINY["num-clients"])
    model = build_model(cfg, data.tasks, data.input_shape, global_heads=algorithm == "fedrod")
    keys = model_task_keys(model, get_algorithm(algorithm))
    state = model.state_dict()
    assert keys and all(k in initial for k in keys)
    for key in keys:
        assert initial[key].dtype == "float32"
        assert np.array_equal(initial[key].numpy(), state[key].numpy()), key


def test_a_broadcastable_head_shape_is_rejected_in_round_one() -> None:
    cfg = parse_run_config({**TINY, "algorithm": "fedavg"})
    initial = initial_task_arrays(cfg)
    check = ReplyValidator(dataset_tasks(cfg), initial, max_update_ratio=10.0)
    heads = {k: v.numpy() for k, v in initial.items() if k.split(".")[1] in ("left", "sum")}
    cut = dict(heads, **{"heads.left.0.weight": heads["heads.left.0.weight"][:1]})
    replies = []
    for node, own in ((1, heads), (2, cut)):
        msg = train_reply(node, heads={}, metrics=None)
        msg.content[TASK_ARRAYS] = ArrayRecord({k: Array(v) for k, v in own.items()})
        msg.content["arrays"] = ArrayRecord()
        replies.append(msg)
    good, rejected = check.check_train(1, replies, ArrayRecord(), sent_heads=initial)
    assert [m.metadata.src_node_id for m in good] == [1]
    assert (
        "'heads.left.0.weight' is float32[1, 32], expected float32[32, 32]"
        in (reasons(rejected)["1"])
    )


def test_head_keys_must_be_exactly_those_of_the_reported_tasks() -> None:
    replies = [
        train_reply(1),
        train_reply(2, drop="heads.sum.0.bias"),
        train_reply(3, heads={"heads.parity.0.bias": np.zeros(1, np.float32)}),
        train_reply(4, heads={"heads.left.extra": np.zeros(1, np.float32)}),
    ]
    del replies[0].content.array_records[TASK_ARRAYS]
    replies.append(train_reply(5))
    good, rejected = validator().check_train(1, replies, SENT)
    why = reasons(rejected)
    assert [m.metadata.src_node_id for m in good] == [5]
    assert why["0"] == "no 'task-arrays' record"
    assert "missing ['heads.sum.0.bias']" in why["1"]
    assert "extra ['heads.parity.0.bias']" in why["2"]
    assert "extra ['heads.left.extra']" in why["3"]


def test_heads_are_refused_where_none_are_federated() -> None:
    good, rejected = validator(heads=None).check_train(1, [train_reply(1)], SENT)
    assert not good
    assert "unexpected array records ['task-arrays']" in rejected[0].reason


def test_head_dtype_and_non_finite_values_are_rejected() -> None:
    replies = [
        train_reply(1, heads={"heads.left.0.bias": np.zeros(4, np.float64)}),
        train_reply(2, heads={"heads.sum.0.weight": np.full((1, 3), np.inf, np.float32)}),
        train_reply(3),
    ]
    good, rejected = validator().check_train(1, replies, SENT)
    why = reasons(rejected)
    assert len(good) == 1
    assert "'heads.left.0.bias' is float64[4], expected float32[4]" in why["0"]
    assert "'heads.sum.0.weight' has non-finite values" in why["1"]


def test_a_reply_missing_a_head_array_is_rejected_and_the_round_aggregates() -> None:
    strategy = TaskAwareHeads(FedAvg(), LAYOUT)
    replies = [train_reply(1), train_reply(2, drop="heads.left.0.weight"), train_reply(3)]
    good, rejected = validator().check_train(1, replies, SENT, sent_heads=strategy.task_arrays)
    assert [r.client for r in rejected] == ["1"]
    arrays, _ = strategy.aggregate_train(1, good)
    assert arrays is not None
    assert np.allclose(strategy.task_arrays["heads.left.0.weight"].numpy(), 0.1)


def test_head_update_norms_are_bounded_per_task() -> None:
    replies = [
        train_reply(1, tasks="left,sum"),
        train_reply(2, tasks="left"),
        train_reply(
            3, tasks="left,parity", heads={"heads.left.0.bias": np.full(4, 50.0, np.float32)}
        ),
        train_reply(4, tasks="parity"),
    ]
    good, rejected = validator().check_train(1, replies, SENT)
    assert [m.metadata.src_node_id for m in good] == [1, 2, 4]
    assert "task 'left' head update norm 100 exceeds 10 × median" in reasons(rejected)["2"]


def test_head_update_norm_is_measured_from_the_head_that_was_sent() -> None:
    sent_heads = ArrayRecord({k: Array(v.numpy() + 5.0) for k, v in LAYOUT.items()})
    # Nodes 1 and 2 moved the sent heads by 0.1; node 3 sent back the initial heads (−5).
    replies = [
        train_reply(1, head_update=5.1),
        train_reply(2, head_update=5.1),
        train_reply(3, head_update=0.0),
    ]
    good, rejected = validator().check_train(2, replies, SENT, sent_heads=sent_heads)
    assert [m.metadata.src_node_id for m in good] == [1, 2]
    assert "head update norm" in reasons(rejected)["2"]


# -- bounds with few replies ----------------------------------------------------------------


def test_with_one_or_two_replies_the_bounds_use_recent_rounds() -> None:
    check = validator()
    good, _ = check.check_train(1, [train_reply(n) for n in (1, 2, 3)], SENT)
    assert len(good) == 3
    huge_norm = train_reply(2, update=1000.0)
    huge_weight = train_reply(3, metrics={"num-examples": 10**6, "train-loss": 1.0})
    for bad, needle in ((huge_norm, "update norm"), (huge_weight, "num-examples")):
        good, rejected = check.check_train(2, [train_reply(1), bad], SENT)
        assert [m.metadata.src_node_id for m in good] == [1]
        assert needle in rejected[0].reason and "× median with the last" in rejected[0].reason
    # Alone in its round, a huge update is still compared with the recent ones.
    _, rejected = check.check_train(3, [train_reply(2, update=1000.0)], SENT)
    assert "update norm" in rejected[0].reason


def test_where_the_server_clips_every_update_a_large_one_is_not_rejected() -> None:
    """Central DP clipped on the server: a large update is clipped like the others, and
    rejecting it would withhold the round's release. Clipped on the client, the server
    cannot clip it and still bounds it."""
    from common.config import parse_run_config

    def rejected_for(clipping: str) -> list:
        cfg = parse_run_config(
            {
                "privacy": "central-dp",
                "cdp-clipping": clipping,
                "cdp-clipped-count-stddev": 1.0,
                "max-update-ratio": 10.0,
            }
        )
        check = ReplyValidator.for_run(cfg)
        check.layout = LAYOUT  # the fake replies' heads
        replies = [train_reply(n, metrics={"num-examples": 1, "train-loss": 1.0}) for n in (1, 2)]
        huge = train_reply(3, update=1000.0, metrics={"num-examples": 1, "train-loss": 1.0})
        return check.check_train(1, [*replies, huge], SENT)[1]

    assert rejected_for("fixed-server") == [] and rejected_for("adaptive-server") == []
    (rejection,) = rejected_for("fixed-client")
    assert rejection.reason == "update norm 2.45e+03 exceeds 10 × median = 2.45"


def test_two_first_replies_are_bounded_by_the_smaller() -> None:
    good, rejected = validator().check_train(
        1, [train_reply(1), train_reply(2, update=1000.0)], SENT
    )
    assert [m.metadata.src_node_id for m in good] == [1]
    assert "update norm" in rejected[0].reason and "× smallest" in rejected[0].reason


# -- metric records -------------------------------------------------------------------------


def test_training_metrics_must_have_the_keys_every_client_sends() -> None:
    extra = {"num-examples": 100, "train-loss": 1.0, "boost": 3.0}
    replies = [
        train_reply(1),
        train_reply(2, metrics=extra),
        train_reply(3, metrics={"num-examples": 100, "train-loss": float("nan")}),
        train_reply(4),
        train_reply(5),
    ]
    replies[3].content["more-metrics"] = MetricRecord({"boost": 3.0})
    good, rejected = validator(heads=None).check_train(1, _without_heads(replies), SENT)
    why = reasons(rejected)
    assert [m.metadata.src_node_id for m in good] == [1, 5]
    assert "'metrics' has keys ['boost', 'num-examples', 'train-loss']" in why["1"]
    assert "metric 'train-loss' is nan, not finite" in why["2"]
    assert "metric records ['metrics', 'more-metrics'], expected ['metrics']" in why["3"]
    # What is left, Flower's FedAvg aggregates (it aborts the round on differing keys).
    arrays, metrics = FedAvg().aggregate_train(1, good)
    assert arrays is not None and metrics["train-loss"] == pytest.approx(1.0)


def _without_heads(replies: list[Message]) -> list[Message]:
    for msg in replies:
        del msg.content.array_records[TASK_ARRAYS]
    return replies


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        (
            {"num-examples": 21, "val-loss": 2.0},
            "expected ['num-examples', 'test-loss', 'val-loss']",
        ),
        ({"num-examples": 21, "val-loss": 2.0, "test-loss": float("inf")}, "not finite"),
        ({"num-examples": 21, "val-loss": -2.0, "test-loss": 1.0}, "val-loss is -2.0, below 0"),
        ({"num-examples": 2.5, "val-loss": 2.0, "test-loss": 1.0}, "not an integer >= 0"),
    ],
)
def test_evaluation_metrics_record_is_checked(metrics: dict, needle: str) -> None:
    good, rejected = validator().check_evaluate(1, [eval_reply(1, metrics=metrics), eval_reply(2)])
    assert len(good) == 1 and needle in rejected[0].reason


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"test/left/accuracy": 1.5}, "'test/left/accuracy' = 1.5 is outside its range [0, 1]"),
        ({"val/left/macro_f1": -0.1}, "'val/left/macro_f1' = -0.1 is outside its range [0, 1]"),
        ({"test/sum/mae": -1.0}, "'test/sum/mae' = -1 is outside its range [0, inf]"),
        ({"test/sum/rmse": float("nan")}, "'test/sum/rmse' is nan, not a finite number"),
        ({"test/sum/loss": float("inf")}, "not a finite number"),
        ({"test/sum/r2": 1.5}, "'test/sum/r2' = 1.5 is outside its range [-inf, 1]"),
        ({"test/left/miou": 1.2}, "'test/left/miou' = 1.2 is outside its range [0, 1]"),
        ({"val/left/pixel_accuracy": 1.5}, "'val/left/pixel_accuracy' = 1.5 is outside"),
        ({"test/sum/abs_rel": -0.5}, "'test/sum/abs_rel' = -0.5 is outside its range [0, inf]"),
        ({"test/left/n": 0}, "'test/left/n' is 0, not a positive integer"),
        ({"test/left/n": 2.5}, "not a positive integer"),
        ({"test/left/boost": 1.0}, "'test/left/boost' is not a known metric"),
        ({"train/left/accuracy": 0.5}, "unexpected entry 'train/left/accuracy'"),
        ({"test/parity/accuracy": 0.9}, "task 'parity' is not one of the client's tasks"),
    ],
)
def test_evaluation_metrics_must_be_valid(entry: dict, needle: str) -> None:
    good, rejected = validator().check_evaluate(1, [eval_reply(1, entries=entry), eval_reply(2)])
    assert [m.metadata.src_node_id for m in good] == [2]
    assert needle in rejected[0].reason


# -- identities ---------------------------------------------------------------------------


def test_client_ids_and_tasks_are_bound_to_their_nodes() -> None:
    check = validator()
    good, _ = check.check_train(1, [train_reply(1), train_reply(2), train_reply(3)], SENT)
    assert len(good) == 3  # nodes 1, 2, 3 are clients 0, 1, 2
    replies = [
        eval_reply(1),
        eval_reply(4, client=0),  # a new node claiming a live node's id
        eval_reply(3, client=7),  # a node changing its id
        eval_reply(8, client=5),  # two new nodes claiming one id
        eval_reply(9, client=5),
    ]
    good, rejected = check.check_evaluate(1, replies, live_nodes={1, 2, 3, 4, 8, 9})
    why = {r.node: r.reason for r in rejected}
    assert [m.metadata.src_node_id for m in good] == [1]
    assert why[4] == "claims client id 0, which node 1 holds"
    assert why[3] == "node 3 is client 2 but now claims client id 7"
    assert why[8] == why[9] == "claims client id 5, as another node does in the same round"
    assert {r.node: r.client for r in rejected}[3] == "2"  # named by the id the server knows
    # The tasks a client reports are those it trained with.
    _, rejected = check.check_evaluate(2, [eval_reply(1, tasks="left,sum,parity")])
    assert "reports tasks ['left', 'sum', 'parity'], but client 0 holds ['left', 'sum']" in (
        rejected[0].reason
    )
    _, rejected = check.check_train(2, [train_reply(1, tasks="left")], SENT)
    assert "but client 0 holds ['left', 'sum']" in rejected[0].reason


def test_a_restarted_node_takes_over_its_id_once_the_old_node_has_left() -> None:
    check = validator()
    check.check_train(1, [train_reply(1), train_reply(2), train_reply(3)], SENT)
    good, rejected = check.check_evaluate(2, [eval_reply(9, client=2)], live_nodes={1, 2, 3, 9})
    assert not good and "which node 3 holds" in rejected[0].reason
    good, _ = check.check_evaluate(3, [eval_reply(9, client=2)], live_nodes={1, 2, 9})
    assert len(good) == 1
    _, rejected = check.check_evaluate(4, [eval_reply(3, client=2)], live_nodes={1, 2, 3, 9})
    assert "which node 9 holds" in rejected[0].reason


def test_a_reply_must_name_its_client_and_dataset_tasks() -> None:
    replies = [eval_reply(1, client=-1), eval_reply(2, tasks="left,colour"), eval_reply(3)]
    replies[2].content["task-metrics"]["tasks"] = "left,left"
    _, rejected = validator().check_evaluate(1, replies)
    assert [r.reason for r in rejected] == [
        "client-id is -1, not an integer >= 0",
        "reports unknown tasks ['colour']; the dataset's tasks are ['left', 'sum', 'parity']",
        "reports a task twice: ['left', 'left']",
    ]


# -- real runs ------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_malformed_update_is_rejected_and_the_run_completes(tmp_path) -> None:
    outcome = simulate(
        tmp_path,
        **{
            "num-clients": 7,
            "attack": "mixed",
            "attackers": 5,
            "attack-scale": 1000.0,
            "max-update-ratio": 10.0,
            "min-nodes": 2,
        },
    )
    rows = [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        reasons = {r["client"]: r["reason"] for r in row["rejected"]}
        assert sorted(reasons) == ["0", "1", "2", "3", "4"], reasons
        assert "non-finite" in reasons[str(MIXED.index("nan"))]
        assert "keys differ" in reasons[str(MIXED.index("malformed-keys"))]
        assert "sent float32" in reasons[str(MIXED.index("malformed-shape"))]
        assert "float64" in reasons[str(MIXED.index("malformed-dtype"))]
        assert "exceeds 10 × median" in reasons[str(MIXED.index("scale"))]
        assert row["clients"] == 2 and row["failures"] >= 5
    assert outcome.summary["status"] == "completed"


@pytest.mark.slow
def test_every_bad_head_and_forged_evaluation_is_rejected_and_the_run_completes(
    tmp_path,
) -> None:
    """One attacker of each head and evaluation kind (clients 0–6), one honest client."""
    outcome = simulate(
        tmp_path,
        **{
            "algorithm": "fedavg",
            "num-clients": 8,
            "attack": "mixed-task",
            "attackers": len(MIXED_TASK),
            "attack-scale": 1000.0,
            "max-update-ratio": 10.0,
            "min-nodes": 2,
        },
    )
    expected = {
        "head-shape": "expected float32[",
        "head-missing": "missing ['heads.",
        "head-scale": "head update norm",
        "head-nan": "non-finite",
        "eval-range": "is outside its range",
        "eval-spoof-id": "is client 5 but now claims client id 6",
        "eval-tasks": "but client 6 holds",
    }
    rows = [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == TINY["num-server-rounds"]
    for row in rows:
        train = {r["client"]: r["reason"] for r in row["rejected"]}
        evaluation = {r["client"]: r["reason"] for r in row["eval_rejected"]}
        assert sorted(train) == ["0", "1", "2", "3"], train
        assert sorted(evaluation) == ["4", "5", "6"], evaluation
        for client, kind in enumerate(MIXED_TASK):
            reason = (train | evaluation)[str(client)]
            assert expected[kind] in reason, (kind, reason)
        assert row["clients"] == 4 and row["failures"] == 7
    assert outcome.summary["status"] == "completed"
    assert sorted(outcome.summary["per_client"]) == ["0", "1", "2", "3", "7"]


@pytest.mark.slow
def test_all_updates_malformed_fails_with_a_clear_message(tmp_path) -> None:
    outcome = run_tiny(tmp_path, attack="nan", attackers=3)
    assert not outcome.ok
    error = outcome.summary["error"]
    assert "0 usable training replies of 3" in error and "min-nodes = 2" in error
    # One reason, with every client that gave it and their count.
    assert "3 clients (" in error and "non-finite" in error
    assert error.count("non-finite") == 1
    assert [c["clients"] for c in outcome.summary["client_errors"]] == [["0", "1", "2"]]
    assert "3 clients (0, 1, 2)" in error
