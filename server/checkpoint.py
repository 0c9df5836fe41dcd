"""Server checkpoints: after every round, the shared arrays, the strategy's own state (e.g.
FedAdam's moments, FedAvgM's momentum, the task-aware heads), the central-DP accountant's
history (so ε continues where it was), the clients that have trained (so a client that lost
its private state is noticed), the round's metrics line when it still waits for its
evaluation (`server.rounds`: the next round's training wave brings it), the round and a
hash of the run config, in one file written
atomically with one checksum over all of it. The last two are kept, so a corrupt or
truncated newest file falls back to the previous good one."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log

from common.storage import atomic_write_bytes

KEEP = 2
ACCOUNTANT = "privacy::accountant"  # JSON of the RDP accountant's state_dict, as bytes
TRAINED = "clients::trained"  # JSON list of the client ids that have trained, as bytes
PENDING = "rounds::pending"  # JSON of the round's metrics line awaiting its evaluation


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one from an incompatible run config."""


@dataclass
class Checkpoint:
    round: int
    digest: str
    arrays: ArrayRecord
    strategy_state: dict[str, np.ndarray]
    path: Path
    accountant: dict | None = None
    trained_clients: list[str] = field(default_factory=list)
    pending: dict | None = None  # this round's metrics line, not yet written (no evaluation)


