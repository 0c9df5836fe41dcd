"""The privacy sweep: its grid, and a tiny sweep end to end on real Flower simulations whose
rebuilt client models, replayed updates and report numbers must match what the runs did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from client.train import evaluate
from common.config import parse_run_config
from experiments.privacy.cell_attacks import utility
from experiments.privacy.grid import NA_REASON, Cell, Settings, not_applicable
from experiments.privacy.models import client_models, initial_clients
from experiments.privacy.records import accuracy_drops
from experiments.privacy.sweep import run_sweep
from tests.helpers import TINY, engine


def test_grid_marks_refused_secagg_cells_not_applicable(tmp_path: Path) -> None:
    settings = Settings(results_dir=tmp_path)
    cells = settings.cells()
    assert len(cells) == 3 * 4 * 2 * 3
    na = {c: not_applicable(c, settings.base, tmp_path) for c in cells}
    for cell, reason in na.items():
        if cell.secagg and cell.algorithm in ("fedavg", "local"):
            assert reason == NA_REASON[cell.algorithm]
        else:
            assert reason is None, cell  # includes fedper + secagg + dp-sgd
    dp = Cell("fedper", 3.0, True, 0).overrides(settings.base, tmp_path)
    assert dp["privacy"] == "dp-sgd" and dp["dp-noise-multiplier"] == 0.0
    assert dp["dp-epsilon"] == 3.0 and dp["state-dir"].endswith("fedper-eps3-sa1-s0")


def test_accuracy_drop_is_paired_by_seed() -> None:
    def rec(acc: float) -> dict[str, Any]:
        return {"utility": {"mean_acc": acc}}

    records = {
        Cell("fedper", None, False, 0): rec(0.80),
        Cell("fedper", None, False, 1): rec(0.70),
        Cell("fedper", 3.0, False, 0): rec(0.75),
        Cell("fedper", 3.0, False, 1): rec(0.60),
    }
    assert accuracy_drops(records, ("fedper", 3.0, False)) == pytest.approx([5.0, 10.0])


def test_utility_averages_classification_tasks_only() -> None:
    summary = {
        "per_task": {
            "left": {"test/accuracy": {"mean": 0.5}},
            "parity": {"test/accuracy": {"mean": 0.7}},
            "sum": {"test/mae": {"mean": 2.0}},
        }
    }
    assert utility(summary) == {"mean_acc": pytest.approx(0.6), "sum_mae": 2.0}


def _record(cell: Cell, acc: float) -> dict[str, Any]:
    """A privacy.json as attack_cell writes it, with made-up numbers: 150 training and 30
    test pairs per client."""
    per_client = {str(c): {"m1": {}, "m2": {}, "members": 150, "nonmembers": 30} for c in range(3)}
    r2 = {
        "single_psnr": 20.0,
        "single_ssim": 0.5,
        "single_label_acc": 0.4,
        "batch_psnr": 15.0,
        "batch_label_acc": 0.3,
        "prior_psnr": 10.0,
    }
    return {
        "cell": {"algorithm": cell.algorithm, "epsilon": cell.epsilon, "secagg": cell.secagg},
        "utility": {"mean_acc": acc, "sum_mae": 1.5},
        "reconstruction_max_abs_diff": 0.0,
        "epsilon": None,
        "membership": {
            "per_client": per_client,
            "m1_auc": 0.6,
            "m1_advantage": 0.1,
            "m2_auc": 0.62,
            "m2_tpr_at_1pct_fpr": 0.0,
        },
        "m3": {"round1": {"auc": 0.7}, "final": {"auc": 0.65}},
        "r2": r2,
        "run_wall_time_s": 120.0,
        "attack_seconds": 60.0,
    }


def test_report_prose_follows_the_config_and_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numbers the report used to type (a 2-core box, about 40 s of start-up, α=0.5, batch
    32, lr 0.05, hidden 64, δ = 1e-5, C = 1, five heads, about 45 and 210 pairs per client,
    8×16 images, 0.1 chance, two or three tasks, 99 dB, a 1e-5 SecAgg step, the goal at ε=3,
    AUC 0.55, 8 points) come from the config, the records and the constants that are used:
    here a config and records unlike the old literals."""
    import os

    from experiments.privacy import findings
    from experiments.privacy.report import write_report

    # The goal's numbers are one set of constants for the check and its heading.
    monkeypatch.setattr(findings, "GOAL_EPSILON", 2.0)
    monkeypatch.setattr(findings, "GOAL_AUC", 0.65)
    monkeypatch.setattr(findings, "GOAL_DROP", 20.0)

    base = {
        **TINY,
        "batch-size": 16,
        "lr": 0.2,
        "dirichlet-alpha": 2.0,
        "dp-delta": 1e-6,
        "dp-max-grad-norm": 2.0,
        "secagg-clipping-range": 4.0,
        "secagg-quantization-range": 1024,
        "plan": "left;left,right,sum,parity",
    }
    settings = Settings(
        algorithms=("fedper", "fedavg"),
        epsilons=(None, 2.0),
        secagg=(False,),
        seeds=(0, 1),
        base=base,
        results_dir=tmp_path / "results",
        out=tmp_path / "PRIVACY.md",
        plots=tmp_path / "plots",
    )
    records = {c: _record(c, 0.8 if c.epsilon is None else 0.7) for c in settings.cells()}
    text = write_report(records, {}, settings)
    assert f", {os.cpu_count()} CPU cores), " in text
    assert "\n8 Flower simulations (+ 0 n/a cells). Recorded per cell: 16 min" in text
    assert "partitioner dirichlet α=2, batch 16, lr 0.2, hidden " in text
    assert "(δ = 1e-06, C = 2)" in text
    assert "all 5 heads" in text  # MultiDigits' tasks
    assert "(30 pairs per client, median, so TPR at 1% FPR is really TPR at 0 FPR;" in text
    assert "Small data (150 training pairs per client, median)" in text
    assert "noise on a 16-example batch" in text
    assert "PSNR over 8×16 images" in text  # MultiDigits' canvas
    assert "what is above 0.1, chance for `left`" in text
    assert "the targets were trained federated on 1 or 4 tasks" in text
    assert "reuse sklearn's 1797 digit images" in text
    assert f"= {2 * 4.0 / 1024:.1g} per weight" in text
    assert "## Goal check (ε ≈ 2: M1/M2 AUC ≤ 0.65 at an accuracy drop ≤ 20 points)" in text
    assert "| fedper | off | 0.600 ± 0.000 | 0.620 ± 0.000 | 10.0 ± 0.0 | met | met |" in text
    assert "30 non-members per client" in text
    for stale in ("2-core", "40 s", "δ = 1e-5", "about 45", "about 210", "issue"):
        assert stale not in text, stale


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Any]]:
    root = tmp_path_factory.mktemp("privacy-sweep")
    settings = Settings(
        algorithms=("fedper",),
        epsilons=(None, 8.0),
        secagg=(False,),
        seeds=(0,),
        base={**TINY, "eval-every": TINY["num-server-rounds"], "fraction-evaluate": 0.0},
        shadows=2,
        r2_singles=1,
        r2_batch=2,
        r2_steps=20,
        results_dir=root / "results",
        out=root / "docs" / "PRIVACY.md",
        plots=root / "docs" / "privacy",
    )
    return settings, run_sweep(settings, engine())


