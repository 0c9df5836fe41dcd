"""Memory of a whole process tree, sampled from /proc (no psutil in the venv).

A simulation's memory is spread over the SuperLink, the simulation process, Ray's GCS and
raylet, and one worker per actor; some of them leave the tree (re-parented to init). The
sampler therefore keeps every process it has once seen below the root (identified by pid and
start time) until it exits. It reports the sum of RSS (what the target is stated in; it
counts shared pages, e.g. torch's libraries and Ray's object store, once per process) and the
sum of PSS (shared pages split among their users: closer to what the tree really occupies).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
MEMORY_INTERVAL_S = 0.5  # how often TreeSampler reads the process tree by default


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of `pid`, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time) for every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            table[int(entry)] = st
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> set[int]:
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size; falls back to RSS where smaps_rollup is not readable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss_bytes(pid)


class TreeSampler:
    """Samples the memory of `root` and all its (present and former) descendants every
    `interval` seconds in a background thread; `peak_rss` / `peak_pss` in bytes."""

    def __init__(
        self, root: int, interval: float = MEMORY_INTERVAL_S, *, measure: bool = True
    ) -> None:
        self.root = root
        self.interval = interval
        self.measure = measure  # False: only keep track of the tree (for `kill_leftovers`)
        self.tracked: dict[int, int] = {}  # pid -> start time
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> TreeSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> tuple[int, int, int]:
        """One sample: (RSS sum, PSS sum, processes) of the tree now."""
        table = process_table()
        if self.root in table:
            self.tracked.setdefault(self.root, table[self.root][1])
        for pid in descendants(self.root, table):
            self.tracked.setdefault(pid, table[pid][1])
        # Forget exited processes and pids reused by someone else.
        self.tracked = {p: s for p, s in self.tracked.items() if table.get(p, (0, -1))[1] == s}
        if not self.measure:
            return 0, 0, len(self.tracked)
        rss = sum(rss_bytes(p) for p in self.tracked)
        pss = sum(pss_bytes(p) for p in self.tracked)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_processes = max(self.peak_processes, len(self.tracked))
        self.samples += 1
        return rss, pss, len(self.tracked)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def leftovers(self) -> list[int]:
        """Tracked processes still running (same pid, same start time)."""
        table = process_table()
        return [p for p, s in self.tracked.items() if table.get(p, (0, -1))[1] == s]

    def kill_leftovers(self, grace: float = 5.0) -> list[int]:
        """SIGTERM, then SIGKILL, what this tree left running; the pids that were left."""
        left = self.leftovers()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.leftovers():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while self.leftovers() and time.monotonic() < deadline:
                time.sleep(0.1)
        return left
