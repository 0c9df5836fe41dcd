"""The client's private state: everything of its model that is not shared (heads, gates,
private encoder blocks, Ditto's personal model) plus metadata (the weighting method's state,
the DP-SGD accountant history, the round).

It lives in `context.state` for the rounds of one run, and, when a state dir is configured,
on disk under `<state-dir>/<federation>/client-<id>/` so it outlives the run or a restart.
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
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from common.storage import atomic_write_bytes

ARRAYS_KEY = "fedmtl.private"
META_KEY = "fedmtl.meta"
CURRENT, PREVIOUS = "state.npz", "state.prev.npz"
log = logging.getLogger(__name__)


class StateError(RuntimeError):
    """No readable private state although state files exist; names the files."""


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
