"""The one-run privacy audit (experiments/privacy/audit.py): its ε lower bound against
known values, and on fedmtl's real DP-SGD path a bound below the accountant's ε, while a
planted bug (noise off) pushes it above. This is the test that fails when DP-SGD's noise
stops being added."""

from __future__ import annotations

import math

import pytest

from experiments.privacy.audit import AuditSetup, audit_run, epsilon_lower_bound


def test_all_guesses_right_without_delta_gives_the_closed_form() -> None:
    # P[Bin(r, q) ≥ r] = q^r = β  ⇒  ε = logit(β^(1/r)).
    q = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(1000, 100, 100, 0.0, 0.05) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-5
    )


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "expected"),
    [
        (1000, 100, 90, 1e-5, 1.626),
        (1000, 100, 100, 1e-5, 3.465),
        (1000, 500, 400, 1e-5, 1.198),
        (10000, 1000, 900, 1e-5, 2.015),
    ],
)
def test_the_bound_matches_values_computed_from_the_theorem_by_other_code(
    m: int, r: int, v: int, delta: float, expected: float
) -> None:
    assert epsilon_lower_bound(m, r, v, delta, 0.05) == pytest.approx(expected, abs=2e-3)


def test_chance_level_guessing_proves_nothing_and_more_correct_guesses_prove_more() -> None:
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5) for v in (70, 80, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] > 0


def test_impossible_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="v ≤ r ≤ m"):
        epsilon_lower_bound(10, 20, 5, 1e-5)


@pytest.mark.slow
def test_dp_sgd_stays_below_its_epsilon_and_the_planted_bug_does_not() -> None:
    setup = AuditSetup(epsilon=3.0, seed=0)
    honest = audit_run(setup, "none")
    assert honest["accountant_epsilon"] == pytest.approx(3.0, abs=0.05)
    assert honest["epsilon_lower_bound"] < honest["accountant_epsilon"]
    broken = audit_run(setup, "noise-off")
    assert broken["accountant_epsilon"] == honest["accountant_epsilon"]  # the accountant is fooled
    assert broken["epsilon_lower_bound"] > broken["accountant_epsilon"]
