"""Secure aggregation: the ServerApp never holds one client's encoder update, and the secure
sum equals the plain aggregate within SecAgg+'s quantisation error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.config import ConfigError, parse_run_config
from tests.helpers import simulate

pytestmark = pytest.mark.slow


def test_server_sees_only_masked_vectors_and_the_sum_matches_plain(tmp_path) -> None:
    common = {"num-server-rounds": 1, "audit-received": True}
    plain = simulate(tmp_path / "plain", **common)
    secure = simulate(tmp_path / "secure", secagg=True, **common)

    lines = (secure.results_dir / "received.jsonl").read_text().splitlines()
    train = [e for e in map(json.loads, lines) if e["phase"] == "train"]
    assert train, "no training-phase replies were audited"
    for e in train:
        # Every SecAgg+ stage reply: arrays emptied by the client's mod, only protocol configs.
        assert all(keys == [] for keys in e["keys"].values()), e
        assert "secaggplus_configs" in e["config"], e["config"]
    # Four SecAgg+ stages (setup, share keys, masked vectors, unmask) × 3 clients.
    assert len(train) == 4 * 3

    a = np.load(plain.results_dir / "shared_arrays.npz")
    b = np.load(secure.results_dir / "shared_arrays.npz")
    assert a.files == b.files
    # Per client and coordinate the error is below one quantisation step (2·8/2²²);
    # the weighted mean divides it by the total weight fraction (~0.25 here).
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a.files)
    assert 0 < worst < 1e-4, worst


def test_secagg_refuses_what_it_cannot_aggregate() -> None:
    with pytest.raises(ConfigError, match="aggregates the shared encoder only"):
        parse_run_config({"secagg": True, "algorithm": "fedavg"})
    with pytest.raises(ConfigError, match="needs individual updates"):
        parse_run_config({"secagg": True, "strategy": "krum"})
    with pytest.raises(ConfigError, match="fixed-client"):
        parse_run_config({"secagg": True, "privacy": "central-dp"})
