"""Durability: a crash while writing leaves the previous file whole and no temp file behind;
a truncated or corrupt checkpoint is detected, named, and the previous good one is used.

Crashes are simulated where they hurt most: part-way through writing the temp file, and
after the temp file is complete but before the rename. One test kills a real process (SIGKILL,
no cleanup handlers run) in the middle of a write.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, RecordDict

import common.storage as storage
from client.state import PrivateStore, StateError
from server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from server.results import RunResults

ROOT = Path(__file__).resolve().parent.parent


class Crash(RuntimeError):
    """The simulated crash."""


def crash_on_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file is complete, the rename never happens."""

    def boom(src: Any, dst: Any) -> None:
        raise Crash(f"crash before renaming {src} -> {dst}")

    monkeypatch.setattr(storage.os, "replace", boom)


def crash_mid_write(monkeypatch: pytest.MonkeyPatch, exc: type[BaseException] = Crash) -> None:
    """The temp file gets half of its bytes, then the write raises."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *args: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise exc("crash half-way through the write")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.f, name)

    monkeypatch.setattr(storage.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


CRASHES = {
    "before-rename": crash_on_replace,
    "mid-write": crash_mid_write,
    "interrupt-mid-write": lambda mp: crash_mid_write(mp, KeyboardInterrupt),
}


def leftovers(directory: Path) -> list[str]:
    """Temp files `atomic_write_bytes` makes are dot-files named after their target."""
    return sorted(p.name for p in directory.rglob(".*") if p.is_file())


# ------------------------------------------------------------------------ atomic primitives


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crash_while_writing_keeps_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    target = tmp_path / "summary.json"
    storage.atomic_write_json(target, {"round": 1})
    arrays = tmp_path / "shared_arrays.npz"
    storage.atomic_write_arrays(arrays, {"w": np.ones(3)})
    CRASHES[crash](monkeypatch)
    with pytest.raises((Crash, KeyboardInterrupt)):
        storage.atomic_write_json(target, {"round": 2, "pad": "x" * 10_000})
    with pytest.raises((Crash, KeyboardInterrupt)):
        storage.atomic_write_arrays(arrays, {"w": np.zeros(10_000)})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"round": 1}
    assert np.array_equal(storage.read_arrays(arrays)["w"], np.ones(3))
    assert leftovers(tmp_path) == []


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """SIGKILL between writing the temp file and renaming it: no handler runs, so the temp
    file stays, but the target is the old one and readers never pick the temp file up."""
    target = tmp_path / "checkpoints" / "checkpoint-00001.npz"
    storage.atomic_write_arrays(target, {"w": np.ones(3)})
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
import common.storage as storage
storage.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
storage.atomic_write_arrays({str(target)!r}, {{"w": np.zeros(100_000)}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert np.array_equal(storage.read_arrays(target)["w"], np.ones(3))
    stray = leftovers(target.parent)
    assert len(stray) == 1 and stray[0].startswith(".checkpoint-00001.npz.")
    assert [p.name for p in target.parent.glob("checkpoint-*.npz")] == [target.name]


def test_jsonl_append_never_damages_earlier_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    for i in range(3):
        storage.append_jsonl(path, {"round": i + 1})
    with open(path, "a") as f:  # a crash part-way through the fourth line
        f.write('{"round": 4, "per_ta')
    lines = path.read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines[:3]] == [1, 2, 3]


def test_a_torn_last_metrics_line_does_not_block_a_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for i in range(2):
        storage.append_jsonl(run / "metrics.jsonl", {"round": i + 1})
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "per_ta')
    results = RunResults(run, {"run-name": "r"})
    results.keep_rounds_until(2)
    assert [r["round"] for r in results.rounds] == [1, 2]


# ------------------------------------------------------------------------ client state files


def store(state_dir: Path, client_id: int = 3) -> PrivateStore:
    """A store as a restarted client sees it: empty context, state only on disk."""
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return PrivateStore(context, client_id, str(state_dir), "fed")


def heads(value: float) -> dict[str, np.ndarray]:
    return {
        "heads.left.0.weight": np.full((4, 3), value, np.float32),
        "heads.left.0.bias": np.full(4, value, np.float32),
    }


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_client_state_survives_a_crash_while_saving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    store(tmp_path).save(heads(1.0), {"round": 1})
    CRASHES[crash](monkeypatch)
    with pytest.raises((Crash, KeyboardInterrupt)):
        store(tmp_path).save(heads(2.0), {"round": 2})
    monkeypatch.undo()
    arrays, meta = store(tmp_path).load()
    assert meta == {"round": 1}
    assert np.array_equal(arrays["heads.left.0.weight"], heads(1.0)["heads.left.0.weight"])
    assert leftovers(tmp_path) == []


def test_client_state_arrays_and_metadata_never_pair_across_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrays and metadata (weighting state, DP-SGD's accountant history) are one file: a
    crash after the previous generation was set aside but before the new one landed leaves
    the previous pair, whole and consistent."""
    store(tmp_path).save(heads(1.0), {"round": 1, "dp_history": [[1.0, 0.1, 10]]})
    real = storage.os.replace
    calls = []

    def second_rename_crashes(src: Any, dst: Any) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise Crash("crash before the new state file is renamed into place")
        real(src, dst)

    monkeypatch.setattr(storage.os, "replace", second_rename_crashes)
    with pytest.raises(Crash):
        store(tmp_path).save(heads(2.0), {"round": 2, "dp_history": [[1.0, 0.1, 20]]})
    monkeypatch.undo()
    arrays, meta = store(tmp_path).load()
    assert np.array_equal(arrays["heads.left.0.bias"], heads(1.0)["heads.left.0.bias"])
    assert meta == {"round": 1, "dp_history": [[1.0, 0.1, 10]]}
    assert leftovers(tmp_path) == []


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # one flipped byte in the middle
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])


