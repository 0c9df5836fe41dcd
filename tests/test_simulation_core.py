"""The core contract, checked on real Flower simulations from what the server received."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.config import parse_run_config
from common.federation import client_tasks
from common.records import EVALUATION_TASKS
from deploy.runs import Outcome
from tests.helpers import TINY, simulate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core_run(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    return simulate(tmp_path_factory.mktemp("core"), **{"audit-received": True, "run-name": "core"})


def audit(outcome: Outcome, phase: str = "train") -> list[dict]:
    """What the ServerApp received, reply by reply, in one phase."""
    lines = (outcome.results_dir / "received.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["phase"] == phase]


def test_server_receives_only_the_encoder_keys_it_sent(core_run: Outcome) -> None:
    import numpy as np

    sent = list(np.load(core_run.results_dir / "shared_arrays.npz").files)
    entries = audit(core_run)
    assert {e["round"] for e in entries} == {1, 2}
    assert len({e["client"] for e in entries}) == TINY["num-clients"]
    for e in entries:
        assert e["records"] == ["arrays"]
        keys = e["keys"]["arrays"]
        assert keys == sent, "a reply carried keys other than those the server sent"
        assert all(k.startswith("encoder.") for k in keys)
        assert not any(k.startswith(("heads.", "gates.", "global_heads.")) for k in keys)


def test_heads_persist_across_rounds(core_run: Outcome) -> None:
    by_client: dict[str, dict[int, dict]] = {}
    for e in audit(core_run):
        by_client.setdefault(e["client"], {})[e["round"]] = e["config"]["task-metrics"]
    for client, rounds in by_client.items():
        r1, r2 = rounds[1], rounds[2]
        assert r1["private-at-start"] != r1["private-at-end"], f"client {client} did not train"
        assert r2["private-at-start"] == r1["private-at-end"], f"client {client} lost its heads"


def test_every_client_reports_every_task_it_holds(core_run: Outcome) -> None:
    cfg = parse_run_config({})
    summary = core_run.summary
    assert summary is not None and summary["status"] == "completed"
    assert summary["rounds"] == TINY["num-server-rounds"]
    task_sets = set()
    names = ["left", "right", "sum", "parity", "equal"]
    for cid in range(TINY["num-clients"]):
        tasks = client_tasks(cfg, names, cid, TINY["num-clients"])
        task_sets.add(tuple(tasks))
        got = summary["per_client"][str(cid)]
        assert sorted(got) == sorted(tasks)
        for task in tasks:
            metric = "test/mae" if task == "sum" else "test/accuracy"
            assert metric in got[task] and "val/" + metric.split("/")[1] in got[task]
    assert len(task_sets) == TINY["num-clients"], "clients should hold different task sets"
    assert summary["bytes_up"] > 0 and summary["bytes_down"] >= summary["bytes_up"]
    assert (core_run.results_dir / "per_task.png").stat().st_size > 1000
    rows = [
        json.loads(x) for x in (core_run.results_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rows] == [1, 2]


def test_same_seed_gives_identical_metrics(core_run: Outcome, tmp_path: Path) -> None:
    again = simulate(tmp_path, **{"audit-received": True, "run-name": "core"})

    def strip(path: Path) -> list[dict]:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        for r in rows:
            r.pop("seconds"), r.pop("train_seconds")
        return rows

    assert strip(again.results_dir / "metrics.jsonl") == strip(
        core_run.results_dir / "metrics.jsonl"
    )


def test_bare_loop_reproduces_the_simulation(core_run: Outcome) -> None:
    """The Flower run and the Flower-free loop train the same clients the same way, and
    evaluate each round's model the same way (round 1's evaluation rides on round 2's
    training wave, round 2's is a wave of its own)."""
    from experiments.bare_loop import run_bare

    cfg = parse_run_config({k: v for k, v in TINY.items()})
    bare_rounds = run_bare(cfg)["rounds"]
    flower_rounds = rows(core_run)
    assert [r["round"] for r in bare_rounds] == [r["round"] for r in flower_rounds] == [1, 2]
    assert flower_rounds[-1]["per_client"] == core_run.summary["per_client"]
    for bare_row, flower_row in zip(bare_rounds, flower_rounds, strict=True):
        bare, flower = bare_row["per_client"], flower_row["per_client"]
        assert bare.keys() == flower.keys()
        for client, tasks in flower.items():
            for task, metrics in tasks.items():
                for name in ("test/accuracy", "test/mae", "val/accuracy", "val/mae"):
                    if name in metrics:
                        got = bare[client][task][name]
                        assert got == pytest.approx(metrics[name], abs=1e-3), (
                            flower_row["round"],
                            client,
                            task,
                            name,
                        )


