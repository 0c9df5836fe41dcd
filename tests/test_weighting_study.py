"""The weighting study: its significance rule, and a tiny study end to end on Flower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.kit.scores import task_delta_m
from experiments.weighting_study import (
    StudySettings,
    paired_difference,
    run_name,
    run_study,
)
from tests.helpers import TINY, engine


def test_a_verdict_is_the_paired_t_test_at_the_five_percent_level() -> None:
    import scipy.stats

    clear = paired_difference([0.80, 0.82, 0.81], [0.70, 0.71, 0.72], higher_is_better=True)
    assert clear["verdict"] == "better" and clear["mean"] == pytest.approx(0.10)
    assert clear["low"] < 0.10 < clear["high"]
    # The old rule (|mean| > 2 std) called this better: 0.1 > 2 × 0.045. With three seeds
    # that is a test at about p = 0.06, and the paired t-test does not reject.
    edge = paired_difference([0.755, 0.81, 0.865], [0.70, 0.71, 0.72], higher_is_better=True)
    p = scipy.stats.ttest_1samp([0.055, 0.10, 0.145], 0.0).pvalue
    assert 0.05 < p < 0.07 and edge["p"] == pytest.approx(p)
    assert edge["verdict"] == "n.s." and edge["low"] < 0 < edge["high"]
    noisy = paired_difference([0.80, 0.60, 0.75], [0.70, 0.71, 0.72], higher_is_better=True)
    assert noisy["verdict"] == "n.s."
    mae = paired_difference([1.2, 1.21, 1.19], [1.0, 1.0, 1.0], higher_is_better=False)
    assert mae["verdict"] == "worse"
    single = paired_difference([0.9], [0.1], higher_is_better=True)
    assert single["verdict"] == "n.s." and single["std"] is None


def test_delta_m_signs_follow_the_metric_direction() -> None:
    metric = {"t0": "mae", "t1": "accuracy"}
    ew = {"t0": 1.0, "t1": 0.5}
    assert task_delta_m({"t0": 0.9, "t1": 0.55}, ew, metric) == pytest.approx(-10.0)
    assert task_delta_m({"t0": 1.1, "t1": 0.45}, ew, metric) == pytest.approx(10.0)


def test_report_prose_follows_the_config_and_the_runs(tmp_path: Path) -> None:
    """Numbers the report used to type (a 2-core box, about 40 s of start-up per run,
    α=0.5, batch 32, lr 0.05, hidden 64, a 6-client plan, t0/t2 regression and t1/t3 binary,
    three seeds, ~70 % of the samples) come from the config, the runs and the split code:
    here a config and results unlike the old literals."""
    import os

    from common.config import parse_run_config
    from experiments.weighting_study import build_table, write_report

    base = {
        "dataset": "synthcorr",
        "num-clients": 4,
        "num-server-rounds": 3,
        "samples-per-client": 120,
        "local-epochs": 1,
        "batch-size": 16,
        "lr": 0.2,
        "hidden": 48,
        "dirichlet-alpha": 2.0,
    }
    seeds = (0, 1, 2, 3, 4)
    settings = StudySettings(
        methods=("ew", "pcgrad"),
        correlations=(0.3,),
        seeds=seeds,
        base=base,
        out=tmp_path / "WEIGHTING.md",
        plots=tmp_path / "plots",
    )
    values = {
        (0.3, m, s): {"t0": ("accuracy", 0.6 + 0.01 * s), "t1": ("mae", 1.0 + 0.1 * s)}
        for m in settings.methods
        for s in seeds
    }
    write_report(build_table(values, settings), settings, (600.0, [12.0, 14.0], 90.0))
    text = settings.out.read_text()
    assert f" {os.cpu_count()} CPU cores), " in text
    assert "\n10 Flower simulations: 10 min of server-side run time" in text
    assert "Flower's start-up, 13 s per run on average over the 2 timed run(s))" in text
    assert "; the grid's invocations took 1.5 min" in text
    assert "partitioner dirichlet α=2, batch 16, lr 0.2, hidden 48, the default 4-client" in text
    cfg = parse_run_config(base)
    assert f"`cagrad-c={cfg.cagrad_c:g}`, `mgda-normalize={cfg.mgda_normalize}`" in text
    assert "Tasks t1 regression (test MAE, lower is better); t0 classification" in text
    assert "with 5 seed(s) the test only finds large effects" in text
    assert (
        "3 rounds of 1 local epochs on the 70% training split of `samples-per-client = 120`" in text
    )
    for stale in ("2-core", "40 s", "hidden 64", "t1, t3 binary", "three seeds", "issue"):
        assert stale not in text, stale


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path: Path) -> None:
    settings = StudySettings(
        methods=("ew", "mgda"),
        correlations=(0.1,),
        seeds=(0,),
        base={**TINY, "dataset": "synthcorr", "algorithm": "fedper"},
        results_dir=tmp_path / "results",
        out=tmp_path / "WEIGHTING.md",
        plots=tmp_path / "weighting",
    )
    out = run_study(settings, engine())
    text = settings.out.read_text()
    assert "python -m experiments.weighting_study" in text
    assert (settings.plots / "final_metrics.png").stat().st_size > 1000
    for method in settings.methods:
        name = run_name(0.1, method, 0)
        summary = json.loads((settings.results_dir / name / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["config"]["weighting"] == method
        assert summary["config"]["synth-correlation"] == 0.1
        for task, metrics in summary["per_task"].items():
            key = "test/accuracy" if "test/accuracy" in metrics else "test/mae"
            value = metrics[key]["mean"]
            assert out["values"][(0.1, method, 0)][task][1] == value
            row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
            assert f"{value:.3f}" in row
    assert "n.s." in text and "no improvement is claimed" in text  # one seed: nothing claimed

    class NoRuns:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a finished run was run again")

    again = run_study(settings, NoRuns())  # type: ignore[arg-type]
    assert again["values"] == out["values"]
