"""Simulated Byzantine clients (`attack`, `attackers = k`: the first k clients attack).

For robustness experiments only. Update attacks rewrite the shared arrays a client sends;
head attacks the federated heads it sends (they act only where heads travel: fedavg,
fedavg-ft, fedrod); evaluation attacks forge its evaluation reply; `label-flip` poisons the
client's training labels instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from common.config import CHOICES
from common.federation import ClientData, Split

ATTACKS = CHOICES["attack"]
UPDATE_ATTACKS = (
    "sign-flip",
    "scale",
    "noise",
    "nan",
    "malformed-keys",
    "malformed-shape",
    "malformed-dtype",
)
HEAD_ATTACKS = ("head-shape", "head-missing", "head-scale", "head-nan")
EVAL_ATTACKS = ("eval-range", "eval-spoof-id", "eval-tasks")
# `mixed`: attacker i sends the i-th (mod 5) kind of bad update, to exercise every check on
# the shared arrays. `mixed-task`: attacker i corrupts its task records instead (heads or
# evaluation), the i-th (mod 7) kind; run it where heads travel.
MIXED = ("nan", "malformed-keys", "malformed-shape", "malformed-dtype", "scale")
MIXED_TASK = HEAD_ATTACKS + EVAL_ATTACKS
_MIXES = {"mixed": MIXED, "mixed-task": MIXED_TASK}


def is_attacker(client_id: int, attack: str, attackers: int) -> bool:
    return attack != "none" and client_id < attackers


def attack_of(client_id: int, attack: str) -> str:
    kinds = _MIXES.get(attack)
    return kinds[client_id % len(kinds)] if kinds else attack


def attack_update(
    attack: str, sent: ArrayRecord, honest: ArrayRecord, scale: float, seed: int
) -> ArrayRecord:
    """The update an attacker sends instead of `honest` (both relative to `sent`).

    sign-flip: w − s·Δ; scale: w + s·Δ; noise: w + N(0, s²) per coordinate; nan: NaNs;
    malformed-*: a renamed key, a truncated array, float64 instead of float32.
    """
    if attack not in ATTACKS or attack in _MIXES:
        raise ValueError(f"attack '{attack}' is unknown; valid: {list(ATTACKS)}")
    if attack not in UPDATE_ATTACKS or not len(honest):
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
        else:  # nan
            value = np.full_like(new, np.nan)
        out[key] = Array(np.asarray(value, dtype=new.dtype))
    return ArrayRecord(out)


def attack_heads(attack: str, honest: ArrayRecord, scale: float) -> ArrayRecord:
    """The federated heads an attacker sends instead of `honest`.

    head-shape: the first array cut to its first row (a shape that broadcasts against the
    real one); head-missing: the first array left out; head-scale: every array × s;
    head-nan: NaNs. Other attacks send the honest heads.
    """
    if attack not in HEAD_ATTACKS or not len(honest):
        return honest
    first = next(iter(honest.keys()))
    if attack == "head-shape":
        return ArrayRecord(
            {k: (Array(v.numpy()[:1]) if k == first else v) for k, v in honest.items()}
        )
    if attack == "head-missing":
        return ArrayRecord({k: v for k, v in honest.items() if k != first})
    if attack == "head-scale":
        return ArrayRecord({k: Array(v.numpy() * np.float32(scale)) for k, v in honest.items()})
    return ArrayRecord({k: Array(np.full_like(v.numpy(), np.nan)) for k, v in honest.items()})


def forge_evaluation(attack: str, record: dict, all_tasks: Sequence[str], num_clients: int) -> dict:
    """The evaluation record an attacker sends instead of its honest `record`.

    eval-range: every per-task metric set to −1 (below the range of all but R²);
    eval-spoof-id: the next client's id; eval-tasks: metrics for a task the client does not
    hold (its first task's, copied), listed among its tasks. Other attacks send `record`.
    """
    if attack not in EVAL_ATTACKS:
        return record
    out = dict(record)
    if attack == "eval-range":
        return {k: (-1 if k.endswith("/n") else -1.0) if "/" in k else v for k, v in out.items()}
    if attack == "eval-spoof-id":
        out["client-id"] = (int(record["client-id"]) + 1) % max(num_clients, 2)
        return out
    held = str(record["tasks"]).split(",")
    foreign = next((t for t in all_tasks if t not in held), f"{held[0]}-forged")
    for key, value in record.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[1] == held[0]:
            out[f"{parts[0]}/{foreign}/{parts[2]}"] = value
    out["tasks"] = ",".join([*held, foreign])
    return out


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
