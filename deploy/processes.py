"""The processes behind a run, started and stopped the same way by the simulation engine, the
local deployment and the benchmarks: Flower's environment, a free loopback port, waiting for a
SuperLink to answer, and stopping a process with everything it started (its process group,
then by PID whatever left the group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"


def flower_env() -> dict[str, str]:
    """Environment for Flower and Ray processes: offline, quiet, unbuffered, and this
    interpreter's `bin/` first on PATH so `flwr` and `flower-*` are the ones installed here."""
    env = os.environ.copy()
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        RAY_TMPDIR=str(Path(tempfile.gettempdir()) / "fedmtl-ray"),
        RAY_DEDUP_LOGS="0",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_healthy(
    port: int, proc: subprocess.Popen, timeout: float = 60.0, ca_cert: str | None = None
) -> None:
    """Wait until the SuperLink on `port` answers /health. With `ca_cert` it is checked over
    HTTPS through that CA, which also proves its certificate is valid for 127.0.0.1."""
    scheme = "https" if ca_cert else "http"
    context = ssl.create_default_context(cafile=ca_cert) if ca_cert else None
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}")
        try:
            url = f"{scheme}://{LOOPBACK}:{port}/health"
            with urllib.request.urlopen(url, timeout=0.5, context=context) as r:
                if r.status == 200:
                    return
        except OSError as err:  # urllib wraps TLS failures in URLError (an OSError)
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise RuntimeError(
                    f"the SuperLink's certificate does not verify: {reason}"
                ) from None
            last = err
        time.sleep(0.2)
    raise TimeoutError(f"SuperLink on port {port} not healthy after {timeout:.0f}s ({last})")


def stop_process_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the whole group of `proc` (started with `start_new_session=True`: e.g. a
    SuperLink, its simulation process and Ray), then SIGKILL what is left after `grace`."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(proc.pid):
            proc.poll()  # reap our own child: a zombie still counts as a group member
            time.sleep(0.1)
        if not _group_alive(proc.pid):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _ps_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) for every process (ps works on Linux and macOS)."""
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid=,lstart="], capture_output=True, text=True, check=False
    ).stdout
    table = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            table[int(parts[0])] = (int(parts[1]), parts[2].strip())
    return table


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live descendant of `pid`."""
    table = _ps_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def still_running(tree: dict[int, str]) -> list[int]:
    """The PIDs of `tree` still running and still the processes we saw (same start time)."""
    table = _ps_table()
    return [pid for pid, started in tree.items() if table.get(pid, (0, ""))[1] == started]


def stop_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop `proc`'s process group, then any descendant that left the group (Flower starts
    SuperExec in a session of its own; it would exit with its parent, a little later)."""
    tree = descendants(proc.pid)
    stop_process_group(proc, grace=grace)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        alive = still_running(tree)
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and still_running(tree):
            time.sleep(0.1)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while stopping: a second Ctrl-C must not leave half of a
    deployment running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log file, for an error message."""
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"
