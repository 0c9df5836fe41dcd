"""The client-level DP study's cells and what it reads back from a run: ε after the last
release (both accountings) and the rounds that released nothing."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import parse_run_config, sampled_per_round
from experiments.privacy.population import BASE, outcome, overrides, report


def test_each_cell_is_a_valid_config_with_a_secret_sample_of_the_population(tmp_path):
    cfg = parse_run_config(overrides(BASE, tmp_path, 1.0, 2))
    assert (cfg.privacy, cfg.cdp_noise_multiplier, cfg.cdp_amplification, cfg.seed) == (
        "central-dp",
        1.0,
        "without-replacement",
        2,
    )
    assert cfg.num_clients >= 100 and sampled_per_round(cfg, cfg.num_clients) < cfg.num_clients
    plain = parse_run_config(overrides(BASE, tmp_path, 0.0, 2))
    assert plain.privacy == "none" and plain.name != cfg.name


def test_the_outcome_reads_the_last_release_and_counts_skipped_rounds(tmp_path: Path):
    rows = [
        {"round": 1, "central_dp": {"epsilon": 1.0, "epsilon_amplified": 0.2}},
        {"round": 2, "skipped": "central DP released nothing: 9 usable updates of the 10"},
        {"round": 3, "central_dp": {"epsilon": 1.5, "epsilon_amplified": 0.3}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "per_task": {
            "t1": {"test/accuracy": {"mean": 0.6}},
            "t0": {"test/mae": {"mean": 2.0}},
            "t3": {"test/accuracy": {"mean": 0.8}},
        }
    }
    got = outcome(summary, tmp_path)
    assert (got["epsilon"], got["epsilon_amplified"], got["skipped"]) == (1.5, 0.3, 1)
    assert abs(got["accuracy"] - 70.0) < 1e-9
    assert got["tasks"]["t0"] == ("mae", 2.0)
    (tmp_path / "nodp").mkdir()
    (tmp_path / "nodp" / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    plain = outcome(summary, tmp_path / "nodp")  # a run without DP writes no central_dp
    assert plain["epsilon"] is None and plain["skipped"] == 0
    results = {(0.0, 0): plain, (0.0, 1): plain, (1.0, 0): got, (1.0, 1): got}
    page = report(results, (1.0,), (0, 1), BASE, "cmd", 60.0)
    assert "| no DP | 70.0 ± 0.0 | – | ∞ | ∞ | 0, 0 |" in page
    assert "| 1 | 70.0 ± 0.0 |" in page and "| 1.50 ± 0.00 | 0.30 ± 0.00 | 1, 1 |" in page


def test_the_progress_line_shows_the_amplified_epsilon_beside_the_enforced_one():
    from server.rounds import round_line

    row = {"round": 3, "seconds": 1.0, "central_dp": {"epsilon": 9.236}}
    assert "| ε 9.24 |" in round_line(row, 10)
    row["central_dp"]["epsilon_amplified"] = 3.68
    assert "| ε 9.24 (amplified 3.68) |" in round_line(row, 10)
