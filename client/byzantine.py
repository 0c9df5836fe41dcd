"""Simulated Byzantine clients (`attack`, `attackers = k`: the first k clients attack).

For robustness experiments only. Update attacks rewrite the shared arrays a client sends;
`label-flip` poisons the client's training labels instead.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from common.config import CHOICES
from common.federation import ClientData, Split

ATTACKS = CHOICES["attack"]
# `mixed`: attacker i sends the i-th (mod 5) kind of bad update, to exercise every check.
MIXED = ("nan", "malformed-keys", "malformed-shape", "malformed-dtype", "scale")


def is_attacker(client_id: int, attack: str, attackers: int) -> bool:
    return attack != "none" and client_id < attackers


def attack_of(client_id: int, attack: str) -> str:
    return MIXED[client_id % len(MIXED)] if attack == "mixed" else attack


def attack_update(
    attack: str, sent: ArrayRecord, honest: ArrayRecord, scale: float, seed: int
) -> ArrayRecord:
    """The update an attacker sends instead of `honest` (both relative to `sent`).

    sign-flip: w − s·Δ; scale: w + s·Δ; noise: w + N(0, s²) per coordinate; nan: NaNs;
    malformed-*: a renamed key, a truncated array, float64 instead of float32.
    """
    if attack in ("none", "label-flip") or not len(honest):
        return honest
    first = next(iter(honest.keys()))
    if attack == "malformed-keys":
        return ArrayRecord({(k + ".x" if k == first else k): v for k, v in honest.items()})
    if attack == "malformed-shape":
        return ArrayRecord(
            {k: (Array(v.numpy()[:1]) if k == first else v) for k, v in honest.items()}
        )
    if attack == "malformed-dtype":
        return ArrayRecord({k: Array(v.numpy().astype(np.float64)) for k, v in honest.items()})
    rng = np.random.default_rng(seed)
    out = {}
    for key, array in honest.items():
        new, old = array.numpy(), sent[key].numpy()
        delta = new - old
        if attack == "sign-flip":
            value = old - scale * delta
        elif attack == "scale":
            value = old + scale * delta
        elif attack == "noise":
            value = new + rng.normal(0.0, scale, size=new.shape)
        elif attack == "nan":
            value = np.full_like(new, np.nan)
        else:
            raise ValueError(f"attack '{attack}' is unknown; valid: {list(ATTACKS)}")
        out[key] = Array(np.asarray(value, dtype=new.dtype))
    return ArrayRecord(out)


def flip_labels(data: ClientData) -> ClientData:
    """Classification labels y -> (C−1−y); regression targets negated around their offset."""

    def flip(split: Split) -> Split:
        y = {}
        for task in data.tasks:
            v = split.y[task.name]
            if task.is_classification:
                y[task.name] = (max(task.num_classes, 2) - 1 - v).astype(v.dtype)
            else:
                y[task.name] = (2 * task.offset - v).astype(v.dtype)
        return Split(split.x, y)

    return ClientData(
        data.client_id, data.tasks, flip(data.train), data.val, data.test, data.input_shape
    )