def strategy_state(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Array- and float-valued attributes of a strategy and of the strategy it wraps,
    flattened to `attr::kind::key` names: ArrayRecords, dicts and lists of arrays, floats."""
    out: dict[str, np.ndarray] = {}
    for attr, value in vars(obj).items():
        name = prefix + attr
        if isinstance(value, ArrayRecord):
            out |= {f"{name}::record::{k}": np.asarray(v.numpy()) for k, v in value.items()}
            out[f"{name}::record"] = np.zeros(0)  # marks an ArrayRecord, even an empty one
        elif (
            isinstance(value, dict)
            and value
            and all(isinstance(v, np.ndarray) for v in value.values())
        ):
            out |= {f"{name}::dict::{k}": v for k, v in value.items()}
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            out |= {f"{name}::list::{i:06d}": v for i, v in enumerate(value)}
        elif isinstance(value, float):  # e.g. an adaptive clipping norm
            out[f"{name}::scalar"] = np.asarray(value)
        elif attr in ("inner", "strategy") and hasattr(value, "aggregate_train"):
            out |= strategy_state(value, prefix=f"{name}.")
    return out


def restore_strategy(strategy: Any, ckpt: Checkpoint, accountant: Any = None) -> None:
    """The strategy's arrays state and, under central DP, `accountant`'s history: the
    accountant that composes this run's releases (under SecAgg+ not the strategy's own)."""
    restore_strategy_state(strategy, ckpt.strategy_state)
    if accountant is None:
        return
    if ckpt.accountant is None:
        raise CheckpointError(
            f"checkpoint {ckpt.path} holds no central-DP accountant: resuming would count ε "
            "from 0 again; start a new run (resume = false or another run-name)"
        )
    try:
        accountant.load_state_dict(ckpt.accountant)
    except ValueError as err:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: its central-DP accountant does not fit this run ({err}); "
            "resume with the same config and the same number of clients"
        ) from None


def restore_strategy_state(obj: Any, state: dict[str, np.ndarray]) -> None:
    """Inverse of `strategy_state`."""
    grouped: dict[str, dict[str, Any]] = {}
    for name, value in state.items():
        path, kind, *key = name.split("::", 2)
        grouped.setdefault(path, {"kind": kind, "items": {}})
        if key:
            grouped[path]["items"][key[0]] = value
    for path, entry in grouped.items():
        *owners, attr = path.split(".")
        target = obj
        for owner in owners:
            target = getattr(target, owner)
        items = entry["items"]
        if entry["kind"] == "scalar":
            value: Any = float(state[f"{path}::scalar"])
        elif entry["kind"] == "record":
            value = ArrayRecord({k: Array(v) for k, v in items.items()})
        elif entry["kind"] == "dict":
            value = dict(items)
        else:
            value = [items[k] for k in sorted(items)]
        setattr(target, attr, value)


def save_checkpoint(
    directory: Path,
    rnd: int,
    digest: str,
    arrays: ArrayRecord,
    strategy: Any,
    *,
    accountant: Any = None,
    trained_clients: Iterable[str] = (),
    pending: dict | None = None,
) -> Path:
    """Write round `rnd`'s checkpoint; `accountant` is the central-DP accountant that
    composed this run's releases, `trained_clients` the clients that have trained so far,
    `pending` round `rnd`'s metrics line while it waits for its evaluation."""
    payload = {f"shared::{k}": np.asarray(v.numpy()) for k, v in arrays.items()}
    payload |= {f"strategy::{k}": v for k, v in strategy_state(strategy).items()}
    payload[TRAINED] = _json_bytes(sorted(set(trained_clients), key=int))
    if accountant is not None:
        payload[ACCOUNTANT] = _json_bytes(accountant.state_dict())
    if pending is not None:
        payload[PENDING] = _json_bytes(pending)
    meta = {
        "round": rnd,
        "digest": digest,
        "shared_keys": list(arrays.keys()),
        "sha256": _checksum(payload),
    }
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    path = Path(directory) / f"checkpoint-{rnd:05d}.npz"
    atomic_write_bytes(path, buf.getvalue())
    for old in sorted(Path(directory).glob("checkpoint-*.npz"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def clear_checkpoints(directory: Path) -> None:
    """Remove a previous run's checkpoints: a new run under the same name must never resume
    from them, nor have its own pruned as older than theirs."""
    for old in Path(directory).glob("checkpoint-*.npz"):
        old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, digest: str) -> Checkpoint | None:
    """The newest checkpoint that reads back whole; None when there is none at all.

    Refuses (CheckpointError) a checkpoint written under a different run config."""
    candidates = sorted(Path(directory).glob("checkpoint-*.npz"), reverse=True)
    for path in candidates:
        try:
            ckpt = _read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log(
                WARNING,
                "fedmtl | checkpoint %s is unreadable (%s); trying the previous one",
                path,
                err,
            )
            continue
        if ckpt.digest != digest:
            raise CheckpointError(
                f"checkpoint {path} was written by a run with a different config (hash "
                f"{ckpt.digest}, this run {digest}); resume with the same config, or start a "
                "new run (resume = false or another run-name)"
            )
        return ckpt
    if candidates:
        raise CheckpointError(
            f"no readable checkpoint in {directory}: all {len(candidates)} are corrupt"
        )
    return None


def _read(path: Path) -> Checkpoint:
    with np.load(path, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    meta = json.loads(payload.pop("__meta__").tobytes().decode())
    if _checksum(payload) != meta["sha256"]:
        raise ValueError("checksum mismatch")
    arrays = ArrayRecord({k: Array(payload[f"shared::{k}"]) for k in meta["shared_keys"]})
    state = {k[len("strategy::") :]: v for k, v in payload.items() if k.startswith("strategy::")}
    accountant = _from_json_bytes(payload[ACCOUNTANT]) if ACCOUNTANT in payload else None
    trained = _from_json_bytes(payload[TRAINED]) if TRAINED in payload else []
    pending = _from_json_bytes(payload[PENDING]) if PENDING in payload else None
    return Checkpoint(
        meta["round"], meta["digest"], arrays, state, path, accountant, trained, pending
    )


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


def _from_json_bytes(array: np.ndarray) -> Any:
    return json.loads(array.tobytes().decode())


def _checksum(payload: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(payload):
        h.update(key.encode())
        h.update(str(payload[key].dtype).encode() + str(payload[key].shape).encode())
        h.update(np.ascontiguousarray(payload[key]).tobytes())
    return h.hexdigest()
