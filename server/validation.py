"""Checks on every reply before it reaches aggregation or the reported metrics.

A training reply must carry one `metrics` record with the expected keys, finite values and a
weight (`num-examples`) > 0; its client id and tasks; exactly the shared keys that were sent,
each with the shape and dtype sent, only finite values; and, where heads are federated,
exactly the heads of the tasks it reports, with the shapes and dtypes of the heads the
server started from. With `max-update-ratio` = r > 0, its weight, its encoder update norm
and each of its head update norms (per task, against the head that was sent) must be at
most r × a reference (`RatioBound`). An evaluation reply must carry its `metrics` record
(expected keys, finite, non-negative) and per-task metrics of its own tasks, each in its
valid range (`server.metrics.METRIC_RANGES`). Every reply's client id and tasks must agree
with what the server learned of its node (`Identities`).

A rejected reply is dropped with a reason naming the node and client; the round goes on
with the rest (the caller decides whether enough remain).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from common.config import RunConfig
from common.datasets import dataset_tasks
from common.models import task_of
from common.records import ARRAYS, TASK_ARRAYS
from server.affinity import affinity_problem
from server.failures import ERROR_REPLY, client_error
from server.metrics import SPLITS, TASK_RECORD, metric_problem

TRAIN_METRICS = ("num-examples", "train-loss")
EVAL_METRICS = ("num-examples", "val-loss", "test-loss")
IDENTITY = ("client-id", "tasks")
# Rounds whose accepted values stand in for a reference when a round has too few of its own.
HISTORY_ROUNDS = 5


@dataclass(frozen=True)
class Rejection:
    node: int
    client: str
    reason: str

    def as_dict(self) -> dict:
        return {"node": self.node, "client": self.client, "reason": self.reason}


def client_of(msg: Message) -> str:
    """The client id a reply reports (its node id when it reports none)."""
    if not msg.has_error():
        cr = msg.content.config_records.get(TASK_RECORD)
        if cr is not None and "client-id" in cr:
            return str(cr["client-id"])
    return f"node-{msg.metadata.src_node_id}"


def arrays_problem(arrays: ArrayRecord | None, sent: ArrayRecord) -> str | None:
    """Why a returned shared record is unusable, or None."""
    if arrays is None:
        return "no 'arrays' record"
    if list(arrays.keys()) != list(sent.keys()):
        missing = sorted(set(sent) - set(arrays))[:3]
        extra = sorted(set(arrays) - set(sent))[:3]
        return f"array keys differ from those sent (missing {missing}, extra {extra})"
    for key, array in arrays.items():
        ref = sent[key]
        if tuple(array.shape) != tuple(ref.shape) or array.dtype != ref.dtype:
            return f"'{key}' is {array.dtype}{list(array.shape)}, sent {ref.dtype}{list(ref.shape)}"
        if not np.isfinite(array.numpy()).all():
            return f"'{key}' has non-finite values"
    return None


def head_keys(layout: ArrayRecord, tasks: Iterable[str]) -> list[str]:
    """The federated head arrays of `tasks`, in the layout's order."""
    wanted = set(tasks)
    return [k for k in layout if task_of(k) in wanted]


def heads_problem(
    heads: ArrayRecord | None, tasks: Sequence[str], layout: ArrayRecord
) -> str | None:
    """Why a reply's `task-arrays` record is unusable, or None. `layout` holds every task's
    federated head (empty when heads do not travel): the reply must hold exactly the heads of
    the tasks it reports, each with the layout's shape and dtype, only finite values."""
    if not len(layout):
        return None if heads is None else "a 'task-arrays' record, but no heads are federated"
    if heads is None:
        return "no 'task-arrays' record"
    expected = head_keys(layout, tasks)
    if set(heads.keys()) != set(expected):
        missing = sorted(set(expected) - set(heads))[:3]
        extra = sorted(set(heads) - set(expected))[:3]
        return (
            f"task arrays differ from the heads of tasks {list(tasks)} "
            f"(missing {missing}, extra {extra})"
        )
    for key, array in heads.items():
        ref = layout[key]
        if tuple(array.shape) != tuple(ref.shape) or array.dtype != ref.dtype:
            return (
                f"task array '{key}' is {array.dtype}{list(array.shape)}, "
                f"expected {ref.dtype}{list(ref.shape)}"
            )
        if not np.isfinite(array.numpy()).all():
            return f"task array '{key}' has non-finite values"
    return None