@pytest.mark.slow
def test_report_and_plots_come_from_the_runs(tiny_sweep: tuple[Settings, dict]) -> None:
    settings, out = tiny_sweep
    text = settings.out.read_text()
    for name in (
        "utility_vs_epsilon",
        "attacks_vs_epsilon",
        "reconstruction_vs_epsilon",
        "epsilon_per_round",
    ):
        assert (settings.plots / f"{name}.png").stat().st_size > 1000
    assert "python -m experiments.privacy.sweep" in text
    rows = {
        line.split("|")[3].strip(): line for line in text.splitlines() if "| fedper | off |" in line
    }
    assert set(rows) >= {"no DP", "ε=8"}
    for cell, record in out["records"].items():
        summary = json.loads((settings.results_dir / cell.name / "summary.json").read_text())
        accs = [
            m["test/accuracy"]["mean"] for m in summary["per_task"].values() if "test/accuracy" in m
        ]
        assert record["utility"]["mean_acc"] == pytest.approx(np.mean(accs), abs=1e-12)
        row = rows[cell.privacy_label]
        assert f"{np.mean(accs):.3f}" in row
        assert f"{record['membership']['m1_auc']:.3f}" in row
        assert f"{record['m3']['round1']['auc']:.3f}" in row
        assert 0.0 <= record["membership"]["m2_auc"] <= 1.0
        assert set(record["membership"]["per_client"]) == {"0", "1", "2"}
        saved = json.loads((settings.results_dir / cell.name / "privacy.json").read_text())
        assert saved["utility"] == record["utility"]


