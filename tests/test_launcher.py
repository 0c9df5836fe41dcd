"""`make run`'s launcher: a summary table and exit 0 on success, non-zero on a failed run
(`flwr run` itself exits 0 either way), and nothing left running."""

from __future__ import annotations

import os
import subprocess

import pytest

from deploy.cli import main
from tests.helpers import TINY

pytestmark = pytest.mark.slow


def _args(tmp_path, **extra) -> list[str]:
    items = {**TINY, "results-dir": str(tmp_path), **extra}
    return [a for k, v in items.items() for a in ("-c", f"{k}={v}")]


def _superlinks() -> set[str]:
    """SuperLinks started by this test process (others on the machine are not ours)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    me = str(os.getpid())
    return {
        line.split()[0]
        for line in out.splitlines()
        if "flower-superlink" in line and line.split()[1] == me
    }


def test_successful_run_prints_a_summary_and_exits_zero(tmp_path, capsys) -> None:
    before = _superlinks()
    assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "| task | metric |" in out and "round   2/2" in out and "results:" in out
    assert _superlinks() <= before, "the launcher left a SuperLink running"


def test_failed_run_exits_non_zero_with_the_reason(tmp_path, capsys) -> None:
    assert main(_args(tmp_path, attack="nan", attackers=3)) == 1
    err = capsys.readouterr().err
    assert "run FAILED" in err and "non-finite" in err


def test_the_engine_submits_a_slim_fresh_copy_of_the_app(tmp_path) -> None:
    """`flwr run <dir>` walks every file under <dir> for the FAB: the engine submits only
    the packages the apps import, copied again for every run so edits are picked up."""
    from deploy.runs import REPO, stage_app
    from deploy.simulation import SimulationEngine

    app = stage_app(tmp_path / "app")
    assert sorted(p.name for p in app.iterdir() if p.is_dir()) == ["client", "common", "server"]
    assert (app / "pyproject.toml").read_text() == (REPO / "pyproject.toml").read_text()
    assert not list(app.rglob("__pycache__"))
    (app / "client" / "stale.py").write_text("")
    engine = SimulationEngine()
    engine.home = tmp_path  # app_path() stages under the engine's FLWR_HOME
    assert engine.app_path() == app and not (app / "client" / "stale.py").exists()
    assert SimulationEngine(app_dir=REPO).app_path() == REPO
