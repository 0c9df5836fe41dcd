"""Conversions between models and Flower records, and record sizes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from common.models import MultiTaskModel, shared_keys


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


def model_shared_keys(model: MultiTaskModel, algorithm: Any, shared_layers: int = 0) -> list[str]:
    """Shared keys of a model under an algorithm (see `common.models.shared_keys`)."""
    return shared_keys(
        model,
        share_encoder=algorithm.share_encoder,
        shared_layers=shared_layers,
        share_heads=algorithm.share_heads,
        share_global_heads=False,
    )


def flat_config(prefix: str, values: Mapping[str, Mapping[str, float]]) -> ConfigRecord:
    """{'left': {'accuracy': .9}} -> ConfigRecord({'<prefix>/left/accuracy': .9})."""
    return ConfigRecord(
        {f"{prefix}/{task}/{m}": float(v) for task, ms in values.items() for m, v in ms.items()}
    )