@pytest.mark.parametrize(
    ("name", "how"), [("state.npz", "truncated"), ("state.npz", "empty"), ("state.npz", "flipped")]
)
def test_a_damaged_client_state_file_is_named_or_falls_back(
    tmp_path: Path, name: str, how: str
) -> None:
    store(tmp_path).save(heads(1.0), {"round": 1})
    store(tmp_path).save(heads(2.0), {"round": 2})
    path = tmp_path / "fed" / "client-3" / name
    _damage(path, how)
    arrays, meta = store(tmp_path).load()  # the previous good generation
    assert meta["round"] == 1
    assert np.array_equal(arrays["heads.left.0.bias"], heads(1.0)["heads.left.0.bias"])


def test_a_flipped_bit_in_client_arrays_is_detected(tmp_path: Path) -> None:
    """Damaged head values are never used silently; with no previous generation to fall
    back to, the error names the file."""
    store(tmp_path).save(heads(1.0), {"round": 1})
    path = tmp_path / "fed" / "client-3" / "state.npz"
    data = path.read_bytes()
    i = data.index(np.float32(1.0).tobytes()) + 3  # inside a stored value
    path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    with pytest.raises(StateError, match=r"state\.npz.*(CRC|checksum)"):
        store(tmp_path).load()


# ------------------------------------------------------------------------------ checkpoints


class Strategy:
    """A strategy with FedAdam-like state."""

    def __init__(self, value: float) -> None:
        self.m_t = {"w": np.full(3, value)}
        self.clipping_norm = value


def save(directory: Path, rnd: int) -> None:
    arrays = ArrayRecord({"w": Array(np.full(3, rnd, dtype=np.float32))})
    save_checkpoint(directory, rnd, "abc", arrays, Strategy(float(rnd)))


@pytest.mark.parametrize("crash", sorted(CRASHES))
def test_a_crash_while_checkpointing_keeps_the_previous_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str
) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    CRASHES[crash](monkeypatch)
    with pytest.raises((Crash, KeyboardInterrupt)):
        save(tmp_path, 3)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*.npz")) == [
        "checkpoint-00001.npz",
        "checkpoint-00002.npz",
    ]
    assert leftovers(tmp_path) == []
    ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 2
    assert np.array_equal(ckpt.strategy_state["m_t::dict::w"], np.full(3, 2.0))


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    newest = tmp_path / "checkpoint-00002.npz"
    _damage(newest, how)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 1
    assert np.array_equal(ckpt.arrays["w"].numpy(), np.full(3, 1.0))
    assert ckpt.strategy_state["clipping_norm::scalar"] == 1.0
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(newest) in warning and "unreadable" in warning and "previous" in warning


def test_a_checkpoint_whose_content_was_altered_fails_its_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed NPZ with a changed array: only our sha256 can tell."""
    save(tmp_path, 1)
    save(tmp_path, 2)
    newest = tmp_path / "checkpoint-00002.npz"
    with np.load(newest) as data:
        payload = {k: data[k] for k in data.files}
    payload["shared::w"] = payload["shared::w"] + 1
    np.savez(newest, **payload)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 1
    assert "checksum mismatch" in " ".join(r.getMessage() for r in caplog.records)


def test_no_usable_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    save(tmp_path, 1)
    save(tmp_path, 2)
    for path in tmp_path.glob("checkpoint-*.npz"):
        _damage(path, "truncated")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*all 2 are corrupt"):
        load_checkpoint(tmp_path, "abc")


def test_stray_temp_files_are_never_read_as_checkpoints(tmp_path: Path) -> None:
    save(tmp_path, 1)
    (tmp_path / ".checkpoint-00002.npz.abc123").write_bytes(b"half a file")
    ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 1
