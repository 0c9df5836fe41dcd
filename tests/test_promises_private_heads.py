"""Private parts never leave the client: one real ClientApp round (Flower's dispatch and the
handler, no SuperLink) under every algorithm and architecture that keeps something private,
checked on the reply the server would receive. tests/test_simulation_core.py checks the same
on a real simulation for FedPer; this covers the other layouts in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord

from client.state import read_state_files
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from server.app import initial_model
from tests.clientapp_round import train_reply
from tests.helpers import TINY

ROUND_1 = {"server-round": 1, "lr": 0.05, "local-epochs": 1}
PRIVATE_LAYOUTS = {
    "fedper": {"algorithm": "fedper"},
    "fedrep": {"algorithm": "fedrep"},
    "ditto": {"algorithm": "ditto"},
    "mmoe": {"architecture": "mmoe"},
    "shared-layers": {"shared-layers": 1},
}


def sent_by_server(**overrides: Any) -> ArrayRecord:
    """The shared arrays the server sends in round 1, `shared-layers` included."""
    cfg = parse_run_config({**TINY, **overrides})
    model = initial_model(cfg)
    keys = model_shared_keys(model, get_algorithm(cfg.algorithm), cfg.shared_layers)
    return arrays_from_model(model, keys)


@pytest.mark.parametrize("layout", sorted(PRIVATE_LAYOUTS))
def test_a_client_replies_with_exactly_the_shared_keys_it_received(
    tmp_path: Path, layout: str
) -> None:
    overrides = PRIVATE_LAYOUTS[layout]
    sent = sent_by_server(**overrides)
    reply = train_reply(tmp_path, sent, ROUND_1, partition=1, **overrides)
    assert list(reply.content.array_records) == ["arrays"], "a second array record left"
    assert list(reply.content["arrays"].keys()) == list(sent.keys())
    # The client does hold private arrays (kept in its state dir): there was something to keep.
    private, _ = read_state_files(tmp_path / "default" / "client-1")
    assert any(k.startswith("heads.") for k in private), sorted(private)
