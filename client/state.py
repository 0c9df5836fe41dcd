"""The client's private state: everything of its model that is not shared (heads, gates,
private encoder blocks) plus the weighting method's state.

It lives in `context.state` for the rounds of one run, and, when a state dir is configured,
on disk under `<state-dir>/<federation>/client-<id>/` so it outlives the run or a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from common.storage import atomic_write_arrays, atomic_write_json, read_arrays

ARRAYS_KEY = "fedmtl.private"
META_KEY = "fedmtl.meta"


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
        if self.dir is not None and (self.dir / "private.npz").exists():
            meta = json.loads((self.dir / "meta.json").read_text())
            return read_arrays(self.dir / "private.npz"), meta
        return {}, {}

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.context.state.array_records[ARRAYS_KEY] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
        self.context.state.config_records[META_KEY] = ConfigRecord({"json": json.dumps(meta)})
        if self.dir is not None:
            # Arrays first, then the metadata that names their round: a crash in between
            # leaves metadata that is at most one round older than the arrays.
            atomic_write_arrays(self.dir / "private.npz", arrays)
            atomic_write_json(self.dir / "meta.json", meta)
