"""Run the Flower app through the Simulation Engine, end to end, and report honestly.

`flwr run` exits 0 even when the run failed and leaves a managed SuperLink running. This
launcher starts its own SuperLink (simulation mode, loopback, a free port) with a private
FLWR_HOME, submits the app with `flwr run --stream`, shows one line per round, checks the
run's status in `summary.json` and in `flwr ls`, stops the SuperLink it started (whole
process group), and exits non-zero when the run failed.

    fedmtl-run -c num-server-rounds=5 -c algorithm=local
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common.config import STRING_KEYS, RunConfig, parse_run_config

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state"
APP_PACKAGES = ("client", "common", "server")  # all that the ServerApp and ClientApp import
APP_FILES = ("pyproject.toml", "README.md", ".gitignore")


def stage_app(dest: Path, src: Path = REPO) -> Path:
    """A copy of the app with only what it runs (`client/`, `common/`, `server/`,
    pyproject.toml). `flwr run <dir>` walks and resolves every file under <dir> before it
    filters them by .gitignore to build the FAB: in the repository that is the .venv, .state
    and results (tens of thousands of files, seconds per submission); here a few dozen."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for package in APP_PACKAGES:
        shutil.copytree(src / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in APP_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)
    return dest


def flower_env(state: Path = STATE) -> dict[str, str]:
    """Environment for Flower/Ray processes: offline, quiet, files kept under `.state/`."""
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
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
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
            url = f"{scheme}://127.0.0.1:{port}/health"
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
    """SIGTERM the whole group (SuperLink, simulation process, Ray), then SIGKILL."""
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


@dataclass
class Outcome:
    status: str
    summary: dict[str, Any] | None
    results_dir: Path
    log_path: Path
    wall_time_s: float
    flower_status: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.flower_status.startswith("finished:completed")


class SimulationEngine:
    """A SuperLink in simulation mode (loopback, free port, private FLWR_HOME) that runs one
    or more apps in turn; stopped, with everything it started, on exit.

        with SimulationEngine() as engine:
            for overrides in grid:
                outcome = engine.run(overrides)
    """

    def __init__(self, app_dir: Path | None = None, cpus_per_client: int | float = 1) -> None:
        # None: submit a fresh slim copy of this repository's app for every run (`stage_app`).
        self.app_dir = app_dir
        self.cpus_per_client = cpus_per_client
        self.superlink: subprocess.Popen | None = None

    def __enter__(self) -> SimulationEngine:
        STATE.mkdir(exist_ok=True)
        self.home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=STATE))
        self.env = flower_env()
        self.env["FLWR_HOME"] = str(self.home)
        port = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "fedmtl-sim"\n\n[superlink.fedmtl-sim]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        self.superlink_log = open(self.home / "superlink.log", "w")
        self.superlink = subprocess.Popen(
            [
                "flower-superlink",
                "--insecure",
                "--simulation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            ],
            env=self.env,
            cwd=str(self.app_dir or REPO),  # relative paths in a run config resolve here
            stdout=self.superlink_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(port, self.superlink)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.superlink is not None:
            stop_process_group(self.superlink)
            self.superlink = None
        self.superlink_log.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def app_path(self) -> Path:
        """The directory to submit: the given one, or a fresh slim copy of the repository's
        app (fresh per run, so edits between runs are picked up as `flwr run .` would)."""
        return self.app_dir or stage_app(self.home / "app")

    def run(
        self,
        overrides: dict[str, Any] | None = None,
        *,
        echo: bool = True,
        timeout: float | None = None,
    ) -> Outcome:
        """Run the app once with `overrides` of the run config; wait for it to finish."""
        overrides = dict(overrides or {})
        cfg = parse_run_config(overrides)  # fail fast, before anything is submitted
        results_root = Path(overrides.get("results-dir", cfg.results_dir))
        if not results_root.is_absolute():
            results_root = Path.cwd() / results_root
        overrides["results-dir"] = str(results_root)
        results_dir = results_root / cfg.name
        overrides["state-dir"] = str(client_state_dir(cfg, results_dir))
        results_dir.mkdir(parents=True, exist_ok=True)
        log_path = results_dir / "flower.log"
        (results_dir / "summary.json").unlink(missing_ok=True)
        run_config = self.home / "run-config.toml"
        run_config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in overrides.items()))
        fed_cfg = (
            f"num-supernodes={cfg.num_clients} "
            f"client-resources-num-cpus={toml_value(self.cpus_per_client)} "
            "client-resources-num-gpus=0.0"
        )
        cmd = [
            "flwr",
            "run",
            str(self.app_path()),
            "fedmtl-sim",
            "--stream",
            "--run-config",
            str(run_config),
            "--federation-config",
            fed_cfg,
        ]
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            run_id = _stream(cmd, self.env, log, echo=echo, timeout=timeout)
        flower_status = _flower_status(self.env, run_id)
        summary_path = results_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        status = summary["status"] if summary else "failed"
        wall = time.perf_counter() - t0
        return Outcome(status, summary, results_dir, log_path, wall, flower_status)