@pytest.mark.slow
def test_rebuilt_client_models_match_what_the_run_evaluated(
    tiny_sweep: tuple[Settings, dict],
) -> None:
    settings, out = tiny_sweep
    for cell, record in out["records"].items():
        assert record["reconstruction_max_abs_diff"] <= 1e-6
        cfg = parse_run_config(cell.overrides(settings.base, settings.results_dir.resolve()))
        summary = json.loads((settings.results_dir / cell.name / "summary.json").read_text())
        for c in client_models(settings.results_dir.resolve() / cell.name, cfg):
            reported = summary["per_client"][str(c.data.client_id)]
            for task, metrics in evaluate(c.model, c.data.test, c.data.tasks).items():
                name = "mae" if "mae" in metrics else "accuracy"
                assert metrics[name] == pytest.approx(reported[task][f"test/{name}"], abs=1e-6)


@pytest.mark.slow
def test_round_one_replay_matches_the_servers_aggregate(tiny_sweep: tuple[Settings, dict]) -> None:
    """M3 replays round 1 outside Flower; init + the replayed FedAvg aggregate must equal the
    encoder the server saved after round 1 (its checkpoint), with and without DP-SGD."""
    settings, out = tiny_sweep
    for cell in out["records"]:
        root = settings.results_dir.resolve()
        cfg = parse_run_config(cell.overrides(settings.base, root))
        init = initial_clients(cfg)[0].model.encoder
        start = torch.cat([p.detach().reshape(-1) for p in init.parameters()]).numpy()
        agg = np.load(root / cell.name / "m3_round1_aggregate.npy")
        with np.load(root / cell.name / "checkpoints" / "checkpoint-00001.npz") as ckpt:
            keys = [k for k in ckpt.files if k.startswith("shared::")]
            saved = {k[len("shared::") :]: ckpt[k] for k in keys}
        order = [f"encoder.{k}" for k, _ in init.named_parameters()]
        server = np.concatenate([saved[k].reshape(-1) for k in order])
        np.testing.assert_allclose(start + agg, server, atol=1e-5)


@pytest.mark.slow
def test_epsilon_per_round_is_monotone_and_matches_the_log(
    tiny_sweep: tuple[Settings, dict],
) -> None:
    _, out = tiny_sweep
    dp = [r for c, r in out["records"].items() if c.epsilon is not None]
    assert dp
    for r in dp:
        eps = r["epsilon"]
        assert eps["monotone"] and eps["logged_in_metrics"]
        assert eps["logged_vs_state_max_abs_diff"] < 1e-9
        assert eps["rounds_reported"] == TINY["num-server-rounds"]
        assert 0 < eps["final_max"] <= 8.0 * (1 + 1e-6)
        assert r["r2"]["sigma"] > 0


@pytest.mark.slow
def test_finished_cells_are_resumed_without_running(tiny_sweep: tuple[Settings, dict]) -> None:
    settings, out = tiny_sweep

    class NoRuns:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a finished cell was run again")

    again = run_sweep(settings, NoRuns())  # type: ignore[arg-type]
    for cell, record in out["records"].items():
        assert again["records"][cell]["membership"] == record["membership"]
