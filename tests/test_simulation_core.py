"""The core contract, checked on real Flower simulations from what the server received."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import parse_run_config
from common.federation import client_tasks
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
    """The Flower run and the Flower-free loop train the same clients the same way."""
    from experiments.bare_loop import run_bare

    cfg = parse_run_config({k: v for k, v in TINY.items()})
    bare = run_bare(cfg)["rounds"][-1]["per_client"]
    flower = core_run.summary["per_client"]
    assert bare.keys() == flower.keys()
    for client, tasks in flower.items():
        for task, metrics in tasks.items():
            for name in ("test/accuracy", "test/mae"):
                if name in metrics:
                    assert bare[client][task][name] == pytest.approx(metrics[name], abs=1e-3)