def client_state_dir(cfg: RunConfig, results_dir: Path) -> Path:
    """Where the simulated clients keep their private state: `state-dir` when given, else
    `<results-dir>/<run-name>/client-state`, so that `resume = true` finds it. A new run
    (not a resume) under that default starts from empty state, as a new run should."""
    if cfg.state_dir:
        return Path.cwd() / cfg.state_dir
    default = results_dir / "client-state"
    if not cfg.resume:
        shutil.rmtree(default, ignore_errors=True)
    return default


def run_simulation(
    overrides: dict[str, Any] | None = None,
    *,
    app_dir: Path | None = None,
    cpus_per_client: int | float = 1,
    echo: bool = True,
    timeout: float | None = None,
) -> Outcome:
    """Run the app once in the Simulation Engine with `overrides` of the run config."""
    parse_run_config(dict(overrides or {}))  # fail fast, before any process starts
    t0 = time.perf_counter()
    with SimulationEngine(app_dir, cpus_per_client) as engine:
        outcome = engine.run(overrides, echo=echo, timeout=timeout)
    outcome.wall_time_s = time.perf_counter() - t0  # includes the SuperLink's start and stop
    return outcome


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _stream(
    cmd: list[str], env: dict[str, str], log: IO[str], *, echo: bool, timeout: float | None
) -> str:
    """Run `flwr run --stream`, keep its whole output in the log, show our lines; returns
    the run id Flower printed ('' if none)."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    run_id = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if not run_id and (m := re.search(r"(?:started|Created) run (\d+)", line)):
                run_id = m.group(1)
            if echo and ("fedmtl |" in line or "ERROR" in line or "Error" in line):
                print(line.rstrip().split("fedmtl | ", 1)[-1], flush=True)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"simulation did not finish within {timeout:.0f}s")
        proc.wait(timeout=60)
    finally:
        stop_process_group(proc, grace=2.0)
    return run_id


def _flower_status(env: dict[str, str], run_id: str) -> str:
    """The run's status as the SuperLink records it (e.g. 'finished:failed')."""
    cmd = ["flwr", "ls", "fedmtl-sim", "--format", "json"]
    if run_id:
        cmd += ["--run-id", run_id]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[-1].get("status", "unknown")) if runs else "unknown"


def summary_table(summary: dict[str, Any]) -> str:
    """A Markdown table of the final round's test metrics per task."""
    rows = [
        "| task | metric | mean over clients | weighted | std | worst 10 % | last-5 mean |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, metrics in summary.get("per_task", {}).items():
        for name in ("test/accuracy", "test/macro_f1", "test/mae", "test/rmse", "test/r2"):
            if name in metrics:
                m = metrics[name]
                rows.append(
                    f"| {task} | {name[5:]} | {m['mean']:.4f} | {m['weighted']:.4f} | "
                    f"{m['std']:.4f} | {m['worst10']:.4f} | {m['last5_mean']:.4f} |"
                )
    return "\n".join(rows)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """'key=value' strings -> dict. Values of string keys are taken as written (quotes
    optional: `attack=nan` is the attack, not a float); others are read as TOML values."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        for pair in item.split():
            if "=" not in pair:
                raise SystemExit(f"--run-config expects key=value, got '{pair}'")
            key, raw = pair.split("=", 1)
            if key in STRING_KEYS:
                quoted = len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "\"'"
                out[key] = raw[1:-1] if quoted else raw
                continue
            try:
                out[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                out[key] = raw
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="override a run-config key: -c key=value (repeatable)",
    )
    parser.add_argument("--cpus-per-client", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.run_config)
        cfg: RunConfig = parse_run_config(overrides)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"fedmtl: {cfg.name}: {cfg.dataset}, {cfg.num_clients} clients, "
        f"{cfg.num_server_rounds} rounds, algorithm {cfg.algorithm}, weighting {cfg.weighting}"
    )
    outcome = run_simulation(overrides, cpus_per_client=args.cpus_per_client, echo=not args.quiet)
    return report_outcome(outcome)


def report_outcome(outcome: Outcome, where: str = "") -> int:
    """Print the summary table, totals and where the results are; 1 when the run failed."""
    if outcome.summary:
        print()
        print(summary_table(outcome.summary))
        print(
            f"\nbytes up {outcome.summary['bytes_up']:,}  down {outcome.summary['bytes_down']:,}  "
            f"wall time {outcome.wall_time_s:.1f}s"
        )
    print(f"results: {outcome.results_dir}{where}")
    if not outcome.ok:
        err = (outcome.summary or {}).get("error", f"no summary.json; see {outcome.log_path}")
        print(
            f"run FAILED (summary: {outcome.status}, flower: {outcome.flower_status}): {err}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
