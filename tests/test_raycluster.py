"""Simulations on a Ray cluster: a wrong `--ray-address` is refused with a clear error before
anything starts; a simulation attached to a running two-node cluster spreads its clients over
both nodes, with the CPUs and GPU fraction asked per client, gives the same metrics as on one
node, and every Ray process the test started is gone at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.processes import descendants, flower_env, free_port, still_running
from deploy.raycluster import RayAddressError, RayCluster, parse_ray_address
from deploy.simulation import SimulationEngine
from tests.helpers import TINY, simulate

TIMING = ("seconds", "train_seconds")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("localhost", "not a Ray cluster address"),
        ("127.0.0.1:", "not a Ray cluster address"),
        ("127.0.0.1:port", "not a Ray cluster address"),
        ("127.0.0.1:70000", "not a Ray cluster address"),
        (":6379", "not a Ray cluster address"),
        ("", "not a Ray cluster address"),
        ("ray://127.0.0.1:10001", "Ray Client addresses (ray://...) are not supported"),
    ],
)
def test_a_malformed_ray_address_is_refused_naming_the_valid_forms(value, says, capsys) -> None:
    with pytest.raises(RayAddressError, match="auto"):
        parse_ray_address(value)
    assert main(["--ray-address", value, "-c", "num-server-rounds=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ray-address") and says in err and "HOST:PORT" in err


def test_an_address_where_no_cluster_answers_is_refused_before_anything_starts(capsys) -> None:
    port = free_port()  # nothing listens there
    assert main(["--ray-address", f"127.0.0.1:{port}"]) == 2
    captured = capsys.readouterr()
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in captured.err
    assert "ray start --head" in captured.err
    assert "fedmtl:" not in captured.out, "the run was started"


def test_auto_without_a_cluster_started_here_says_where_it_looked(tmp_path, capsys) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(tmp_path))
        assert main(["--ray-address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "no Ray cluster was started on this machine" in err
    assert str(tmp_path / "ray" / "ray_current_cluster") in err


def test_own_head_and_an_existing_cluster_exclude_each_other(capsys) -> None:
    assert main(["--ray-address", "auto", "--ray-cpus", "2"]) == 2
    assert "--ray-cpus" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ray_cpus"):
        SimulationEngine(ray="per-run", ray_cpus=2)
    with pytest.raises(ValueError, match="valid: 'head', 'per-run'"):
        SimulationEngine(ray="somewhere")


def _node_ids(cluster: RayCluster) -> set[str]:
    """The ids of the cluster's alive nodes, asked from Ray by a driver of its own."""
    code = (
        "import json, ray; ray.init(); "
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**cluster.env, "RAY_ADDRESS": cluster.address},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _placements(results_dir: Path) -> set[str]:
    """The Ray node of every training reply the server received (`audit-received`)."""
    lines = (results_dir / "received.jsonl").read_text().splitlines()
    entries = [json.loads(x) for x in lines]
    return {e["config"]["task-metrics"]["ray-node"] for e in entries if e["phase"] == "train"}


def _rows(results_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (results_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_a_simulation_spans_a_two_node_cluster_as_it_runs_on_one(tmp_path) -> None:
    """A head and a worker node, each with 1 CPU and 1 (logical) GPU; every client asks for
    1 CPU and half a GPU, so one actor fits on each node and the clients must be served by
    both. The engine finds the cluster as `ray start` recorded it (`auto`)."""
    overrides = {**TINY, "audit-received": True, "run-name": "span"}
    cluster = RayCluster(num_cpus=1, num_gpus=1, env=flower_env()).start()
    tree: dict[int, str] = {}
    try:
        cluster.wait_ready()
        cluster.add_node(1, num_gpus=1)
        for pid in cluster.pids():
            tree |= descendants(pid) | {pid: ""}
        nodes = _node_ids(cluster)
        assert len(nodes) == 2
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_TMPDIR", str(cluster.tmpdir))  # where `auto` looks
            with SimulationEngine(gpus_per_client=0.5, ray="auto") as engine:
                assert engine.ray_address is not None and engine.cluster is None
                spanned = engine.run(
                    {**overrides, "results-dir": str(tmp_path / "two")}, echo=False, timeout=600
                )
        for pid in cluster.pids():
            tree |= descendants(pid)
    finally:
        cluster.stop()
    assert spanned.ok, spanned.log_path.read_text()[-3000:]
    assert _placements(spanned.results_dir) == nodes
    one = simulate(tmp_path / "one", **overrides)  # the session engine: its own one-node head
    assert _placements(one.results_dir).isdisjoint(nodes)
    assert _rows(spanned.results_dir) == _rows(one.results_dir)
    assert still_running({p: s for p, s in tree.items() if s}) == []
    assert not cluster.tmpdir.exists()