def rows(outcome: Outcome) -> list[dict]:
    lines = (outcome.results_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def same_numbers(rows: list[dict]) -> list[dict]:
    """A metrics file without what differs between waves: timings and byte counts (the
    evaluation's bytes travel in the next round's training wave)."""
    drop = ("seconds", "train_seconds", "bytes_up", "bytes_down")
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_one_message_wave_per_round_and_a_last_evaluation_wave(core_run: Outcome) -> None:
    """Round 1's evaluation comes with round 2's training replies; only the last round has
    an evaluation wave of its own: 3 evaluation replies in a 2-round run of 3 clients."""
    evaluated = sorted((e["round"], e["client"]) for e in audit(core_run, "evaluate"))
    assert evaluated == [(2, "0"), (2, "1"), (2, "2")]
    train = audit(core_run)
    carried = {(e["round"], e["client"]): EVALUATION_TASKS in e["config"] for e in train}
    assert carried == {(r, str(c)): r == 2 for r in (1, 2) for c in range(3)}
    for e in train:
        if e["round"] == 2:  # the evaluation is round 1's own, named by the client
            assert e["config"][EVALUATION_TASKS]["client-id"] == int(e["client"])
    assert all("per_task" in r and r["eval_rejected"] == [] for r in rows(core_run))


def test_one_wave_gives_the_numbers_of_separate_evaluation_waves(
    core_run: Outcome, tmp_path: Path
) -> None:
    separate = simulate(
        tmp_path, **{"audit-received": True, "run-name": "core", "piggyback-evaluation": False}
    )
    assert len(audit(separate, "evaluate")) == 6  # every round has its evaluation wave
    assert same_numbers(rows(separate)) == same_numbers(rows(core_run))


def test_a_resume_writes_the_line_that_waited_in_the_checkpoint(
    core_run: Outcome, tmp_path: Path
) -> None:
    """A stop after round 1's checkpoint and before round 2's replies (round 1's line still
    waiting for its evaluation): the resumed run evaluates round 1 in round 2's training
    wave and writes the same lines as the run that never stopped."""
    from client.state import CURRENT, PREVIOUS
    from server.checkpoint import load_checkpoint

    copy = tmp_path / "core"
    shutil.copytree(core_run.results_dir, copy)
    (copy / "checkpoints" / "checkpoint-00002.npz").unlink()
    ckpt = load_checkpoint(copy / "checkpoints", parse_run_config(TINY).digest())
    assert ckpt is not None and ckpt.round == 1 and ckpt.pending["round"] == 1
    assert "per_task" not in ckpt.pending
    (copy / "metrics.jsonl").write_text("")  # round 1's line was never written
    for state in (copy / "client-state").rglob(CURRENT):  # back to the end of round 1
        state.parent.joinpath(PREVIOUS).replace(state)
    resumed = simulate(tmp_path, **{"audit-received": True, "run-name": "core", "resume": True})
    assert [e["round"] for e in audit(resumed)] == [2, 2, 2]
    assert same_numbers(rows(resumed)) == same_numbers(rows(core_run))
