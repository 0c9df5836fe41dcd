"""A resume loses nothing private and nothing privacy-relevant: ε continues where it stopped,
every client finds its own heads, and a client whose state is gone refuses instead of
silently starting afresh (unless the run says it may).

The real runs share one module fixture, all under the default config (no `state-dir`) with
central DP: an uninterrupted 4-round run, then a new 2-round run under the same name (which
must neither resume from nor prune the old run's checkpoints) resumed to round 4.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.app import open_session, train_session
from client.state import MissingStateError
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.records import arrays_from_model, model_shared_keys
from common.resume import STATE_MISSING, TRAINED_CLIENTS
from deploy.runs import Outcome
from server.app import initial_model
from tests.helpers import TINY, run_tiny, simulate

RUN = {
    "privacy": "central-dp",
    "dp-epsilon": 100.0,  # room for every round
    "max-update-ratio": 0.0,  # no rejected reply: every round releases (ε comparable)
    "audit-received": True,
    "run-name": "r",
}


def rows(outcome: Outcome) -> list[dict]:
    lines = (outcome.results_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def digests(outcome: Outcome, rnd: int, which: str) -> dict[str, str]:
    """Per client, the digest of its private state at the start or end of round `rnd`."""
    lines = (outcome.results_dir / "received.jsonl").read_text().splitlines()
    entries = [e for e in map(json.loads, lines) if e["phase"] == "train" and e["round"] == rnd]
    return {e["client"]: e["config"]["task-metrics"][which] for e in entries}


@dataclass
class Runs:
    full: list[dict]  # metrics of the uninterrupted 4-round run
    part: list[dict]  # metrics of the 2-round run, before it was resumed
    end_of_round_2: dict[str, str]
    resumed: Outcome
    copy: Path  # the 2-round run's results (with its client state), for other resumes


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("resume")
    full = rows(simulate(root / "a", **{**RUN, "num-server-rounds": 4}))
    part = simulate(root / "a", **RUN)
    end2 = digests(part, 2, "private-at-end")
    copy = root / "b" / "r"
    shutil.copytree(part.results_dir, copy)
    part_rows = rows(part)
    resumed = simulate(root / "a", **{**RUN, "num-server-rounds": 4, "resume": True})
    return Runs(full, part_rows, end2, resumed, copy)


@pytest.mark.slow
def test_central_dp_epsilon_continues_across_a_resume(runs: Runs) -> None:
    resumed = rows(runs.resumed)
    assert [r["round"] for r in resumed] == [1, 2, 3, 4]
    assert [r["central_dp"]["releases"] for r in resumed] == [1, 2, 3, 4]
    eps = [r["central_dp"]["epsilon"] for r in resumed]
    assert eps == pytest.approx([r["central_dp"]["epsilon"] for r in runs.full], rel=1e-12)
    assert eps[2] > eps[1]


@pytest.mark.slow
def test_resume_keeps_every_clients_private_state_by_default(runs: Runs) -> None:
    start3 = digests(runs.resumed, 3, "private-at-start")
    assert sorted(start3) == ["0", "1", "2"]
    assert start3 == runs.end_of_round_2, "a client started round 3 without its heads"


@pytest.mark.slow
def test_same_seed_central_dp_runs_release_different_encoders(runs: Runs) -> None:
    """The same config and seed: the evaluations of what each round released differ, where
    a non-DP run repeats them exactly (tests/test_simulation_core.py)."""
    for full, part in zip(runs.full[:2], runs.part, strict=True):
        assert full["train_loss"] is not None and part["train_loss"] is not None
        assert full["per_task"] != part["per_task"], f"round {full['round']} repeated its noise"


@pytest.mark.slow
def test_a_resume_whose_client_state_was_deleted_is_refused(runs: Runs) -> None:
    lost = runs.copy / "client-state" / "default" / "client-1"
    shutil.rmtree(lost)
    outcome = run_tiny(runs.copy.parent, **{**RUN, "num-server-rounds": 4, "resume": True})
    assert not outcome.ok and outcome.summary["status"] == "failed"
    error = outcome.summary["error"]
    assert STATE_MISSING in error and f"client 1: {STATE_MISSING}" in error
    assert str(lost) in error
    assert "resume-without-private-state" in error
    assert [r["round"] for r in rows(outcome)] == [1, 2]


# ------------------------------------------------------------------ the client's side


def _context(state_dir: str, state: RecordDict, **overrides: object) -> Context:
    run_config = {**TINY, "state-dir": state_dir, **overrides}
    node = {"partition-id": 1, "num-partitions": 3}
    return Context(run_id=1, node_id=1, node_config=node, state=state, run_config=run_config)


def _received():
    cfg = parse_run_config(TINY)
    model = initial_model(cfg)
    return arrays_from_model(model, model_shared_keys(model, get_algorithm(cfg.algorithm)))


def test_a_client_listed_as_trained_without_state_refuses_naming_its_path(
    tmp_path: Path,
) -> None:
    told = {TRAINED_CLIENTS: "0,1,2"}
    with pytest.raises(MissingStateError, match=rf"client 1: .*{tmp_path}/default/client-1"):
        open_session(_context(str(tmp_path), RecordDict()), _received(), config=told)
    # A client the server does not list (never sampled, or new) starts afresh.
    open_session(_context(str(tmp_path), RecordDict()), _received(), config={TRAINED_CLIENTS: "0"})
    # Once it has trained, its state is found and nothing is refused.
    state = RecordDict()
    train_session(open_session(_context(str(tmp_path), state), _received()), 1, 0.0)
    open_session(_context(str(tmp_path), RecordDict()), _received(), config=told)


def test_the_override_lets_a_client_go_on_from_fresh_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    context = _context(str(tmp_path), RecordDict(), **{"resume-without-private-state": True})
    with caplog.at_level(logging.WARNING, logger="flwr"):
        session = open_session(context, _received(), config={TRAINED_CLIENTS: "1"})
    assert session.meta == {}
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert STATE_MISSING in warning and str(tmp_path / "default" / "client-1") in warning


def test_a_node_without_a_state_dir_warns_once_that_its_state_is_in_memory_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = RecordDict()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        for rnd in (1, 2):
            train_session(open_session(_context("", state), _received()), rnd, 0.0)
    warnings = [r.getMessage() for r in caplog.records if "in memory only" in r.getMessage()]
    assert len(warnings) == 1 and "state-dir" in warnings[0]
    # Restarted (memory gone) and listed as trained: refused, saying there was no state dir.
    with pytest.raises(MissingStateError, match="no state-dir"):
        open_session(_context("", RecordDict()), _received(), config={TRAINED_CLIENTS: "1"})