def records_problem(content: RecordDict, array_records: Sequence[str]) -> str | None:
    """The records a reply may hold: one MetricRecord `metrics` (Flower's strategies abort
    the whole round on anything else), only the named ArrayRecords, and `task-metrics`."""
    if list(content.metric_records.keys()) != ["metrics"]:
        return f"metric records {sorted(content.metric_records.keys())}, expected ['metrics']"
    extra = sorted(set(content.array_records.keys()) - set(array_records))
    if extra:
        return f"unexpected array records {extra}; expected {list(array_records)}"
    if TASK_RECORD not in content.config_records:
        return f"no '{TASK_RECORD}' record"
    return None


def metrics_problem(metrics: Any, keys: Sequence[str]) -> str | None:
    """The `metrics` record must have exactly `keys` (the same on every client: Flower
    aggregates them key by key), each a finite number."""
    if set(metrics.keys()) != set(keys):
        return f"'metrics' has keys {sorted(metrics.keys())}, expected {sorted(keys)}"
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"metric '{key}' is {value!r}, not a number"
        if not np.isfinite(value):
            return f"metric '{key}' is {value}, not finite"
    return None


def weight_problem(metrics: Any, equal_weights: bool = False) -> str | None:
    """The aggregation weight must be a finite number > 0; exactly 1 where every client
    must weigh the same (central DP's noise and accounting assume it)."""
    weight = metrics.get("num-examples")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"num-examples is {weight!r}, not a number"
    if not np.isfinite(weight) or weight <= 0:
        return f"num-examples is {weight}, not a finite number > 0"
    if equal_weights and weight != 1:
        return f"num-examples is {weight:g}; central DP weighs every client 1"
    return None


def eval_metrics_problem(metrics: Any) -> str | None:
    """An evaluation's example count is an integer >= 0 (a client may have an empty test
    split) and its losses are >= 0."""
    n = metrics["num-examples"]
    if not isinstance(n, int) or n < 0:
        return f"num-examples is {n!r}, not an integer >= 0"
    negative = [k for k in ("val-loss", "test-loss") if metrics[k] < 0]
    return f"{negative[0]} is {metrics[negative[0]]}, below 0" if negative else None


def identity_problem(record: ConfigRecord, known_tasks: Sequence[str]) -> str | None:
    """A reply names its client (an integer id >= 0) and its tasks (dataset tasks, each once)."""
    client = record.get("client-id")
    if isinstance(client, bool) or not isinstance(client, int) or client < 0:
        return f"client-id is {client!r}, not an integer >= 0"
    tasks = record.get("tasks")
    if not isinstance(tasks, str) or not tasks:
        return f"tasks is {tasks!r}, not a comma-separated list of task names"
    names = tasks.split(",")
    unknown = [t for t in names if t not in known_tasks]
    if unknown:
        return f"reports unknown tasks {unknown}; the dataset's tasks are {list(known_tasks)}"
    if len(set(names)) != len(names):
        return f"reports a task twice: {names}"
    return None


def task_metrics_problem(record: ConfigRecord, tasks: Sequence[str]) -> str | None:
    """Every per-task entry is `<val|test>/<task>/<metric>` for one of the client's tasks, with
    a value in the metric's valid range."""
    for key, value in record.items():
        if key in IDENTITY:
            continue
        parts = key.split("/")
        if len(parts) != 3 or parts[0] not in SPLITS:
            return (
                f"unexpected entry '{key}' in '{TASK_RECORD}' (expected <val|test>/<task>/<metric>)"
            )
        if parts[1] not in tasks:
            return f"'{key}': task '{parts[1]}' is not one of the client's tasks {list(tasks)}"
        if problem := metric_problem(parts[2], value):
            return f"'{key}' {problem}"
    return None


def tasks_of(msg: Message) -> tuple[str, ...]:
    return tuple(str(msg.content[TASK_RECORD]["tasks"]).split(","))


