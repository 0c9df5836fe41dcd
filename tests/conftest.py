"""Shared fixtures: real Flower simulations, small enough for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from experiments.launch import Outcome, run_simulation

# Small but real: 3 clients with different task sets, 2 rounds, little data.
TINY: dict[str, Any] = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "samples-per-client": 120,
    "local-epochs": 1,
    "hidden": 32,
}


def simulate(results_dir: Path, **overrides: Any) -> Outcome:
    """Run the app through Flower's simulation engine with TINY defaults + overrides."""
    cfg = {**TINY, "results-dir": str(results_dir), **overrides}
    outcome = run_simulation(cfg, echo=False, timeout=400)
    if not outcome.ok:
        tail = outcome.log_path.read_text()[-4000:] if outcome.log_path.exists() else ""
        pytest.fail(f"simulation failed ({outcome.status}/{outcome.flower_status}):\n{tail}")
    return outcome
