"""Session fixtures. Shared helpers live in tests/helpers.py: never import this file.

- The session's simulation engine (tests/helpers.py) is stopped, with everything it started,
  when the session ends.
- `make test-fast` deselects the tests marked slow, so a test that starts a real Flower
  simulation or deployment must be marked slow: one that is not fails, naming the marker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deploy.local import LocalDeployment
from deploy.simulation import SimulationEngine
from tests.helpers import stop_engine

_current: pytest.Item | None = None  # the test being set up, run or torn down


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Record the test before its fixtures are set up: a module-scoped fixture that starts
    a simulation counts against the first test that requests it."""
    global _current
    _current = item


def only_in_slow_tests(start: Callable[..., Any], what: str) -> Callable[..., Any]:
    """`start` (a method that starts Flower processes) failing the current test unless that
    test is marked slow."""

    @functools.wraps(start)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = _current
        if item is not None and item.get_closest_marker("slow") is None:
            pytest.fail(
                f"{item.nodeid} starts a real {what} but is not marked @pytest.mark.slow "
                "(`make test-fast` runs `-m 'not slow'`)",
                pytrace=False,
            )
        return start(self, *args, **kwargs)

    return guarded


@pytest.fixture(scope="session", autouse=True)
def _flower_processes() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            SimulationEngine,
            "__enter__",
            only_in_slow_tests(SimulationEngine.__enter__, "Flower simulation"),
        )
        # Every process of a local deployment is started by `_spawn`.
        patch.setattr(
            LocalDeployment, "_spawn", only_in_slow_tests(LocalDeployment._spawn, "deployment")
        )
        yield
        stop_engine()