def update_norm(arrays: ArrayRecord, sent: ArrayRecord, keys: Iterable[str] | None = None) -> float:
    """L2 norm of (arrays − sent) over `keys` (all of `arrays` by default)."""
    keys = list(arrays.keys()) if keys is None else list(keys)
    total = sum(
        float(np.sum((arrays[k].numpy() - sent[k].numpy()).astype(np.float64) ** 2)) for k in keys
    )
    return float(np.sqrt(total))


@dataclass
class RatioBound:
    """`value <= r × reference` for one quantity (claimed weights, encoder update norms, or one
    task's head update norms).

    The reference is the median of the round's values when it has at least 3 (robust while
    fewer than half are malicious). A round with fewer takes the median of its values together
    with those accepted in the last `HISTORY_ROUNDS` rounds, so one or two replies cannot
    vouch for themselves; with fewer than 3 values in all (the first rounds of a tiny
    federation) the reference is the smallest value: nothing larger than r × the smallest
    passes, and a lone first value is compared with itself.
    """

    recent: deque = field(default_factory=lambda: deque(maxlen=HISTORY_ROUNDS))

    def reference(self, values: Sequence[float]) -> tuple[float, str]:
        if len(values) >= 3:
            return float(statistics.median(values)), "median"
        pool = [*values, *(v for past in self.recent for v in past)]
        if len(pool) >= 3:
            return float(statistics.median(pool)), f"median with the last {len(self.recent)} rounds"
        return float(min(pool)), "smallest"

    def remember(self, accepted: Sequence[float]) -> None:
        if accepted:
            self.recent.append(list(accepted))


@dataclass
class Identities:
    """Which client each node is and which tasks each client holds, learned from accepted
    replies. A node may not change its client id, nor claim an id that another node still
    holds (one that is connected or replying); an id two new nodes claim in one round goes to
    neither. A node that left frees its id: a restarted node (new node id) takes it over."""

    client_of_node: dict[int, int] = field(default_factory=dict)
    node_of_client: dict[int, int] = field(default_factory=dict)
    tasks_of_client: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def problems(
        self, claims: Sequence[tuple[int, int, tuple[str, ...]]], live: set[int] | None
    ) -> dict[int, str]:
        """{node: reason} for the claims (node, client id, tasks) this round cannot accept.
        `live`: the connected nodes (None: every known node counts as connected)."""
        claimed = Counter(client for _, client, _ in claims)
        replying = {node for node, _, _ in claims}
        out = {}
        for node, client, tasks in claims:
            known = self.client_of_node.get(node)
            owner = self.node_of_client.get(client)
            if known is not None and known != client:
                out[node] = f"node {node} is client {known} but now claims client id {client}"
            elif (
                owner is not None
                and owner != node
                and (live is None or owner in live or owner in replying)
            ):
                out[node] = f"claims client id {client}, which node {owner} holds"
            elif owner != node and claimed[client] > 1:
                out[node] = f"claims client id {client}, as another node does in the same round"
            elif client in self.tasks_of_client and sorted(tasks) != sorted(
                self.tasks_of_client[client]
            ):
                held = list(self.tasks_of_client[client])
                out[node] = f"reports tasks {list(tasks)}, but client {client} holds {held}"
        return out

    def register(self, node: int, client: int, tasks: tuple[str, ...]) -> None:
        old = self.node_of_client.get(client)
        if old is not None and old != node:
            self.client_of_node.pop(old, None)
        self.client_of_node[node] = client
        self.node_of_client[client] = node
        self.tasks_of_client.setdefault(client, tuple(tasks))


