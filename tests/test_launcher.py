"""`make run`'s launcher: a summary table and exit 0 on success, non-zero on a failed run
(`flwr run` itself exits 0 either way), a Ray head of its own for the run, and nothing left
running."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.processes import descendants, still_running
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


def _parent(pid: int) -> int:
    """`pid`'s parent, from /proc (the field after the parenthesised command name)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


class ProcessWatch:
    """Every process below this test process while it runs: pid -> (start time, command),
    sampled every 0.2 s in a thread, and pid -> parent. A process's command is the last one
    it showed (an exiting process shows none): between fork and exec a child shows its
    parent's command line, so a first look can be the wrong one."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, str]] = {}
        self.parent: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid, started in descendants(os.getpid()).items():
                if pid not in self.before:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                        self.parent[pid] = _parent(pid)
                    except OSError:
                        continue
                    if cmd or pid not in self.seen:  # an exiting process shows none
                        self.seen[pid] = (started, cmd.decode(errors="replace"))
            self._stop.wait(0.2)

    def __enter__(self) -> ProcessWatch:
        # What already ran (e.g. the session's own engine and its Ray head) is not the
        # launcher's.
        self.before = set(descendants(os.getpid()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_successful_run_prints_a_summary_and_exits_zero(tmp_path, capsys) -> None:
    before = _superlinks()
    with ProcessWatch() as watch:
        assert main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "| task | metric |" in out and "round   2/2" in out and "results:" in out
    assert _superlinks() <= before, "the launcher left a SuperLink running"
    heads = {p for p, (_, cmd) in watch.seen.items() if "ray start --head" in cmd}
    # A child the head forks shows the head's command line until it execs (a window a loaded
    # machine widens), and it may exit before it does: a head whose parent is a head is not
    # a head of its own.
    heads = {p for p in heads if watch.parent[p] not in heads}
    assert len(heads) == 1, "the launcher did not start one Ray head of its own"
    assert [p for p, (_, cmd) in watch.seen.items() if "raylet" in cmd], "no raylet ran"
    # Everything the run started is gone: the head, its GCS and raylet, the actors.
    assert still_running({p: s for p, (s, _) in watch.seen.items()}) == []


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
    engine = SimulationEngine()
    engine.home = tmp_path  # app_path() stages under the engine's FLWR_HOME
    staged = engine.app_path()
    assert staged.parent == tmp_path and staged != app
    assert sorted(p.name for p in staged.iterdir() if p.is_dir()) == ["client", "common", "server"]
    assert SimulationEngine(app_dir=REPO).app_path() == REPO


def test_runs_submitted_at_once_each_get_a_complete_copy_of_their_own(tmp_path: Path) -> None:
    """Several threads submitting to one engine (the bench's communication section) must not
    restage a copy that another submission is still packing into its FAB."""
    from concurrent.futures import ThreadPoolExecutor

    from deploy.runs import REPO
    from deploy.simulation import SimulationEngine

    engine = SimulationEngine()
    engine.home = tmp_path
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: engine.app_path(), range(8)))
    assert len(set(copies)) == 8

    def modules(app: Path) -> list[str]:
        return sorted(p.name for p in (app / "common").glob("*.py"))

    assert all(modules(copy) == modules(REPO) for copy in copies)
