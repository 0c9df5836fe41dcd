"""Shared fixtures: real Flower simulations, small enough for CI.

One SuperLink (simulation mode) serves every simulation of the session; it is started on
first use and stopped, with everything it started, when the session ends.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from experiments.launch import Outcome, SimulationEngine

# Small but real: 3 clients with different task sets, 2 rounds, little data.
TINY: dict[str, Any] = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "samples-per-client": 120,
    "local-epochs": 1,
    "hidden": 32,
}

_engine: SimulationEngine | None = None


def engine() -> SimulationEngine:
    global _engine
    if _engine is None:
        _engine = SimulationEngine().__enter__()
        # Test modules import this file as `tests.conftest`, pytest loads it as `conftest`:
        # two copies, two engines, and the session fixture below only sees its own. The
        # other copy's SuperLink is stopped at exit (stopping twice is harmless).
        atexit.register(_engine.__exit__, None, None, None)
    return _engine


@pytest.fixture(scope="session", autouse=True)
def _stop_engine() -> Iterator[None]:
    yield
    global _engine
    if _engine is not None:
        _engine.__exit__(None, None, None)
        _engine = None


def run_tiny(results_dir: Path, **overrides: Any) -> Outcome:
    """Run the app through Flower's simulation engine with TINY defaults + overrides."""
    cfg = {**TINY, "results-dir": str(results_dir), **overrides}
    return engine().run(cfg, echo=False, timeout=400)


def simulate(results_dir: Path, **overrides: Any) -> Outcome:
    """`run_tiny` that must succeed (the Flower log tail is shown when it does not)."""
    outcome = run_tiny(results_dir, **overrides)
    if not outcome.ok:
        tail = outcome.log_path.read_text()[-4000:] if outcome.log_path.exists() else ""
        pytest.fail(f"simulation failed ({outcome.status}/{outcome.flower_status}):\n{tail}")
    return outcome
