"""The client's private state: everything of its model that is not shared (heads, gates,
private encoder blocks, Ditto's personal model) plus metadata (the weighting method's state,
the DP-SGD accountant history, the round).

It lives in `context.state` for the rounds of one run, and, when a state dir is configured,
on disk under `<state-dir>/<federation>/client-<id>/` so it outlives the run or a restart.
Without a state dir it is in memory only, which the node says once per run. A client that the
server lists as having trained but that finds no state refuses to start afresh (see
`common.resume`), unless the run allows it.
On disk, arrays and metadata are one file with a SHA-256 over both (they can never be paired
across rounds), written atomically; the previous generation is kept, and a file that is
truncated or fails its checksum is reported by name and the previous one is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log as flwr_log

from common.resume import STATE_MISSING
from common.storage import atomic_write_bytes

ARRAYS_KEY = "fedmtl.private"
META_KEY = "fedmtl.meta"
NOTICE_KEY = "fedmtl.memory-only-noticed"
CURRENT, PREVIOUS = "state.npz", "state.prev.npz"
log = logging.getLogger(__name__)


class StateError(RuntimeError):
    """No readable private state although state files exist; names the files."""


class MissingStateError(StateError):
    """A client that trained before has no private state; names where it looked."""


class PrivateStore:
    """Read and write one client's private state (memory first, disk as a fallback)."""

    def __init__(self, context: Context, client_id: int, state_dir: str, federation: str) -> None:
        self.context = context
        self.dir = Path(state_dir) / federation / f"client-{client_id}" if state_dir else None

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(private arrays, metadata); empty when the client has never trained."""
        state = self.context.state
        if ARRAYS_KEY in state.array_records:
            arrays = {k: v.numpy() for k, v in state.array_records[ARRAYS_KEY].items()}
            meta = json.loads(str(state.config_records[META_KEY]["json"]))
            return arrays, meta
        if self.dir is None:
            return {}, {}
        return read_state_files(self.dir)

    def where(self) -> str:
        """Where this client's private state lives, for messages."""
        if self.dir is None:
            return "its memory (no state-dir in the node config or the run config)"
        return f"its state dir {self.dir}"

    def warn_if_memory_only(self) -> None:
        """Once per run and node: without a state dir, private state dies with the node."""
        state = self.context.state
        if self.dir is not None or NOTICE_KEY in state.config_records:
            return
        state.config_records[NOTICE_KEY] = ConfigRecord({"noticed": True})
        flwr_log(
            WARNING,
            "fedmtl | this node keeps its private state (heads, DP-SGD history) in memory "
            "only: a restart loses it, and the run then stops rather than retrain this "
            "client from scratch; give the node a persistent dir with --node-config "
            "'... state-dir=\"/var/lib/fedmtl/state\"'",
        )

    def require_state(self, client_id: int, trained: set[int], allow_missing: bool) -> None:
        """Refuse to go on with fresh private state when the server says this client trained
        before (`trained`) and none was found: that would silently replace its heads and,
        under DP-SGD, restart its ε at 0. `allow_missing` (resume-without-private-state)
        continues with a warning instead."""
        if client_id not in trained:
            return
        problem = (
            f"client {client_id}: {STATE_MISSING}: the server lists it as having trained in "
            f"an earlier round, but {self.where()} holds no state"
        )
        if allow_missing:
            flwr_log(
                WARNING,
                "fedmtl | %s; starting from fresh private state (resume-without-private-state)",
                problem,
            )
            return
        raise MissingStateError(
            f"{problem}; restore that state, or set resume-without-private-state = true to "
            "continue from fresh heads"
        )

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.context.state.array_records[ARRAYS_KEY] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
        self.context.state.config_records[META_KEY] = ConfigRecord({"json": json.dumps(meta)})
        if self.dir is None:
            return
        payload = dict(arrays)
        meta_bytes = json.dumps(meta).encode()
        payload["__meta__"] = np.frombuffer(meta_bytes, dtype=np.uint8)
        payload["__sha256__"] = np.frombuffer(_checksum(payload).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **payload)
        current = self.dir / CURRENT
        if current.exists():
            # Keep the last good generation: a crash from here on leaves it to fall back to.
            os.replace(current, self.dir / PREVIOUS)
        atomic_write_bytes(current, buf.getvalue())


def read_state_files(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The newest generation in `directory` that reads back whole and verifies."""
    problems = []
    for name in (CURRENT, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            return _read(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("client state %s is unreadable (%s); trying the previous one", path, err)
            problems.append(f"{path}: {err}")
    if problems:
        raise StateError("no readable client state: " + "; ".join(problems))
    return {}, {}


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        payload = {k: data[k] for k in data.files}
    digest = payload.pop("__sha256__").tobytes().decode()
    if _checksum(payload) != digest:
        raise ValueError("checksum mismatch")
    meta = json.loads(payload.pop("__meta__").tobytes().decode())
    return payload, meta


def _checksum(payload: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in payload if k != "__sha256__"):
        h.update(key.encode() + str(payload[key].dtype).encode() + str(payload[key].shape).encode())
        h.update(np.ascontiguousarray(payload[key]).tobytes())
    return h.hexdigest()
