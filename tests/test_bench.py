"""The benchmark harness (experiments/bench): quick checks of its pieces on small inputs.
Nothing here is timed against a limit; the benchmark itself is `python -m experiments.bench`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array

from deploy.simulation import federation_config
from experiments.bench import aggregation, communication, costs, overhead, report
from experiments.bench import text as bench_text
from experiments.bench.flower import (
    AppRun,
    EngineSampler,
    Submission,
    stop_after_round,
)
from experiments.bench.sampling import TreeSampler, descendants, process_table
from experiments.bench.stats import Target, fit_line, median

# --- aggregation ---


def test_aggregation_benchmark_on_small_arrays_is_consistent() -> None:
    enc = aggregation.bench_encoder(n_updates=4, n_params=1000, repeats=3)
    assert set(enc["times"]) == {"flower", "reference", "deserialise", "zero_copy"}
    for name, times in enc["times"].items():
        assert len(times) == 3 and all(t > 0 for t in times)
        assert enc["min_s"][name] == min(times) <= enc["median_s"][name]
    assert enc["ratio_min"] == pytest.approx(enc["min_s"]["flower"] / enc["min_s"]["reference"])
    assert enc["bytes_read"] == 4 * 1000 * 4
    heads = aggregation.bench_heads(n_updates=4, n_params=1000, repeats=2)
    assert heads["ratio_min"] > 0 and heads["bytes_read"] == 4 * 1000 * 4


def test_zero_copy_mean_equals_flowers_weighted_mean() -> None:
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    records = aggregation.encoder_records(5, 2000, seed=3)
    expected = aggregate_arrayrecords(records, "num-examples")
    got = aggregation.zero_copy_mean(records)
    assert list(got.keys()) == list(expected.keys())
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-6)


def test_zero_copy_mean_keeps_shapes_and_dtypes() -> None:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(0)
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {
                        "w": Array(rng.standard_normal((3, 4))),  # float64
                        "n": Array(np.arange(6, dtype=np.int64).reshape(2, 3) * (i + 1)),
                    }
                ),
                "metrics": MetricRecord({"num-examples": 1 + i}),
            }
        )
        for i in range(3)
    ]
    expected = aggregate_arrayrecords(records, "num-examples")
    got = aggregation.zero_copy_mean(records)
    for key in ("w", "n"):
        assert got[key].numpy().shape == expected[key].numpy().shape
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-9)


@pytest.mark.parametrize("shape", [(3, 4), (7,), (2, 3, 5)])
def test_array_view_reads_the_npy_payload_in_place(shape: tuple[int, ...]) -> None:
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    view = aggregation.array_view(Array(a))
    np.testing.assert_array_equal(view, a)
    assert not view.flags.writeable  # a view of the message's bytes, not a copy


def test_head_records_hold_two_tasks_and_sum_to_the_parameter_count() -> None:
    from common.records import TASK_ARRAYS

    records = aggregation.head_records(4, 1000)
    for r in records:
        heads = r[TASK_ARRAYS]
        assert len({k.split(".")[1] for k in heads}) == 2
        assert sum(a.numpy().size for a in heads.values()) == 1000


# --- report ---


def _sections() -> dict[str, dict]:
    """Made-up measurements in the shape the sections return."""
    met = Target("a ratio", 1.2, 1.5).as_dict()
    missed = Target("bytes ratio", 3.1, 3.5, higher_is_better=True).as_dict()
    return {
        "aggregation": {
            "updates": 100,
            "parameters": 1_000_000,
            "repeats": 5,
            "encoder": {
                "min_s": {"flower": 1.0, "reference": 0.25, "deserialise": 0.5, "zero_copy": 0.4},
                "median_s": {"flower": 1.1, "reference": 0.3, "deserialise": 0.6, "zero_copy": 0.5},
                "reference_gb_per_s": 1.6,
            },
            "heads": {
                "min_s": {"flower": 0.8, "reference": 0.2},
                "median_s": {"flower": 0.9, "reference": 0.2},
            },
            "targets": [met],
            "seconds": 12.0,
        },
        "communication": {
            "algorithm_rounds": 3,
            "compression_rounds": 10,
            "seeds": [0, 1, 2],
            "algorithms": {
                "fedper": {
                    "encoder_parameters": 12416,
                    "encoder_bytes": 49664,
                    "bytes_up_per_client": 50176.0,
                    "bytes_down_per_client": 50176.0,
                    "up_vs_encoder": 1.0103,
                    "down_vs_encoder": 1.0103,
                }
            },
            "compression": {
                "none": {
                    "runs": [{"bytes_up_per_client_round": 50176.0, "mean_accuracy": 0.8}],
                    "bytes_up_ratio": 1.0,
                    "mean_accuracy": 0.8,
                    "accuracy_drop_points": 0.0,
                }
            },
            "targets": [missed],
            "seconds": 100.0,
        },
    }


def test_report_writer_produces_the_targets_table_from_given_measurements() -> None:
    text = report.render(_sections(), {"cpu": "Test CPU", "cores": 2, "ram_gib": 8.0})
    assert text.startswith("# Performance")
    assert "| Test CPU |" in text
    lines = text.splitlines()
    header = lines.index("## Targets")
    table = [x for x in lines[header + 2 :] if x.startswith("|")][:4]
    assert table[0].startswith("| section | target | measured")
    assert "| aggregation | a ratio | 1.20× | ≤ 1.5× | **met** |" in table[2]
    assert "| communication | bytes ratio | 3.10× | ≥ 3.5× | **not met** |" in table[3]
    assert "## 3. Aggregation" in text and "## 4. Communication" in text
    assert "## 1. Overhead" not in text  # sections not measured are left out, not invented
    assert "| **total** | 112 |" in text


def _full_sections() -> dict[str, dict]:
    """Every section, with values unlike the old typed ones: 5 clients, 7 rounds, knobs on
    a 3-round mini config, 8 actors, a 2-round deployment variant, a 4-round simulation."""
    flower_run = {
        "wall_s": 20.0,
        "submit_to_serverapp_s": 3.0,
        "round1_s": 8.0,
        "warm_round_median_s": 0.4,
        "warm_rounds_sum_s": 2.4,
        "round_seconds": [8.0, 0.4, 0.4],
        "train_seconds": [7.0, 0.3, 0.3],
    }
    knob = {
        "wall_s": 10.0,
        "submit_to_serverapp_s": 3.0,
        "round1_s": 5.0,
        "warm_round_median_s": 0.5,
    }
    probe = {
        "nodes": 50,
        "actors": 3,
        "wave_median_s": {"1": 0.1, "50": 0.3},
        "per_call_s": 0.004,
        "cold_wave_s": 4.0,
        "submit_to_serverapp_s": 2.0,
        "wall_s": 12.0,
    }
    fed = "num-supernodes=5 client-resources-num-cpus={} client-resources-num-gpus=0.0"
    rounds = {"round_seconds": [3.0, 3.0], "train_seconds": [1.5, 1.5], "eval_seconds": [1.5, 1.5]}
    deploy = {"up_s": 2.0, "run_wall_s": 9.0, "wave_median_s": 3.0, "status": "completed"}
    return {
        "overhead": {
            "config": {
                "overrides": {"num-clients": 5, "num-server-rounds": 7, "dataset": "synthcorr"},
                "resolved_clients": 5,
                "rounds": 7,
                "mini": {"num-server-rounds": 3},
            },
            "bare_walls_s": [10.0, 11.0, 12.0],
            "flower": {
                "8-actors": {**flower_run, "federation": fed.format(0.25)},
                "one-actor": {**flower_run, "federation": fed.format(2)},
            },
            "knobs": {
                "baseline": {**knob, "federation": fed.format(1)},
                "eval-every": {**knob, "federation": fed.format(1)},
                "4-actors": {**knob, "federation": fed.format(1) + " init-args-num-cpus=4"},
            },
            "probe": {
                "2-actors": {**probe, "federation": fed.format(1)},
                "quiet-ray": {
                    **probe,
                    "federation": fed.format(1) + " init-args-log-to-driver=false",
                },
            },
            "targets": [],
            "seconds": 60.0,
        },
        "scale": {
            "clients": 300,
            "samples_per_client": 40,
            "sweep_samples_per_client": 20,
            "runs": {
                "main": {
                    "clients_per_round": [30, 30, 30, 30, 30, 30, 30],
                    "round_seconds": [5.0, 1, 1, 1, 1, 1, 1],
                    "train_seconds": [4.0, 1, 1, 1, 1, 1, 1],
                    "status": "finished:completed",
                    "wall_s": 40.0,
                    "round1_s": 4.0,
                    "warm_train_median_s": 1.0,
                    "final_full_evaluation_s": 2.0,
                    "failures": 0,
                    "peak_rss_gb": 1.0,
                    "peak_pss_gb": 0.8,
                    "memory_samples": 10,
                },
                "sampled-10": {
                    "clients_per_round": [10, 10],
                    "round_seconds": [2.0, 1.0],
                    "train_seconds": [2.0, 1.0],
                    "warm_train_median_s": 1.0,
                    "peak_rss_gb": 1.0,
                    "peak_pss_gb": 0.8,
                    "status": "stopped",
                    "stopped_early": True,
                },
            },
            "targets": [],
            "seconds": 60.0,
        },
        "deployment": {
            "config": {"num-clients": 4},
            "simulation": {
                **rounds,
                "round_seconds": [3.0, 1.0, 1.0, 1.0],
                "train_seconds": [1, 1, 1, 1],
                "eval_seconds": [1, 1, 1, 1],
                "run_wall_s": 20.0,
                "wave_median_s": 0.5,
                "status": "completed",
                "up_s": 1.0,
            },
            "insecure": {**deploy, **rounds},
            "tls": {**deploy, **rounds},
            "spawn": {"import_s": 1.0, "data_s": 0.5, "process_s": 2.0},
            "imports": {"torch": 0.8},
            "ratio_round_deploy_vs_sim": 3.0,
            "ratio_wave_tls_vs_insecure": 1.0,
            "targets": [],
            "seconds": 60.0,
        },
    }


def test_report_prose_follows_the_measurements_and_the_config() -> None:
    """Numbers the writer used to type (MultiDigits/fedper, 2 actors, '4 CPUs on this
    2-core machine', 'the default fraction-evaluate=1', 5 rounds, 'stopped after round 3',
    'the variants run 1 round', 3 simulation rounds, three nodes on 2 cores, Flower's poll
    intervals) come from the sections, the run-config defaults, the machine record and the
    installed Flower: here they all differ from the old literals."""
    from common.config import RunConfig

    text = report.render(_full_sections(), {"cores": 16, "flwr": "9.9"})
    defaults = RunConfig()
    assert f"(5 clients, 7 rounds, synthcorr, {defaults.algorithm})" in text
    assert "`8-actors` with 0.25 CPU per client, `one-actor` with 2 CPU per client" in text
    assert "### Knobs (real app, 3 rounds," in text
    assert "| eval-every | run config `eval-every=3 fraction-evaluate=0` |" in text
    assert f"`fraction-evaluate` is {defaults.fraction_evaluate:g} by default" in text
    assert "fraction-evaluate=1" not in text
    assert "`4-actors` sets `init-args-num-cpus=4` on a 16-core machine" in text
    assert "`client-resources-num-cpus` 0.25 (`8-actors`) vs 2 (`one-actor`)" in text
    assert "The probe `quiet-ray` tries `init-args-log-to-driver=false`" in text
    assert "(sweep: stopped after round 2," in text
    assert "Main run (30 per round, 7 rounds)" in text
    assert (
        "the variants run 2 round(s)) vs Flower's simulation of the same config (4 rounds" in text
    )
    assert "All 4 nodes start their processes at once on 16 cores" in text
    assert "(flwr 9.9 source)" in text
    facts = bench_text.flower_facts()
    assert f"wakes every {facts['vce_tick_s']:g} s" in text
    assert f"an idle SuperNode polls every {facts['supernode_idle_poll_s']:g} s" in text
    assert f"sleeps {facts['http_grid_pull_s']:g} s between pulls" in text
    for stale in ("issue", "2-core", "three nodes", "5-10×", "MultiDigits, fedper"):
        assert stale not in text, stale


def test_report_states_cold_and_warm_runs_the_ray_saving_the_pfl_workload_and_flowers_waits():
    """The overhead section's new parts follow the measurements: what the engine's start
    and stop cost the cold run only, where the start-up goes, what the warm Ray head saves,
    the PFLlib-style workload against its plain loop, and what is left of Flower's waits once
    the grid pulls often (with the tick read from the installed Flower)."""
    sections = _full_sections()
    ov = sections["overhead"]
    run = {**ov["flower"]["8-actors"], "federation": "num-supernodes=5"}
    ov["flower"] = {"cold": run, "warm": {**run, "wall_s": 17.0}}
    ov["ratios"] = {"cold": {"total_s": 26.5}, "warm": {"total_s": 17.0}}
    ov["engine_start_s"], ov["engine_stop_s"] = 4.5, 2.0
    split = {
        "submit_to_simulation_s": 1.5,
        "simulation_to_serverapp_s": 2.5,
        "round1_extra_s": 6.5,
        "serverapp_outside_rounds_s": 0.3,
        "last_round_to_exit_s": 1.25,
    }
    ov["startup"] = {"cold": split, "warm": split}
    ov["ray_head_saving_s"] = 3.75
    slow = {**ov["probe"]["2-actors"], "pull_interval_s": 0.1}
    fast = {**slow, "pull_interval_s": 0.01, "wave_median_s": {"1": 0.0625, "50": 0.1875}}
    ov["probe"] = {"2-actors": slow, "2-actors-pull-0.01": fast}
    pfl_run = {"wall_s": 30.0, "round1_s": 9.0, "warm_round_median_s": 0.105}
    pfl_run["warm_rounds_sum_s"] = 21.0
    ov["pfl"] = {
        "overrides": {"num-clients": 9, "num-server-rounds": 150, "lr": 0.02, "batch-size": 7},
        "bare_walls_s": [12.0, 14.0],
        "bare_round_median_s": 0.055,
        "engine_start_s": 5.0,
        "engine_stop_s": 1.5,
        "cold": pfl_run,
        "warm": {**pfl_run, "wall_s": 28.0},
        "cold_total_s": 36.5,
        "cold_ratio": 36.5 / 13,
        "cold_ratio_range": [36.5 / 14, 36.5 / 12],
        "warm_ratio": 28 / 13,
        "warm_ratio_range": [2.0, 28 / 12],
    }
    text = report.render(sections, {"cores": 16, "flwr": "9.9"})
    assert "| Flower, cold | 26.5 |" in text and "| Flower, warm | 17.0 |" in text
    assert "| cold | 4.5 | 1.5 | 2.5 | 6.5 | 0.3 | 1.2 | 2.0 |" in text
    assert "| warm | – | 1.5 | 2.5 | 6.5 | 0.3 | 1.2 | – |" in text
    assert "warm, same config): 3.8 s." in text
    assert "### PFLlib-style workload (9 clients, multidigits, lr 0.02, 3 local epochs" in text
    assert "batch 7, 150 rounds" in text and "5.0 + 30.0 + 1.5 s" in text
    assert "| fedmtl, cold | 36.5 | 9.0 | 0.105 | 21.0 | 2.81× (2.61–3.04) |" in text
    assert "| fedmtl, warm | 28.0 |" in text and "| plain in-process loop | 12.0, 14.0 |" in text
    tick = bench_text.flower_facts()["vce_tick_s"]
    assert "every 0.10 s (Flower's default) a wave of 1–2 messages takes 0.100 s" in text
    assert "every 0.01 s (`grid-pull-interval`, fedmtl's default) 0.062 s" in text
    assert "a wave of 50 0.188 s against 0.300 s" in text
    assert f"takes new messages every {tick:g} s" in text


def test_flowers_intervals_are_found_in_the_installed_flower() -> None:
    """The report explains timings with intervals read from Flower's source; if an upgrade
    moves one, this fails instead of the report printing '?' or a stale number."""
    facts = bench_text.flower_facts()
    assert set(facts) == set(bench_text.FLOWER_FACTS)
    missing = [name for name, value in facts.items() if value is None or value <= 0]
    assert not missing, f"not found in the installed flwr: {missing} (update FLOWER_FACTS)"


def test_report_formats_missing_numbers_as_a_dash() -> None:
    assert bench_text.fmt(float("nan")) == "–"
    assert bench_text.fmt(None) == "–"
    assert bench_text.fmt(1234567) == "1,234,567"
    assert bench_text.fmt(0.12345, 3, "×") == "0.123×"
    assert bench_text.table(["a", "b"], [[1, 2]]) == ["| a | b |", "| --- | --- |", "| 1 | 2 |", ""]


def test_plots_are_written_from_measurements(tmp_path: Path) -> None:
    sections = {
        "scale": {
            "clients": 1000,
            "points": [[10, 1.0], [50, 3.0], [100, 5.5], [200, 11.0]],
            "fit": fit_line([10, 50, 100, 200], [1.0, 3.0, 5.5, 11.0]),
        }
    }
    written = report.plot(sections, tmp_path)
    assert [p.name for p in written] == ["scale_rounds.png"]
    assert written[0].stat().st_size > 1000


# --- statistics ---


def test_fit_line_recovers_a_line_and_flags_curvature() -> None:
    xs = [10, 50, 100, 200]
    fit = fit_line(xs, [0.5 + 0.02 * x for x in xs])
    assert fit["slope"] == pytest.approx(0.02) and fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(1.0)
    curved = fit_line(xs, [0.001 * x * x for x in xs])
    assert curved["quadratic"]["r2"] > curved["r2"]


def test_targets_know_their_direction_and_treat_nan_as_not_met() -> None:
    assert Target("t", 1.4, 1.5).met and not Target("t", 1.6, 1.5).met
    assert Target("t", 3.9, 3.5, higher_is_better=True).met
    assert not Target("t", float("nan"), 1.5).met
    assert Target("t", 1.0, 2.0).as_dict()["met"] is True
    assert math.isnan(median([]))


# --- the memory sampler ---


def test_memory_sampler_sees_a_child_and_a_grandchild() -> None:
    code = (
        "import time; b = bytearray(60_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(5)"
    )
    parent = subprocess.Popen(["bash", "-c", f'"{sys.executable}" -c "{code}"; true'])
    sampler = TreeSampler(parent.pid, interval=0.1)
    try:
        deadline = time.monotonic() + 10
        rss = 0
        while time.monotonic() < deadline:
            rss, _pss, n = sampler.sample()
            if n >= 2 and rss > 60e6:
                break
            time.sleep(0.1)
        assert n >= 2, "the python grandchild was not found below the bash parent"
        assert rss > 60e6 and sampler.peak_rss >= rss
        assert 0 < sampler.peak_pss <= sampler.peak_rss * 1.01
        assert descendants(parent.pid)
    finally:
        parent.kill()
        parent.wait()
        sampler.kill_leftovers(grace=2.0)  # the python grandchild outlives bash


def test_sampler_keeps_track_of_reparented_processes_and_ends_them() -> None:
    # bash starts a background sleep, waits until told, and exits: the sleep is re-parented,
    # out of the tree.
    parent = subprocess.Popen(
        ["bash", "-c", "sleep 30 & echo $!; read line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None and parent.stdin is not None
    orphan = int(parent.stdout.readline())
    sampler = TreeSampler(parent.pid, measure=False)
    sampler.sample()
    assert orphan in sampler.tracked
    parent.stdin.write("go\n")
    parent.stdin.close()
    parent.wait()
    assert orphan not in descendants(parent.pid)
    assert sampler.leftovers() == [orphan]
    assert sampler.kill_leftovers(grace=2.0) == [orphan]
    assert orphan not in process_table() or process_table()[orphan][1] != sampler.tracked[orphan]


def test_engine_sampler_follows_the_ray_head_tree_as_well_as_the_superlinks() -> None:
    """With a Ray head of the engine's own, the actors run below the head, not below the
    SuperLink: the memory sampled (and the leftovers ended) must cover both trees."""
    superlink = subprocess.Popen(["bash", "-c", "sleep 30 & wait"])
    head = subprocess.Popen(["bash", "-c", "sleep 30 & wait"])
    engine = SimpleNamespace(superlink=superlink, cluster=SimpleNamespace(pids=lambda: [head.pid]))
    try:
        sampler = EngineSampler(engine, interval=0.1)  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sampler.sample()
            below = descendants(superlink.pid) | descendants(head.pid)
            if len(below) >= 2 and below <= set(sampler.tracked):
                break
            time.sleep(0.1)
        assert {superlink.pid, head.pid} | below <= set(sampler.tracked)
        assert sampler.peak_rss > 0
    finally:
        for proc in (superlink, head):
            proc.kill()
            proc.wait()
        sampler.kill_leftovers(grace=2.0)  # the sleeps outlive their bash


# --- the Flower runner's bookkeeping ---


def _lines() -> list[tuple[float, str]]:
    return [
        (0.5, "🎊 Successfully started run 42"),
        (6.0, "INFO :      fedmtl | run 'x' -> /tmp/x"),
        (30.0, "INFO :      fedmtl | round   1/3 | train loss 1.0 | 24.0s"),
        (31.0, "INFO :      fedmtl | round   2/3 | train loss 0.9 | 0.9s"),
        (32.2, "INFO :      fedmtl | round   3/3 | train loss 0.8 | 1.1s"),
        (33.0, "INFO :      fedmtl | finished: /tmp/x/summary.json"),
    ]


def test_submission_marks_rounds_and_stop_condition_fires_on_the_round_line() -> None:
    sub = Submission("42", 36.0, "finished:completed", _lines())
    assert sub.round_marks() == {1: 30.0, 2: 31.0, 3: 32.2}
    assert sub.first(r"fedmtl \| run '") == 6.0
    assert sub.first("nothing like this") is None
    stop = stop_after_round(2)
    assert not stop(_lines()[:3]) and stop(_lines()[:4])
    assert federation_config(6, 1, init_args_num_cpus=4) == (
        "num-supernodes=6 client-resources-num-cpus=1 client-resources-num-gpus=0.0 "
        "init-args-num-cpus=4"
    )


def _app_run(rows: list[dict], summary: dict | None = None) -> AppRun:
    sub = Submission("42", 36.0, "finished:completed", _lines())
    return AppRun("x", {}, "fed", sub, Path("/tmp/x"), rows, summary or {"status": "completed"})


def test_breakdown_splits_a_run_from_its_log_and_metrics() -> None:
    rows = [
        {"round": 1, "seconds": 24.0, "train_seconds": 23.5},
        {"round": 2, "seconds": 0.9, "train_seconds": 0.6},
        {"round": 3, "seconds": 1.1, "train_seconds": 0.7},
    ]
    b = overhead.breakdown(_app_run(rows))
    assert b["ok"] and b["rounds"] == 3
    assert b["submit_to_serverapp_s"] == 6.0
    assert b["warm_round_median_s"] == pytest.approx(1.0)
    assert b["warm_rounds_sum_s"] == pytest.approx(2.0)
    assert b["serverapp_outside_rounds_s"] == pytest.approx(32.2 - 6.0 - 26.0)
    assert b["last_round_to_exit_s"] == pytest.approx(36.0 - 32.2)


def test_startup_split_adds_up_to_the_time_outside_warm_rounds() -> None:
    lines = [(2.0, "INFO :      Starting Flower Simulation"), *_lines()]
    sub = Submission("42", 36.0, "finished:completed", lines)
    rows = [
        {"round": 1, "seconds": 24.0, "train_seconds": 23.5},
        {"round": 2, "seconds": 0.8, "train_seconds": 0.6},
        {"round": 3, "seconds": 1.5, "train_seconds": 0.7},
    ]
    run = AppRun("x", {}, "fed", sub, Path("/tmp/x"), rows, {"status": "completed"})
    b = overhead.breakdown(run)
    split = overhead.startup_split(b)
    assert split["submit_to_simulation_s"] == 2.0
    assert split["simulation_to_serverapp_s"] == pytest.approx(6.0 - 2.0)
    assert split["round1_extra_s"] == pytest.approx(24.0 - 1.15)
    # With round 1 at a warm round's time and the warm rounds, the parts are the wall time.
    parts = sum(split.values()) + b["warm_round_median_s"] + b["warm_rounds_sum_s"]
    assert parts == pytest.approx(b["wall_s"])


def test_bytes_per_client_leave_out_the_evaluating_round_and_accuracy_averages_tasks() -> None:
    rows = [
        {"round": 1, "clients": 6, "bytes_up": 600, "bytes_down": 600},
        {"round": 2, "clients": 6, "bytes_up": 1200, "bytes_down": 2400},
        {"round": 3, "clients": 6, "bytes_up": 1200, "bytes_down": 9999},
    ]
    got = communication.per_client_bytes(_app_run(rows))
    assert got == {"up": 200.0, "down": 400.0, "rounds": 1}
    summary = {
        "per_task": {
            "left": {"test/accuracy": {"mean": 0.9}},
            "parity": {"test/accuracy": {"mean": 0.7}},
            "sum": {"test/mae": {"mean": 1.5}},
        }
    }
    from experiments.kit.scores import mean_classification_accuracy

    assert mean_classification_accuracy(summary) == pytest.approx(0.8)


def test_bare_profile_times_every_round_of_the_real_loop() -> None:
    prof = costs.bare_profile(
        {"num-clients": 2, "num-server-rounds": 2, "samples-per-client": 60, "local-epochs": 1}
    )
    assert [r["round"] for r in prof["rounds"]] == [1, 2]
    for r in prof["rounds"]:
        assert len(r["train_per_client"]) == 2
        assert 0 < r["train_compute"] + r["eval_compute"] <= r["seconds"] + 1e-6
    assert prof["setup_s"] > 0 and prof["wall_s"] >= sum(r["seconds"] for r in prof["rounds"])


def test_patched_app_copy_keeps_the_tree_untouched(tmp_path: Path) -> None:
    """The `before` variant runs a copy patched back to the old behaviour; the lines it
    patches must exist, and the tree stays as it is."""
    from deploy.runs import REPO
    from experiments.bench import deployment

    originals = {name: (REPO / name).read_text() for name, _, _ in deployment.BEFORE_PATCHES}
    app = deployment.patched_app(tmp_path / "app")
    assert not isinstance(app, str), f"{app}: update BEFORE_PATCHES in bench/deployment.py"
    for name, line, patched in deployment.BEFORE_PATCHES:
        text = (app / name).read_text()
        assert patched in text and line not in text
        compile(text, name, "exec")
        assert (REPO / name).read_text() == originals[name]
    assert not (app / ".venv").exists() and (app / "pyproject.toml").exists()
    assert sorted(p.name for p in app.iterdir() if p.is_dir()) == ["client", "common", "server"]


def test_message_stages_split_each_message_at_the_clientapps_timestamps(tmp_path: Path) -> None:
    from experiments.bench.deployment import message_stages

    def entry(sent: float, start: float, ready: float, reply: float, pulled: float) -> str:
        timing = {"sent": sent, "process-start": start, "handler": ready, "ready": ready}
        return json.dumps({"pulled": pulled, "config": {"timing": {**timing, "reply": reply}}})

    audit = tmp_path / "received.jsonl"
    lines = [entry(0, 2, 3, 5, 6), entry(0, 4, 6, 7, 9), json.dumps({"pulled": 1, "config": {}})]
    audit.write_text("\n".join(lines) + "\n")
    got = message_stages(audit)
    assert got == {
        "dispatch_median_s": 3.0,
        "startup_median_s": 1.5,
        "work_median_s": 1.5,
        "back_median_s": 1.5,
        "messages": 2,
    }


def test_deployment_breakdown_comes_from_the_measured_variants() -> None:
    from experiments.bench.deployment import breakdown_lines

    stages = {
        "dispatch_median_s": 1.0,
        "startup_median_s": 2.5,
        "work_median_s": 0.5,
        "back_median_s": 0.25,
        "messages": 9,
    }
    s = {
        "tls": {"round_median_s": 6.0, "stages": stages},
        "spawn": {"data_s": 1.2, "cached_data_s": 0.004},
    }
    text = "\n".join(breakdown_lines(s))
    assert "| after, subprocess isolation | 6.0 | 1.00 | 2.50 | 0.50 | 0.25 | 9 |" in text
    assert "before:" not in text and "from the data cache 0.004 s" in text
    assert breakdown_lines({"tls": {"round_median_s": 6.0}}) == []  # saved before stages


def test_scale_sweep_samples_exactly_the_clients_it_names() -> None:
    from common.config import parse_run_config, sampled_per_round
    from experiments.bench.scale import scale_config

    for k in (10, 50, 100, 200):
        cfg = parse_run_config(scale_config(1000, k, 4, 100))
        assert sampled_per_round(cfg, 1000) == k
        assert cfg.eval_every > cfg.num_server_rounds and cfg.fraction_evaluate == 0.0


def test_column_read_cost_compares_two_reads_of_the_same_partitions() -> None:
    from experiments.bench.scale import column_read_cost

    got = column_read_cost(rows=2000, size=50, partitions=3)
    assert got["partitions_timed"] == 3
    assert got["lazy_ms"] > 0 and got["slice_ms"] > 0


def test_per_round_table_uses_both_bracketing_bare_runs() -> None:
    def bare(seconds: float) -> dict:
        rounds = [
            {"round": r, "seconds": seconds, "train_compute": seconds / 2, "eval_compute": 0.1}
            for r in (1, 2, 3)
        ]
        return {"rounds": rounds}

    flower = {
        "warm_round_median_s": 1.0,
        "round_seconds": [5.0, 1.0, 1.0],
        "train_seconds": [4.0, 0.6, 0.6],
    }
    app = {"warm_overhead_s": 0.01, "warm_open_session_s": 0.02}
    got = overhead.per_round_table(flower, [bare(0.8), bare(1.2)], app, 0.001, clients=6)
    assert got["bare_round_s"] == pytest.approx(1.0)
    assert got["client_compute_s"] == pytest.approx(0.6)
    assert got["clientapp_bookkeeping_s"] == pytest.approx(6 * 0.01 + 6 * 0.02)
    assert got["dispatch_s"] == pytest.approx(1.0 - 0.6 - 0.18 - 0.001)
