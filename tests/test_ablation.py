"""The scenes ablation's arithmetic on summaries whose answer is known: Δm against each
seed's single-task reference, and the verdict of a paired t-test against the baseline."""

from __future__ import annotations

import pytest
import scipy.stats

from experiments.ablation import BASE, VARIANTS, cells, compare, overrides
from experiments.compare.references import SINGLE_TASK


def _summary(miou: float, abs_rel: float) -> dict:
    per_client = {"0": {"segmentation": {"test/miou": miou}, "depth": {"test/abs_rel": abs_rel}}}
    per_task = {
        "segmentation": {"test/miou": {"mean": miou}},
        "depth": {"test/abs_rel": {"mean": abs_rel}},
    }
    return {"per_client": per_client, "per_task": per_task}


def test_delta_m_is_against_each_seeds_reference_and_the_verdict_is_the_paired_t_test():
    seeds = (0, 1, 2)
    variants = ("hps", "mtan")
    summaries = {}
    for s in seeds:
        summaries[(SINGLE_TASK, s)] = _summary(0.5, 0.2)
        summaries[("hps", s)] = _summary(0.5 + 0.01 * s, 0.2)  # better mIoU than the reference
        summaries[("mtan", s)] = _summary(0.6 + 0.01 * s * s, 0.1)  # better on both
    table = compare(summaries, variants, seeds)
    # hps: mIoU +2s % (higher is better: Δ = −2s), abs-rel equal (Δ = 0); Δm = −s %
    assert table["delta_m"]["hps"] == pytest.approx([0.0, -1.0, -2.0])
    # mtan: mIoU Δ = −(20 + 2s²) %, abs-rel halved: Δ = −50 %; Δm is their mean
    expected = [(-(20 + 2 * s * s) - 50) / 2 for s in seeds]
    assert table["delta_m"]["mtan"] == pytest.approx(expected)
    verdict = table["verdicts"]["mtan"]
    diffs = [m - h for m, h in zip(expected, [0.0, -1.0, -2.0], strict=True)]
    assert verdict.p == pytest.approx(scipy.stats.ttest_1samp(diffs, 0.0).pvalue)
    assert verdict.verdict.startswith("better")  # lower Δm
    assert "hps" not in table["verdicts"]
    assert table["tasks"]["depth"][SINGLE_TASK] == [0.2, 0.2, 0.2]


def test_each_variant_changes_one_key_and_the_reference_trains_locally(tmp_path):
    assert cells(("hps", "hca"), (0,)) == [("hps", 0), ("hca", 0), (SINGLE_TASK, 0)]
    hca = overrides(BASE, tmp_path, "hca", 1)
    assert hca["aggregation"] == "hca" and hca["algorithm"] == "fedper" and hca["seed"] == 1
    assert overrides(BASE, tmp_path, SINGLE_TASK, 1)["algorithm"] == "local"
    assert overrides(BASE, tmp_path, "mtan", 0)["architecture"] == "mtan"
    assert all(len(v) <= 1 for v in VARIANTS.values())
    assert BASE["dataset"] == "scenes"


def test_the_late_change_is_the_last_round_minus_the_round_three_before():
    from experiments.ablation import late_change

    curve = {
        "hps": {"depth": ([1, 2, 3, 4, 5], [0.5, 0.4, 0.3, 0.25, 0.2])},
        "mtan": {"depth": ([1, 2], [0.5, 0.4])},  # too short to say
    }
    (row,) = late_change(curve, ("hps", "mtan"), ["depth"])
    assert row == "| depth | -0.200 | – |"  # round 5 (0.2) minus round 2 (0.4)


def test_each_setting_names_its_runs_and_keeps_its_data_keys(tmp_path):
    from experiments.ablation import SETTINGS, late_window, setting_of

    digits = SETTINGS["multidigits-a0.5"]
    cell = overrides(digits, tmp_path, "mtan", 2)
    assert cell["run-name"] == "multidigits-a0.5-mtan-s2"
    assert (cell["dataset"], cell["dirichlet-alpha"], cell["architecture"]) == (
        "multidigits",
        0.5,
        "mtan",
    )
    assert overrides(BASE, tmp_path, "hps", 0)["run-name"] == "scenes-hps-s0"
    # a round budget given with -c keeps the setting; another data set is refused
    assert setting_of({**digits, "num-server-rounds": 80}) == "multidigits-a0.5"
    with pytest.raises(ValueError, match="none of the settings"):
        setting_of({**digits, "dirichlet-alpha": 5.0})
    assert (late_window(10), late_window(50)) == (3, 10)
