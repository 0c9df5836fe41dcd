"""Task-aware aggregation of federated heads, as a Flower strategy wrapper.

Flower's strategies need identical array keys on every client, but clients hold different
tasks. The wrapper sends every task's current head in a second record (`task-arrays`), lets
the wrapped strategy aggregate the shared encoder (`arrays`) as usual, and averages each
task's head only over the clients that returned it — with Flower's own weighted average
(`aggregate_arrayrecords`), weighted by `num-examples`. The server starts from every task's
head as the clients build it (`initial_task_arrays`), so the first round's replies are
checked against known keys and shapes like every later one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.algorithms import get_algorithm
from common.config import RunConfig
from common.datasets import input_shape, task_specs
from common.models import MultiTaskModel, encoder_for, task_of
from common.records import TASK_ARRAYS, arrays_from_model, model_task_keys
from common.tasks import TaskSpec


@lru_cache(maxsize=4)
def dataset_task_specs(cfg: RunConfig) -> tuple[TaskSpec, ...]:
    """Every task of the configured dataset, as the clients' specs have it. For `user` and
    `hf` from the schema alone (the server has no data). A head's shape depends only on its
    task's kind and class count."""
    return tuple(task_specs(cfg))


def initial_task_arrays(cfg: RunConfig) -> ArrayRecord:
    """Every task's federated head (`heads.*` under fedavg/fedavg-ft, `global_heads.*` under
    fedrod) exactly as a client first builds it: the same seeded construction, so values,
    keys, shapes and dtypes agree. Empty when the algorithm federates no heads."""
    algorithm = get_algorithm(cfg.algorithm)
    if not (algorithm.share_heads or algorithm.global_heads):
        return ArrayRecord()
    encoder = encoder_for(cfg, input_shape(cfg))
    model = MultiTaskModel(
        encoder, dataset_task_specs(cfg), seed=cfg.seed, global_heads=algorithm.global_heads
    )
    return arrays_from_model(model, model_task_keys(model, algorithm))


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
    """Wraps a Flower strategy: the encoder goes through it, heads are averaged per task.

    `initial` is every task's head before training (`initial_task_arrays`); each round
    replaces the heads of the tasks that accepted replies returned."""

    def __init__(self, inner: Strategy, initial: ArrayRecord | None = None) -> None:
        self.inner = inner
        self.task_arrays = ArrayRecord(dict(initial.items())) if initial else ArrayRecord()

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
