"""Update compression: round trips within its stated bound; it packs the update the client's
mods clipped, not the other way round; the bytes the server measures are the bytes of the
arrays actually in the messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from common.compression import compress, decompress, decompress_reply
from tests.clientapp_round import arrays_of, sent_arrays, train_reply
from tests.helpers import simulate

finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 40), elements=finite),
    arrays(np.float32, st.integers(1, 40), elements=finite),
)
def test_int8_and_fp16_round_trip_within_their_bounds(a: np.ndarray, b: np.ndarray) -> None:
    n = min(len(a), len(b))
    sent = ArrayRecord({"w": Array(a[:n])})
    new = ArrayRecord({"w": Array(b[:n])})
    delta = b[:n].astype(np.float64) - a[:n]
    for method in ("int8", "fp16"):
        packed, info = compress(new, sent, method)
        back = decompress(packed, info, sent)["w"].numpy()
        assert back.dtype == np.float32
        err = np.abs(back.astype(np.float64) - b[:n])
        if method == "int8":
            assert packed["w"].numpy().dtype == np.int8
            bound = np.abs(delta).max() / 254 + 1e-4 * (1 + np.abs(b[:n]).max())
        else:
            assert packed["w"].numpy().dtype == np.float16
            bound = np.abs(delta).max() * 2**-10 + 1e-4 * (1 + np.abs(b[:n]).max())
        assert err.max() <= bound


def test_unreadable_compressed_update_is_reported() -> None:
    sent = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    packed, info = compress(ArrayRecord({"w": Array(np.ones(3, np.float32))}), sent, "int8")
    content = RecordDict({"arrays": packed, "compression": info})
    assert decompress_reply(content, ArrayRecord({"v": Array(np.zeros(3, np.float32))}))
    content = RecordDict({"arrays": packed, "compression": info})
    assert decompress_reply(content, sent) is None
    assert np.allclose(content["arrays"]["w"].numpy(), 1.0, atol=1 / 254)


@pytest.mark.parametrize("method", ["int8", "fp16"])
def test_the_server_decompresses_the_clipped_update(tmp_path: Path, method: str) -> None:
    """Client-side clipping (central DP's `fixedclipping_mod`) clips weights; compression then
    packs the clipped update. What the server decompresses is that update, within the
    compression's bound per value."""
    norm = 0.01  # far below the norm of one round's update: the clipping binds
    privacy = {"privacy": "central-dp", "cdp-clipping": "fixed-client", "clipping-norm": norm}
    sent = sent_arrays(**privacy)
    config = {"server-round": 1, "lr": 0.05, "local-epochs": 1, "clipping_norm": norm}
    clipped = arrays_of(train_reply(tmp_path / "none", sent, config, **privacy))
    start = {k: v.numpy() for k, v in sent.items()}
    update = np.concatenate([(clipped[k] - start[k]).ravel() for k in start])
    assert np.linalg.norm(update) == pytest.approx(norm, rel=1e-4)

    reply = train_reply(tmp_path / method, sent, config, compression=method, **privacy)
    assert decompress_reply(reply.content, sent) is None  # what the server does first
    received = arrays_of(reply)
    for key, value in received.items():
        delta = np.abs(clipped[key] - start[key]).max()
        bound = delta / 254 if method == "int8" else delta * 2**-10
        assert np.abs(value - clipped[key]).max() <= bound + 1e-7, key


@pytest.mark.slow
def test_measured_bytes_are_the_arrays_in_the_messages(tmp_path) -> None:
    plain = simulate(tmp_path / "plain", **{"num-server-rounds": 1})
    packed = simulate(tmp_path / "int8", **{"num-server-rounds": 1, "compression": "int8"})
    shared = np.load(plain.results_dir / "shared_arrays.npz")
    # What a message carries per array: its serialized bytes (data + .npy header).
    f32 = sum(len(Array(shared[k]).data) for k in shared.files)
    i8 = sum(len(Array(shared[k].astype(np.int8)).data) for k in shared.files)
    row = json.loads((plain.results_dir / "metrics.jsonl").read_text().splitlines()[0])
    row8 = json.loads((packed.results_dir / "metrics.jsonl").read_text().splitlines()[0])
    clients = row["clients"]
    assert row["bytes_up"] == clients * f32  # the float32 encoder from each client
    assert row8["bytes_up"] == clients * i8  # the int8 update from each client
    assert row["bytes_down"] == row8["bytes_down"] == 2 * clients * f32  # train + eval
    params = sum(shared[k].size for k in shared.files)
    assert row["bytes_up"] / row8["bytes_up"] > 3.5 and f32 > 4 * params
