"""Checks on every reply before it reaches aggregation.

A training reply must carry exactly the shared keys that were sent, each with the shape and
dtype sent, only finite values, per-task heads under their own names, and an update whose
norm is within `max-update-ratio` × the round's median update norm. Evaluation replies need
their metric records. A rejected reply is dropped with a reason naming the node and client;
the round goes on with the rest (the caller decides whether enough remain).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common.logger import log

from common.records import TASK_ARRAYS
from server.metrics import TASK_RECORD


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


def heads_problem(heads: ArrayRecord | None, known: ArrayRecord | None) -> str | None:
    if heads is None:
        return None
    for key, array in heads.items():
        if not key.startswith(("heads.", "global_heads.")):
            return f"task array '{key}' is not a head"
        if known is not None and key in known and tuple(known[key].shape) != tuple(array.shape):
            expected = list(known[key].shape)
            return f"task array '{key}' has shape {list(array.shape)}, expected {expected}"
        if not np.isfinite(array.numpy()).all():
            return f"task array '{key}' has non-finite values"
    return None


def weight_problem(metrics: Any) -> str | None:
    """The aggregation weight must be a finite number > 0."""
    weight = metrics.get("num-examples")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"num-examples is {weight!r}, not a number"
    if not np.isfinite(weight) or weight <= 0:
        return f"num-examples is {weight}, not a finite number > 0"
    return None


def update_norm(arrays: ArrayRecord, sent: ArrayRecord) -> float:
    return float(
        np.sqrt(
            sum(
                float(np.sum((a.numpy() - sent[k].numpy()).astype(np.float64) ** 2))
                for k, a in arrays.items()
            )
        )
    )


def validate_train_replies(
    server_round: int,
    replies: Iterable[Message],
    sent: ArrayRecord,
    *,
    known_heads: ArrayRecord | None = None,
    max_update_ratio: float = 0.0,
) -> tuple[list[Message], list[Rejection]]:
    """Usable training replies (sorted by client) and the rejections."""
    good: list[Message] = []
    rejected: list[Rejection] = []
    for msg in replies:
        reason = None
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
        elif "metrics" not in msg.content.metric_records:
            reason = "no 'metrics' record"
        else:
            reason = (
                weight_problem(msg.content.metric_records["metrics"])
                or arrays_problem(msg.content.array_records.get("arrays"), sent)
                or heads_problem(msg.content.array_records.get(TASK_ARRAYS), known_heads)
            )
        if reason:
            rejected.append(Rejection(msg.metadata.src_node_id, client_of(msg), reason))
        else:
            good.append(msg)
    if max_update_ratio > 0 and len(good) >= 3:
        # FedAvg weights by the claimed example count: bound it like the update norm.
        weights = [float(m.content.metric_records["metrics"]["num-examples"]) for m in good]
        cap = max_update_ratio * float(np.median(weights))
        kept = []
        for msg, weight in zip(good, weights, strict=True):
            if weight > cap:
                reason = f"num-examples {weight:g} exceeds {max_update_ratio:g} × median ({cap:g})"
                rejected.append(Rejection(msg.metadata.src_node_id, client_of(msg), reason))
            else:
                kept.append(msg)
        good = kept
    if max_update_ratio > 0 and len(good) >= 3 and len(sent):
        norms = [update_norm(m.content["arrays"], sent) for m in good]
        bound = max_update_ratio * float(np.median(norms))
        kept = []
        for msg, norm in zip(good, norms, strict=True):
            if norm > bound:
                reason = (
                    f"update norm {norm:.3g} exceeds {max_update_ratio:g} × median ({bound:.3g})"
                )
                rejected.append(Rejection(msg.metadata.src_node_id, client_of(msg), reason))
            else:
                kept.append(msg)
        good = kept
    return _finish(server_round, "training update", good, rejected)


def validate_evaluate_replies(
    server_round: int, replies: Iterable[Message]
) -> tuple[list[Message], list[Rejection]]:
    good, rejected = [], []
    for msg in replies:
        if msg.has_error():
            reason = f"error reply: {msg.error.reason}"
        elif (
            "metrics" not in msg.content.metric_records
            or TASK_RECORD not in msg.content.config_records
        ):
            reason = "evaluation reply without 'metrics' and 'task-metrics' records"
        else:
            good.append(msg)
            continue
        rejected.append(Rejection(msg.metadata.src_node_id, client_of(msg), reason))
    return _finish(server_round, "evaluation", good, rejected)


def _finish(
    server_round: int, what: str, good: list[Message], rejected: list[Rejection]
) -> tuple[list[Message], list[Rejection]]:
    """Log the rejections; sort the rest by client so the same seed sums in the same order."""
    for r in rejected:
        log(
            WARNING,
            "fedmtl | round %d: %s from node %d (client %s) rejected: %s",
            server_round,
            what,
            r.node,
            r.client,
            r.reason,
        )
    good.sort(key=lambda m: client_of(m).zfill(12))
    return good, rejected
