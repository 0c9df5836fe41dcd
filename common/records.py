"""Conversions between models and Flower records, and record sizes."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from common.algorithms import Algorithm
from common.models import MultiTaskModel, shared_keys, task_keys

# Message records: the shared encoder every client returns, and per-task heads that travel
# under the algorithms that federate them (each client returns only its own tasks' heads).
ARRAYS = "arrays"
TASK_ARRAYS = "task-arrays"
# One message wave per round: a training message whose config names `EVALUATE_ROUND` asks
# the client to evaluate the model it received (round r's) before training round r+1; the
# reply carries that evaluation in two ConfigRecords (the evaluation reply's `metrics` and
# `task-metrics`: a reply may hold only one MetricRecord).
EVALUATE_ROUND = "evaluate-round"
EVALUATION_METRICS = "evaluation-metrics"
EVALUATION_TASKS = "evaluation-task-metrics"
# Per-message timestamps from the ClientApp (Unix seconds), sent when the run audits replies.
TIMING = "timing"
# Task affinity in a training reply's task record: `affinity/<cos|tag>/<task>/<task>` and
# the number of batches measured (`task-affinity`).
AFFINITY = "affinity/"
AFFINITY_BATCHES = "affinity/batches"


def arrays_from_model(model: torch.nn.Module, keys: Iterable[str]) -> ArrayRecord:
    """An ArrayRecord with exactly `keys` of the model's state, in that order."""
    state = model.state_dict()
    return ArrayRecord({k: Array(state[k].detach().cpu().numpy()) for k in keys})


def load_arrays(model: torch.nn.Module, arrays: ArrayRecord, *, what: str = "arrays") -> None:
    """Copy arrays into the model; every key must exist with the model's shape."""
    state = model.state_dict()
    unknown = [k for k in arrays if k not in state]
    if unknown:
        raise ValueError(f"{what}: keys {unknown[:5]} do not exist in this client's model")
    for key, array in arrays.items():
        value = torch.from_numpy(np.asarray(array.numpy()))
        if tuple(value.shape) != tuple(state[key].shape):
            raise ValueError(
                f"{what}: '{key}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(state[key].shape)}"
            )
        state[key].copy_(value)


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of array payload in a record, as carried in a message."""
    return int(sum(len(array.data) for array in record.values()))


def model_shared_keys(
    model: MultiTaskModel, algorithm: Algorithm, shared_layers: int = 0
) -> list[str]:
    """Keys of the `arrays` record (the shared encoder) under an algorithm."""
    return shared_keys(model, share_encoder=algorithm.share_encoder, shared_layers=shared_layers)


def model_task_keys(model: MultiTaskModel, algorithm: Algorithm) -> list[str]:
    """Keys of the `task-arrays` record (heads federated per task) under an algorithm."""
    return task_keys(
        model, share_heads=algorithm.share_heads, share_global_heads=algorithm.global_heads
    )


def payload_bytes(content: RecordDict) -> int:
    """Bytes of model payload in a message: every array, plus byte strings in config records
    (SecAgg+ carries its masked vectors that way)."""
    total = sum(record_bytes(rec) for rec in content.array_records.values())
    for rec in content.config_records.values():
        for value in rec.values():
            if isinstance(value, bytes):
                total += len(value)
            elif isinstance(value, list):
                total += sum(len(v) for v in value if isinstance(v, bytes))
    return int(total)
