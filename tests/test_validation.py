"""Update validation on real simulations: every malformed update is rejected with a reason
naming its client and the run completes; when nothing usable is left, the run fails clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from client.byzantine import ATTACKS, MIXED, attack_update
from common.config import CHOICES
from server.validation import arrays_problem
from tests.conftest import run_tiny, simulate


def test_attack_names_agree_with_config() -> None:
    assert set(CHOICES["attack"]) == set(ATTACKS)


def test_each_malformation_is_named() -> None:
    sent = ArrayRecord(
        {"a": Array(np.zeros((2, 3), np.float32)), "b": Array(np.zeros(3, np.float32))}
    )
    honest = ArrayRecord(
        {"a": Array(np.ones((2, 3), np.float32)), "b": Array(np.ones(3, np.float32))}
    )
    assert arrays_problem(honest, sent) is None
    expected = {
        "nan": "non-finite",
        "malformed-keys": "keys differ",
        "malformed-shape": "sent float32[2, 3]",
        "malformed-dtype": "float64",
    }
    for attack, needle in expected.items():
        bad = attack_update(attack, sent, honest, 1.0, seed=0)
        assert needle in arrays_problem(bad, sent), attack
    flipped = attack_update("sign-flip", sent, honest, 1.0, seed=0)
    assert np.allclose(flipped["a"].numpy(), -1.0)


@pytest.mark.slow
def test_every_malformed_update_is_rejected_and_the_run_completes(tmp_path) -> None:
    outcome = simulate(
        tmp_path,
        **{
            "num-clients": 7,
            "attack": "mixed",
            "attackers": 5,
            "attack-scale": 1000.0,
            "max-update-ratio": 10.0,
            "min-nodes": 2,
        },
    )
    rows = [json.loads(x) for x in (outcome.results_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        reasons = {r["client"]: r["reason"] for r in row["rejected"]}
        assert sorted(reasons) == ["0", "1", "2", "3", "4"], reasons
        assert "non-finite" in reasons[str(MIXED.index("nan"))]
        assert "keys differ" in reasons[str(MIXED.index("malformed-keys"))]
        assert "sent float32" in reasons[str(MIXED.index("malformed-shape"))]
        assert "float64" in reasons[str(MIXED.index("malformed-dtype"))]
        assert "exceeds 10 × median" in reasons[str(MIXED.index("scale"))]
        assert row["clients"] == 2 and row["failures"] >= 5
    assert outcome.summary["status"] == "completed"


@pytest.mark.slow
def test_all_updates_malformed_fails_with_a_clear_message(tmp_path) -> None:
    outcome = run_tiny(tmp_path, attack="nan", attackers=3)
    assert not outcome.ok
    error = outcome.summary["error"]
    assert "0 usable training replies of 3" in error and "min-nodes = 2" in error
    assert "client 0" in error and "non-finite" in error
