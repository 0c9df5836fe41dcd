"""Task-aware aggregation of federated heads, as a Flower strategy wrapper.

Flower's strategies need identical array keys on every client, but clients hold different
tasks. The wrapper sends every task's current head in a second record (`task-arrays`), lets
the wrapped strategy aggregate the shared encoder (`arrays`) as usual, and averages each
task's head only over the clients that returned it — with Flower's own weighted average
(`aggregate_arrayrecords`), weighted by `num-examples`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.models import task_of
from common.records import TASK_ARRAYS


def aggregate_task_arrays(
    records: list[RecordDict], weight_key: str = "num-examples"
) -> ArrayRecord:
    """Per task: the weighted mean of its arrays over the records that hold that task."""
    holders: dict[str, list[RecordDict]] = defaultdict(list)
    for record in records:
        arrays = record.array_records.get(TASK_ARRAYS)
        if arrays is None:
            continue
        by_task: dict[str, dict] = defaultdict(dict)
        for key, array in arrays.items():
            by_task[task_of(key)][key] = array
        for task, subset in by_task.items():
            holders[task].append(
                RecordDict(
                    {"arrays": ArrayRecord(subset), "metrics": record.metric_records["metrics"]}
                )
            )
    out = ArrayRecord()
    for task in sorted(holders):
        keysets = {tuple(r["arrays"].keys()) for r in holders[task]}
        if len(keysets) != 1:
            raise ValueError(
                f"task '{task}': clients returned different head layouts {sorted(keysets)}"
            )
        for key, array in aggregate_arrayrecords(holders[task], weight_key).items():
            out[key] = array
    return out


class TaskAwareHeads(Strategy):
    """Wraps a Flower strategy: the encoder goes through it, heads are averaged per task."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.task_arrays = ArrayRecord()  # grows as clients bring tasks the server has not seen

    def summary(self) -> None:
        self.inner.summary()

    def _attach(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        for msg in messages:
            msg.content[TASK_ARRAYS] = self.task_arrays
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._attach(self.inner.configure_train(server_round, arrays, config, grid))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._attach(self.inner.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        contents = [m.content for m in replies if not m.has_error()]
        heads = aggregate_task_arrays(contents)
        for msg in replies:
            if not msg.has_error() and TASK_ARRAYS in msg.content.array_records:
                del msg.content.array_records[TASK_ARRAYS]
        merged = ArrayRecord({**dict(self.task_arrays.items()), **dict(heads.items())})
        self.task_arrays = merged
        return self.inner.aggregate_train(server_round, replies)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)
