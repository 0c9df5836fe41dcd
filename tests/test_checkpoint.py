"""Server checkpoints: strategy state round trip, corrupt-file fallback, config refusal, and a
real resumed simulation that ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from common.config import parse_run_config
from server.checkpoint import (
    CheckpointError,
    load_checkpoint,
    restore_strategy,
    restore_strategy_state,
    save_checkpoint,
)
from server.privacy import accountant_of, wrap_central_dp
from server.secure_aggregation import AccountedClientSideFixedClipping, CountingFedAvg
from server.strategies import build_strategy
from server.task_heads import TaskAwareHeads
from tests.helpers import run_tiny, simulate


def _fedadam() -> TaskAwareHeads:
    return TaskAwareHeads(build_strategy(parse_run_config({"strategy": "fedadam"})))


def fresh_has_no_moments(strategy: TaskAwareHeads) -> bool:
    return strategy.inner.m_t is None and strategy.inner.v_t is None


def test_strategy_state_round_trips(tmp_path: Path) -> None:
    strategy = _fedadam()
    assert fresh_has_no_moments(strategy)
    strategy.inner.current_arrays = {"w": np.zeros(3)}
    strategy.inner.m_t = {"w": np.array([0.1, 0.2, 0.3])}
    strategy.inner.v_t = {"w": np.array([1.0, 2.0, 3.0])}
    strategy.task_arrays = ArrayRecord({"heads.left.0.weight": Array(np.ones((2, 2)))})
    arrays = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    save_checkpoint(tmp_path, 4, "abc", arrays, strategy)
    ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt is not None and ckpt.round == 4
    fresh = _fedadam()
    restore_strategy_state(fresh, ckpt.strategy_state)
    assert np.array_equal(fresh.inner.m_t["w"], [0.1, 0.2, 0.3])
    assert np.array_equal(fresh.inner.v_t["w"], [1.0, 2.0, 3.0])
    assert np.array_equal(fresh.task_arrays["heads.left.0.weight"].numpy(), np.ones((2, 2)))
    assert np.array_equal(ckpt.arrays["w"].numpy(), np.ones(3))


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    strategy = _fedadam()
    for rnd in (1, 2, 3):
        arrays = ArrayRecord({"w": Array(np.full(3, rnd, dtype=np.float32))})
        save_checkpoint(tmp_path, rnd, "abc", arrays, strategy)
    files = sorted(tmp_path.glob("checkpoint-*.npz"))
    assert [f.name for f in files] == ["checkpoint-00002.npz", "checkpoint-00003.npz"]
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[: len(data) // 2])  # truncated
    ckpt = load_checkpoint(tmp_path, "abc")
    assert ckpt.round == 2 and np.array_equal(ckpt.arrays["w"].numpy(), np.full(3, 2))
    files[0].write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="all 2 are corrupt"):
        load_checkpoint(tmp_path, "abc")


def test_checkpoint_from_another_config_is_refused(tmp_path: Path) -> None:
    strategy = _fedadam()
    save_checkpoint(tmp_path, 1, "aaaa", ArrayRecord({"w": Array(np.zeros(3))}), strategy)
    with pytest.raises(CheckpointError, match="different config"):
        load_checkpoint(tmp_path, "bbbb")


def _central_dp(kind: str) -> tuple[object, object]:
    """(the strategy the round loop checkpoints, the wrapper whose accountant composes)."""
    cdp = {"privacy": "central-dp", "num-clients": 3, "cdp-clipped-count-stddev": 5.0}
    if kind == "secagg":
        cfg = parse_run_config({**cdp, "secagg": True, "cdp-clipping": "fixed-client"})
        return build_strategy(cfg), AccountedClientSideFixedClipping(CountingFedAvg(), cfg, 3)
    cfg = parse_run_config({**cdp, "cdp-clipping": kind})
    strategy = wrap_central_dp(build_strategy(cfg), cfg, 3)
    return strategy, strategy


@pytest.mark.parametrize("kind", ["fixed-server", "adaptive-client", "secagg"])
def test_the_central_dp_accountant_survives_a_checkpoint(tmp_path: Path, kind: str) -> None:
    """Flower's fixed-clipping accountant, ours for adaptive clipping, SecAgg+'s."""
    strategy, private = _central_dp(kind)
    for _ in range(2):
        accountant_of(private).compose(GaussianPrivacyEvent(1.0, 3, 3))
    spent = accountant_of(private).get_privacy_spent()
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    save_checkpoint(tmp_path, 2, "abc", arrays, strategy, accountant=accountant_of(private))
    strategy, private = _central_dp(kind)  # a new ServerApp: ε would start at 0
    restore_strategy(strategy, load_checkpoint(tmp_path, "abc"), accountant_of(private))
    assert accountant_of(private).get_privacy_spent() == spent
    assert spent.num_releases == 2 and spent.epsilon > 0


def test_a_central_dp_resume_without_an_accountant_is_refused(tmp_path: Path) -> None:
    strategy, private = _central_dp("fixed-server")
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    save_checkpoint(tmp_path, 2, "abc", arrays, strategy)  # as before ε was checkpointed
    with pytest.raises(CheckpointError, match=r"no central-DP accountant.*ε from 0"):
        restore_strategy(strategy, load_checkpoint(tmp_path, "abc"), accountant_of(private))


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    common = {"strategy": "fedadam", "state-dir": str(tmp_path / "state"), "run-name": "r"}
    full = simulate(
        tmp_path / "full",
        **{**common, "num-server-rounds": 3, "state-dir": str(tmp_path / "state-full")},
    )
    simulate(tmp_path / "split", **{**common, "num-server-rounds": 2})
    resumed = simulate(tmp_path / "split", **{**common, "num-server-rounds": 3, "resume": True})

    def rows(path: Path) -> list[dict]:
        out = [json.loads(x) for x in path.read_text().splitlines()]
        for r in out:
            r.pop("seconds"), r.pop("train_seconds")
        return out

    got = rows(resumed.results_dir / "metrics.jsonl")
    want = rows(full.results_dir / "metrics.jsonl")
    assert [r["round"] for r in got] == [1, 2, 3]
    # Round 2 was the stopped run's last: its evaluation took a wave of its own instead of
    # riding on round 3's training messages, so the model went down once more.
    assert got[1].pop("bytes_down") == 2 * want[1].pop("bytes_down")
    assert got == want
    a = np.load(full.results_dir / "shared_arrays.npz")
    b = np.load(resumed.results_dir / "shared_arrays.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert resumed.summary["rounds"] == 3


@pytest.mark.slow
def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    simulate(tmp_path, **{"run-name": "r", "num-server-rounds": 1})
    outcome = run_tiny(
        tmp_path, **{"run-name": "r", "num-server-rounds": 2, "resume": True, "lr": 0.01}
    )
    assert not outcome.ok
    assert "different config" in outcome.summary["error"]
