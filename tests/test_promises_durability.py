"""Promises about the files fedmtl keeps that tests/test_durability.py does not pin: state
files are readable by their owner only, a well-formed file whose content was changed fails
its sha256 (client state, and every part of a checkpoint), a crafted NPZ cannot run code
when it is read, and a damaged metrics line other than the torn last one is named."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, RecordDict

import common.storage as storage
from client.state import PrivateStore, StateError
from common.userdata import UserDataError, load_user_pool
from server.checkpoint import ACCOUNTANT, TRAINED, CheckpointError, load_checkpoint, save_checkpoint
from server.results import RunResults, read_metrics


class Strategy:
    """A strategy with FedAdam-like state (what `strategy_state` checkpoints)."""

    def __init__(self, value: float) -> None:
        self.m_t = {"w": np.full(3, value)}


class Accountant:
    """The part of an RDP accountant a checkpoint stores."""

    def __init__(self, releases: int) -> None:
        self.releases = releases

    def state_dict(self) -> dict:
        return {"releases": self.releases}


def checkpoint(directory: Path, rnd: int) -> Path:
    arrays = ArrayRecord({"w": Array(np.full(3, rnd, dtype=np.float32))})
    return save_checkpoint(
        directory,
        rnd,
        "abc",
        arrays,
        Strategy(float(rnd)),
        accountant=Accountant(rnd),
        trained_clients=["0", "1"],
    )


def store(state_dir: Path) -> PrivateStore:
    """A store as a restarted client sees it: empty memory, state only on disk."""
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return PrivateStore(context, 3, str(state_dir), "fed")


def heads(value: float) -> dict[str, np.ndarray]:
    return {"heads.left.0.weight": np.full((4, 3), value, np.float32)}


def rewrite(path: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    """Re-save an NPZ with `change` applied to its arrays: a well-formed file (valid zip,
    valid CRCs) whose content differs from what its checksum was computed over."""
    with np.load(path) as data:
        payload = {k: data[k] for k in data.files}
    change(payload)
    with open(path, "wb") as f:
        np.savez(f, **payload)


# ------------------------------------------------------------------------ file permissions


def test_state_files_are_created_readable_by_their_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: plain open() would make these 0644
    try:
        first = checkpoint(tmp_path / "checkpoints", 1)
        store(tmp_path / "state").save(heads(1.0), {"round": 1})
        store(tmp_path / "state").save(heads(2.0), {"round": 2})
        results = RunResults(tmp_path / "run", {"run-name": "r"})
        results.save_arrays(ArrayRecord({"w": Array(np.zeros(3, np.float32))}))
        results.finish("completed")
    finally:
        os.umask(old)
    client = tmp_path / "state" / "fed" / "client-3"
    files = [first, client / "state.npz", client / "state.prev.npz"]
    files += [tmp_path / "run" / n for n in ("config.json", "shared_arrays.npz", "summary.json")]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o600), {k: oct(v) for k, v in modes.items()}


# ------------------------------------------------------------------------------ checksums


def test_client_state_whose_content_was_changed_fails_its_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store(tmp_path).save(heads(1.0), {"round": 1})
    store(tmp_path).save(heads(2.0), {"round": 2})
    current = tmp_path / "fed" / "client-3" / "state.npz"

    def change_head(payload: dict[str, np.ndarray]) -> None:
        payload["heads.left.0.weight"] = payload["heads.left.0.weight"] + 1

    rewrite(current, change_head)
    with caplog.at_level(logging.WARNING, logger="client.state"):
        arrays, meta = store(tmp_path).load()
    assert meta["round"] == 1, "the changed file was used"
    assert np.array_equal(arrays["heads.left.0.weight"], heads(1.0)["heads.left.0.weight"])
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(current) in warning and "checksum mismatch" in warning
    rewrite(tmp_path / "fed" / "client-3" / "state.prev.npz", change_head)
    with pytest.raises(StateError, match=r"state\.npz: checksum mismatch.*state\.prev\.npz"):
        store(tmp_path).load()


@pytest.mark.parametrize("part", ["strategy::m_t::dict::w", ACCOUNTANT, TRAINED])
def test_a_checkpoint_changed_in_any_part_fails_its_checksum(
    tmp_path: Path, part: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The strategy's state, the central-DP accountant and the list of clients that have
    trained are covered by the checksum, not only the shared arrays."""
    checkpoint(tmp_path, 1)
    newest = checkpoint(tmp_path, 2)

    def change(payload: dict[str, np.ndarray]) -> None:
        value = payload[part]
        if value.dtype == np.uint8:  # JSON bytes: another, valid JSON document
            text = json.dumps({"forged": value.tobytes().decode()})
            payload[part] = np.frombuffer(text.encode(), dtype=np.uint8)
        else:
            payload[part] = value + 1

    rewrite(newest, change)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 1, "the changed checkpoint was used"
    assert ckpt.accountant == {"releases": 1} and ckpt.trained_clients == ["0", "1"]
    assert "checksum mismatch" in " ".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------- no code runs on load


class RunsCode:
    """Unpickling this creates `marker`: what a crafted file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def crafted_npz(path: Path, marker: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays, payload=np.array([RunsCode(marker)], dtype=object))


def _checkpoint(directory: Path, marker: Path) -> None:
    crafted_npz(directory / "checkpoint-00001.npz", marker)
    with pytest.raises(CheckpointError, match="all 1 are corrupt"):
        load_checkpoint(directory, "abc")


def _client_state(directory: Path, marker: Path) -> None:
    crafted_npz(directory / "fed" / "client-3" / "state.npz", marker)
    with pytest.raises(StateError, match=r"state\.npz"):
        store(directory).load()


def _user_data(directory: Path, marker: Path) -> None:
    schema = directory / "site.schema.json"
    schema.write_text(json.dumps({"inputs": ["a"], "tasks": [{"name": "y", "kind": "binary"}]}))
    data = directory / "site.npz"
    crafted_npz(data, marker, a=np.zeros(4), y=np.zeros(4))
    with pytest.raises(UserDataError, match=r"site\.npz"):
        load_user_pool(data, schema)


def _arrays(directory: Path, marker: Path) -> None:
    crafted_npz(directory / "shared_arrays.npz", marker)
    with pytest.raises(ValueError, match="allow_pickle"):
        storage.read_arrays(directory / "shared_arrays.npz")


@pytest.mark.parametrize(
    "reader",
    [_checkpoint, _client_state, _user_data, _arrays],
    ids=["checkpoint", "client-state", "user-data", "arrays"],
)
def test_a_crafted_npz_cannot_run_code_when_read(
    tmp_path: Path, reader: Callable[[Path, Path], None]
) -> None:
    marker = tmp_path / "code-ran"
    (tmp_path / "files").mkdir()
    try:
        reader(tmp_path / "files", marker)  # refused, naming the file
    finally:
        assert not marker.exists(), "reading the file executed code from it"


# ----------------------------------------------------------------------------- metrics.jsonl


def test_a_damaged_metrics_line_before_the_last_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for i in range(3):
        storage.append_jsonl(path, {"round": i + 1})
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-3]  # damaged in the middle of the file: not a torn append
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not JSON"):
        read_metrics(path)
