"""Fault tolerance on a real loopback deployment: a SuperNode killed mid-run does not fail
the run; restarted, it rejoins and continues with the heads it kept in its state dir (next to
its cached data, which the restarted node reads back)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from deploy.local import LocalDeployment
from deploy.processes import stop_tree
from deploy.runs import Outcome

pytestmark = pytest.mark.slow

RUN = {
    "num-server-rounds": 5,
    "samples-per-client": 120,
    "local-epochs": 1,
    "hidden": 32,
    "min-nodes": 2,
    "round-timeout": 180.0,  # a round's replies on a loaded machine; a dead node's sooner
    "audit-received": True,
    "run-name": "faults",
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _trained(audit: Path) -> dict[int, set[str]]:
    """Round -> the clients whose training replies the server has received so far."""
    out: dict[int, set[str]] = {}
    for e in _rows(audit):
        if e["phase"] == "train":
            out.setdefault(e["round"], set()).add(e["client"])
    return out


def _a_round_went_on_without(client: str, audit: Path) -> bool:
    """A training round that is over (a later one has replies) had no reply from `client`."""
    trained = _trained(audit)
    return any(client not in who for r, who in trained.items() if r < max(trained, default=0))


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"condition not reached within {timeout:.0f}s")


@pytest.mark.timeout(720)
def test_killed_supernode_does_not_fail_the_run_and_rejoins_with_its_heads(tmp_path: Path) -> None:
    results = tmp_path / "results"
    metrics = results / "faults" / "metrics.jsonl"
    audit = results / "faults" / "received.jsonl"
    with LocalDeployment(nodes=3, run_dir=tmp_path / "dep", insecure=True, echo=False) as dep:
        outcome: list[Outcome] = []
        runner = threading.Thread(
            target=lambda: outcome.append(dep.submit({**RUN, "results-dir": str(results)}, 600))
        )
        runner.start()
        # Round 1's replies are in: node 2 now idles (a SuperNode sleeps 3 s between polls).
        _wait_for(lambda: len(_trained(audit).get(1, ())) == 3, 300)
        stop_tree(dep.procs["supernode-2"])  # dies between rounds 1 and 2 (or during 2)
        _wait_for(lambda: _a_round_went_on_without("2", audit), 360)
        cache = {
            p: p.stat().st_mtime_ns
            for p in (dep.state_dir / "supernode-2" / "data-cache").glob("*/manifest.json")
        }
        dep.start_supernode(2, key=None)  # same partition, same state dir
        runner.join(700)
    assert outcome and outcome[0].ok, outcome and outcome[0].log_path.read_text()[-3000:]
    rows = _rows(metrics)
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    short = [r for r in rows if r["clients"] == 2]
    # The round the node died in counts its failure; once the SuperLink has dropped the
    # node, later rounds simply do not sample it.
    assert short and short[0]["failures"] >= 1
    assert rows[-1]["clients"] == 3, "the restarted node did not rejoin"
    # From the server's side: client 2's first round after the restart starts from the
    # private state it ended its last round before the kill with (restored from disk).
    audit = [
        json.loads(x) for x in (results / "faults" / "received.jsonl").read_text().splitlines()
    ]
    mine = sorted(
        (e["round"], e["config"]["task-metrics"])
        for e in audit
        if e["phase"] == "train" and e["client"] == "2"
    )
    rounds = [r for r, _ in mine]
    gap = next(i for i in range(1, len(rounds)) if rounds[i] > rounds[i - 1] + 1)
    before, after = mine[gap - 1][1], mine[gap][1]
    assert after["private-at-start"] == before["private-at-end"]
    # Its data cache survived the kill and served the restarted node: the one entry, never
    # rewritten.
    assert len(cache) == 1
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in cache.items())