class ReplyValidator:
    """Every check on the replies of one run, with what it learns across rounds: who each
    node is (`Identities`) and the recently accepted weights and update norms (`RatioBound`).

    `tasks`: the dataset's task names; `heads`: every task's federated head as the clients
    first build it (`server.task_heads.initial_task_arrays`; empty when heads do not
    travel); `max_update_ratio`: r (0: no weight or norm bounds); `train_metrics`: the keys
    of a training reply's `metrics` record; `bound_update_norms`: whether the encoder update
    norms are bounded (not where the server clips every update itself, see `for_run`).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        heads: ArrayRecord | None = None,
        *,
        max_update_ratio: float = 0.0,
        train_metrics: Sequence[str] = TRAIN_METRICS,
        equal_weights: bool = False,
        bound_update_norms: bool = True,
    ) -> None:
        self.tasks = list(tasks)
        self.bound_update_norms = bound_update_norms
        self.equal_weights = equal_weights
        self.layout = heads if heads is not None else ArrayRecord()
        self.ratio = max_update_ratio
        self.train_metrics = tuple(train_metrics)
        self.ids = Identities()
        self.weights = RatioBound()
        self.norms = RatioBound()
        self.head_norms: dict[str, RatioBound] = defaultdict(RatioBound)

    @classmethod
    def for_run(cls, cfg: RunConfig) -> ReplyValidator:
        from server.task_heads import initial_task_arrays

        central = cfg.privacy == "central-dp"
        # Flower's adaptive client-side clipping mod adds its norm bit to the training metrics.
        adaptive = central and cfg.cdp_clipping == "adaptive-client"
        # Where the server clips every update to the clipping norm before the noised sum, a
        # large update moves the release no more than any other, and rejecting it would
        # withhold the whole round (a central-DP round short of its sample releases nothing):
        # with 100 clients a round, one such update in most rounds stopped most releases.
        server_clips = central and cfg.cdp_clipping.endswith("-server")
        return cls(
            dataset_tasks(cfg),
            initial_task_arrays(cfg),
            max_update_ratio=cfg.max_update_ratio,
            train_metrics=TRAIN_METRICS + ((KEY_NORM_BIT,) if adaptive else ()),
            equal_weights=central,
            bound_update_norms=not server_clips,
        )

    def check_train(
        self,
        server_round: int,
        replies: Iterable[Message],
        sent: ArrayRecord,
        *,
        sent_heads: ArrayRecord | None = None,
        live_nodes: set[int] | None = None,
    ) -> tuple[list[Message], list[Rejection]]:
        """Usable training replies (sorted by client) and the rejections. `sent_heads`: the
        heads sent this round (default: the initial ones); `live_nodes`: the connected nodes."""
        allowed = (ARRAYS, TASK_ARRAYS) if len(self.layout) else (ARRAYS,)
        good, rejected = self._screen(replies, lambda m: self._train_problem(m, sent, allowed))
        good = self._check_identities(good, rejected, live_nodes)
        if self.ratio > 0:
            good = self._bound_all(good, rejected, sent, sent_heads or self.layout)
        self._learn(good)
        return _finish(server_round, "training update", good, rejected)

    def check_evaluate(
        self, server_round: int, replies: Iterable[Message], *, live_nodes: set[int] | None = None
    ) -> tuple[list[Message], list[Rejection]]:
        """Usable evaluation replies (sorted by client) and the rejections."""
        good, rejected = self._screen(replies, self._evaluate_problem)
        good = self._check_identities(good, rejected, live_nodes)
        self._learn(good)
        return _finish(server_round, "evaluation", good, rejected)

    # -- one reply at a time -------------------------------------------------------------

    def _train_problem(self, msg: Message, sent: ArrayRecord, allowed: Sequence[str]) -> str | None:
        content = msg.content
        if problem := records_problem(content, allowed):
            return problem
        metrics = content.metric_records["metrics"]
        record = content.config_records[TASK_RECORD]
        return (
            metrics_problem(metrics, self.train_metrics)
            or weight_problem(metrics, self.equal_weights)
            or identity_problem(record, self.tasks)
            or affinity_problem(record, tasks_of(msg))
            or arrays_problem(content.array_records.get(ARRAYS), sent)
            or heads_problem(content.array_records.get(TASK_ARRAYS), tasks_of(msg), self.layout)
        )

    def _evaluate_problem(self, msg: Message) -> str | None:
        content = msg.content
        if problem := records_problem(content, ()):
            return problem
        metrics = content.metric_records["metrics"]
        record = content.config_records[TASK_RECORD]
        return (
            metrics_problem(metrics, EVAL_METRICS)
            or eval_metrics_problem(metrics)
            or identity_problem(record, self.tasks)
            or task_metrics_problem(record, tasks_of(msg))
        )

    def _screen(
        self, replies: Iterable[Message], problem: Callable[[Message], str | None]
    ) -> tuple[list[Message], list[Rejection]]:
        """Error replies and those `problem` finds fault with are rejected."""
        good: list[Message] = []
        rejected: list[Rejection] = []
        for msg in replies:
            reason = (
                ERROR_REPLY + client_error(msg.error.reason) if msg.has_error() else problem(msg)
            )
            if reason:
                rejected.append(self._rejection(msg, reason))
            else:
                good.append(msg)
        return good, rejected

    def _rejection(self, msg: Message, reason: str) -> Rejection:
        """Named by the client id the server knows for the node, else the one claimed."""
        known = self.ids.client_of_node.get(msg.metadata.src_node_id)
        client = str(known) if known is not None else client_of(msg)
        return Rejection(msg.metadata.src_node_id, client, reason)

    # -- across the round's replies --------------------------------------------------------

    def _check_identities(
        self, good: list[Message], rejected: list[Rejection], live: set[int] | None
    ) -> list[Message]:
        claims = [
            (m.metadata.src_node_id, int(m.content[TASK_RECORD]["client-id"]), tasks_of(m))
            for m in good
        ]
        problems = self.ids.problems(claims, live)
        rejected += [
            self._rejection(m, problems[m.metadata.src_node_id])
            for m in good
            if m.metadata.src_node_id in problems
        ]
        return [m for m in good if m.metadata.src_node_id not in problems]

    def _learn(self, good: list[Message]) -> None:
        for m in good:
            self.ids.register(
                m.metadata.src_node_id, int(m.content[TASK_RECORD]["client-id"]), tasks_of(m)
            )

    def _bound_all(
        self,
        good: list[Message],
        rejected: list[Rejection],
        sent: ArrayRecord,
        sent_heads: ArrayRecord,
    ) -> list[Message]:
        """Weights, then encoder norms, then each task's head norms; the accepted values are
        remembered for later rounds."""
        weights = {id(m): float(m.content["metrics"]["num-examples"]) for m in good}
        good = self._bound(good, rejected, self.weights, weights, "num-examples", "{:g}")
        norms: dict[int, float] = {}
        if len(sent) and self.bound_update_norms:
            norms = {id(m): update_norm(m.content[ARRAYS], sent) for m in good}
            good = self._bound(good, rejected, self.norms, norms, "update norm", "{:.3g}")
        heads: dict[str, dict[int, float]] = {}
        for task in sorted({task_of(k) for k in self.layout}):
            keys = head_keys(self.layout, [task])
            before = {k: sent_heads[k] if k in sent_heads else self.layout[k] for k in keys}
            holders = [m for m in good if task in tasks_of(m)]
            heads[task] = {
                id(m): update_norm(m.content[TASK_ARRAYS], ArrayRecord(before), keys)
                for m in holders
            }
            what = f"task '{task}' head update norm"
            kept = self._bound(
                holders, rejected, self.head_norms[task], heads[task], what, "{:.3g}"
            )
            dropped = {id(m) for m in holders} - {id(m) for m in kept}
            good = [m for m in good if id(m) not in dropped]
        accepted = {id(m) for m in good}
        self.weights.remember([v for k, v in weights.items() if k in accepted])
        self.norms.remember([v for k, v in norms.items() if k in accepted])
        for task, values in heads.items():
            self.head_norms[task].remember([v for k, v in values.items() if k in accepted])
        return good

    def _bound(
        self,
        msgs: list[Message],
        rejected: list[Rejection],
        bound: RatioBound,
        values: dict[int, float],
        what: str,
        fmt: str,
    ) -> list[Message]:
        if not msgs:
            return msgs
        reference, name = bound.reference([values[id(m)] for m in msgs])
        cap = self.ratio * reference
        kept = []
        for msg in msgs:
            value = values[id(msg)]
            if value > cap:
                limit = fmt.format(cap)
                reason = f"{what} {fmt.format(value)} exceeds {self.ratio:g} × {name} = {limit}"
                rejected.append(self._rejection(msg, reason))
            else:
                kept.append(msg)
        return kept


def _finish(
    server_round: int, what: str, good: list[Message], rejected: list[Rejection]
) -> tuple[list[Message], list[Rejection]]:
    """Sort the accepted replies by client so the same seed sums in the same order. (The
    round loop logs the rejections, grouped by reason, or puts them in the round's failure.)"""
    good.sort(key=lambda m: client_of(m).zfill(12))
    return good, rejected
