"""Inter-task affinity (`task-affinity`): what a client measures, that measuring leaves its
training as it was, what the server accepts and averages, the run's matrix and heatmap in a
real simulation, and the task-grouping report."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from client.affinity import measure_affinity
from client.train import build_model
from common.config import ConfigError, parse_run_config
from common.federation import load_client_data
from experiments.task_grouping import choose_groups
from experiments.task_grouping import main as grouping_main
from server.affinity import affinity_problem, round_affinity, run_affinity
from tests.helpers import TINY, run_tiny


@pytest.fixture(scope="module")
def client():
    cfg = parse_run_config({**TINY})
    data = load_client_data(cfg, 0, TINY["num-clients"])
    return cfg, data, build_model(cfg, data.tasks, data.input_shape)


def _measure(model, data, batches=2):
    return measure_affinity(
        model,
        data.train,
        batches=batches,
        batch_size=32,
        lr=0.05,
        generator=torch.Generator().manual_seed(0),
    )


def test_the_lookahead_affinity_is_the_loss_change_of_a_real_sgd_step(client) -> None:
    """Z(i→j) on one batch equals (1 − L_j after an SGD step of the encoder on task i
    alone / L_j before) / lr, computed here by taking that step on a copy of the model."""
    _, data, model = client
    names = data.task_names
    got = _measure(model, data, batches=1)
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:32]
    x = torch.from_numpy(data.train.x[idx.numpy()])
    y = {t: torch.from_numpy(data.train.y[t][idx.numpy()]) for t in names}
    for i in names:
        stepped = copy.deepcopy(model)
        opt = torch.optim.SGD(stepped.encoder.parameters(), lr=0.05)
        stepped.zero_grad()
        stepped.tasks[i].loss(stepped(x)[i], y[i]).backward()
        opt.step()
        with torch.no_grad():
            before, after = model(x), stepped(x)
        for j in names:
            if j != i:
                l0 = float(model.tasks[j].loss(before[j], y[j]))
                l1 = float(model.tasks[j].loss(after[j], y[j]))
                assert got[f"affinity/tag/{i}/{j}"] == pytest.approx((1 - l1 / l0) / 0.05, rel=1e-4)


def test_cosines_are_symmetric_bounded_and_measuring_changes_nothing(client) -> None:
    _, data, model = client
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = _measure(model, data)
    assert got["affinity/batches"] == 2
    names = data.task_names
    for i in names:
        for j in names:
            if i != j:
                assert got[f"affinity/cos/{i}/{j}"] == pytest.approx(got[f"affinity/cos/{j}/{i}"])
                assert -1 <= got[f"affinity/cos/{i}/{j}"] <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_single_task_client_measures_nothing(client) -> None:
    cfg, _, _ = client
    data = load_client_data(parse_run_config({**TINY, "plan": "left"}), 0, TINY["num-clients"])
    model = build_model(cfg, data.tasks, data.input_shape)
    assert _measure(model, data) == {}


def test_the_server_accepts_pairs_of_the_clients_tasks_and_nothing_else() -> None:
    good = {"affinity/batches": 2, "affinity/cos/a/b": 0.5, "affinity/tag/b/a": -0.1}
    assert affinity_problem(good, ["a", "b"]) is None
    assert affinity_problem({"client-id": 1}, ["a"]) is None  # no affinity at all
    bad = [
        ({**good, "affinity/cos/a/c": 0.1}, "not a pair of two of the client's tasks"),
        ({**good, "affinity/cos/a/a": 0.1}, "not a pair"),
        ({**good, "affinity/cos/a/b": 1.5}, "out of range"),
        ({**good, "affinity/tag/a/b": float("nan")}, "out of range"),
        ({**good, "affinity/tag/a/b": "x"}, "not a number"),
        ({**good, "affinity/sin/a/b": 0.1}, "unexpected entry"),
        ({k: v for k, v in good.items() if k != "affinity/batches"}, "not an integer >= 1"),
    ]
    for record, says in bad:
        assert says in (affinity_problem(record, ["a", "b"]) or ""), record


def test_pairs_are_averaged_over_the_clients_that_hold_both_weighted_by_batches() -> None:
    one = {"affinity/batches": 1, "affinity/cos/a/b": 0.2, "affinity/tag/a/b": 1.0}
    three = {"affinity/batches": 3, "affinity/cos/a/b": 0.6, "affinity/tag/a/b": 2.0}
    got = round_affinity([one, three, {"client-id": 2}], ["a", "b", "c"])
    assert got is not None
    assert got["cos"]["a"]["b"] == pytest.approx((0.2 + 3 * 0.6) / 4)
    assert got["tag"]["a"]["b"] == pytest.approx((1.0 + 3 * 2.0) / 4)
    assert got["tag"]["b"]["a"] is None  # nobody measured it
    assert "c" not in got["cos"]  # a task nobody measured against another is left out
    rows = [{"affinity": got}, {"round": 2}, {"affinity": round_affinity([one], ["a", "b"])}]
    overall = run_affinity(rows)
    assert overall["cos"]["a"]["b"] == pytest.approx((0.2 + 3 * 0.6 + 0.2) / 5)
    assert round_affinity([{"client-id": 1}], ["a", "b"]) is None


def test_affinity_is_refused_where_dp_would_not_cover_it() -> None:
    for privacy in ("dp-sgd", "local-dp"):
        with pytest.raises(ConfigError, match="outside the DP mechanism"):
            parse_run_config({"task-affinity": True, "privacy": privacy, "algorithm": "fedper"})


def test_grouping_puts_tasks_that_help_each_other_together_and_a_hurt_task_alone() -> None:
    z = {
        "a": {"b": 0.8, "c": -0.5},
        "b": {"a": 0.6, "c": -0.4},
        "c": {"a": -0.3, "b": -0.2},
    }
    groups, value, serving = choose_groups(z, 2)
    assert sorted(groups) == [("a", "b"), ("c",)]
    assert serving == {"a": ("a", "b"), "b": ("a", "b"), "c": ("c",)}
    assert value == pytest.approx((0.6 + 0.8 + 0.0) / 3)
    # One group only: all three together, the only cover.
    assert choose_groups(z, 1)[0] == [("a", "b", "c")]
    # A pair nobody measured is never grouped.
    unknown = {"a": {"b": None}, "b": {"a": None}}
    assert choose_groups(unknown, 2)[0] == [("a",), ("b",)]


@pytest.mark.slow
def test_a_real_run_writes_the_matrix_per_round_in_the_summary_and_as_a_heatmap(
    tmp_path, capsys
) -> None:
    """Clients hold different task sets; a pair held by no client has no value."""
    outcome = run_tiny(tmp_path, **{"task-affinity": True, "plan": "left,right;left,sum;sum"})
    assert outcome.ok
    rows = [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").open()]
    assert all("affinity" in r for r in rows)
    matrix = outcome.summary["affinity"]
    assert np.isfinite(matrix["tag"]["left"]["right"]) and np.isfinite(matrix["cos"]["left"]["sum"])
    assert matrix["cos"]["right"]["sum"] is None  # no client holds both right and sum
    assert sorted(matrix["tag"]) == ["left", "right", "sum"]  # tasks no client holds: out
    assert rows[0]["affinity"]["batches"]["left"]["right"] == 4  # one client, 4 batches
    assert (outcome.results_dir / "affinity.png").stat().st_size > 0
    assert grouping_main([str(outcome.results_dir), "--groups", "2"]) == 0
    report = (outcome.results_dir / "task_grouping.md").read_text()
    assert "Suggested groups" in report and "n/a" in report


@pytest.mark.slow
def test_measuring_affinity_leaves_the_training_as_it_was(tmp_path) -> None:
    base = run_tiny(tmp_path / "off", **{"num-server-rounds": 1})
    measured = run_tiny(tmp_path / "on", **{"num-server-rounds": 1, "task-affinity": True})
    a = np.load(base.results_dir / "shared_arrays.npz")
    b = np.load(measured.results_dir / "shared_arrays.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
