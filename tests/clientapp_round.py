"""One training round through the real ClientApp (Flower's dispatch, the mods, the handler),
without a SuperLink: what the server sends in, what it gets back. Tests use it to replay a
client's round from everything the server knows."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from client.app import app
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model
from tests.helpers import TINY


def sent_arrays(**overrides: Any) -> ArrayRecord:
    """The shared arrays the server sends in round 1 (its seeded initial encoder)."""
    cfg = parse_run_config({**TINY, **overrides})
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


def train_reply(
    state_dir: Path,
    sent: ArrayRecord,
    config: dict[str, Any],
    *,
    partition: int = 0,
    **overrides: Any,
) -> Message:
    """The ClientApp's reply to a train message: a client with a fresh memory and an empty
    state dir, the TINY run config + `overrides`, the server's `config` record."""
    run_config = {**TINY, "state-dir": str(state_dir), **overrides}
    node = {"partition-id": partition, "num-partitions": TINY["num-clients"]}
    context = Context(
        run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config=run_config
    )
    metadata = Metadata(1, "train-1", 0, 1, "", "1", time.time(), 3600.0, MessageType.TRAIN)
    content = RecordDict({"arrays": sent, "config": ConfigRecord(config)})
    reply = app(Message(content, metadata=metadata), context)
    assert not reply.has_error(), reply.error
    return reply


def arrays_of(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content["arrays"].items()}
