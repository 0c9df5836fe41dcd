"""One run of the app on a SuperLink, done the same way by the simulation engine, the local
deployment and the benchmarks: a slim copy of the app, its run config as a TOML file,
`flwr run --stream` under a watchdog, and the outcome read from `summary.json` and from the
SuperLink (`flwr run` exits 0 even when the run failed). Also what both command lines share:
`-c key=value` overrides and the summary they print."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import STRING_KEYS, RunConfig, parse_run_config
from common.metric_names import HEADLINE_METRICS
from deploy.processes import stop_process_group
from server.failures import RUN_FAILED, one_line, strip_ansi

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".state"
APP_PACKAGES = ("client", "common", "server")  # all that the ServerApp and ClientApp import
APP_FILES = ("pyproject.toml", "README.md", ".gitignore")
RUN_ID = re.compile(r"(?:started|Created) run (\d+)")

Lines = list[tuple[float, str]]  # (seconds since submission, line)


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


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_flwr_config(
    home: Path, connection: str, address: str, root_certificates: str | None
) -> Path:
    """`$FLWR_HOME/config.toml` with one connection, the default (what `flwr run/ls/stop
    <connection>` dial): insecure without `root_certificates`, else trusting that CA (its
    path made absolute: the CLI reads it from wherever it runs)."""
    table = [f"[superlink.{connection}]", f"address = {json.dumps(address)}"]
    if root_certificates is None:
        table.append("insecure = true")
    else:
        table.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{connection}"\n\n' + "\n".join(table) + "\n")
    return path


def write_run_config(path: Path, overrides: dict[str, Any]) -> Path:
    """The file `flwr run --run-config` reads: one TOML line per key."""
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in overrides.items()))
    return path


def flwr_run_command(
    app: Path, connection: str, run_config: Path, federation: str | None = None
) -> list[str]:
    cmd = ["flwr", "run", str(app), connection, "--stream", "--run-config", str(run_config)]
    return cmd if federation is None else [*cmd, "--federation-config", federation]


def prepare_results(overrides: dict[str, Any]) -> tuple[dict[str, Any], RunConfig, Path]:
    """Validate `overrides` before anything is submitted; returns them with an absolute
    `results-dir` (the ServerApp runs in another process and directory), the parsed config,
    and the run's results directory, created, without a `summary.json` of an earlier run
    (whose status would be read as this run's)."""
    overrides = dict(overrides)
    cfg = parse_run_config(overrides)
    root = Path(overrides.get("results-dir", cfg.results_dir))
    overrides["results-dir"] = str(root if root.is_absolute() else Path.cwd() / root)
    results_dir = Path(overrides["results-dir"]) / cfg.name
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.json").unlink(missing_ok=True)
    return overrides, cfg, results_dir


@dataclass
class Streamed:
    """What one `flwr run --stream` printed: the run id ('' if none), the seconds from
    submission to the CLI's exit, and every line with its time since submission."""

    run_id: str
    wall_s: float
    lines: Lines = field(default_factory=list)
    stopped: bool = False  # `stop_when` ended the stream
    expired: bool = False  # the watchdog ended it after `timeout`


def stream_run(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    timeout: float | None,
    echo: bool = False,
    stop_when: Callable[[Lines], bool] | None = None,
    timestamps: bool = False,
) -> Streamed:
    """Run `flwr run --stream`: the whole output to `log_path` (each line prefixed with its
    time when `timestamps`), the app's own lines and errors to the terminal when `echo`. A
    watchdog stops it after `timeout` even when it prints nothing (a stalled round), and it
    is stopped as soon as `stop_when(lines)` holds. The run itself lives on in the SuperLink
    in both cases: the caller decides whether to `flwr stop` it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    out = Streamed("", 0.0)
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        stop_process_group(proc, grace=2.0)

    timer = threading.Timer(timeout, watchdog) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        assert proc.stdout is not None
        with open(log_path, "w", buffering=1) as log:
            for line in proc.stdout:
                now = time.perf_counter() - t0
                log.write(f"[{now:9.3f}] {line}" if timestamps else line)
                out.lines.append((now, line.rstrip()))
                if not out.run_id and (m := RUN_ID.search(line)):
                    out.run_id = m.group(1)
                if echo and (shown := echoed(line)) is not None:
                    print(shown, flush=True)
                if stop_when is not None and stop_when(out.lines):
                    out.stopped = True
                    break
        if not out.stopped:
            proc.wait(timeout=60)
    finally:
        if timer is not None:
            timer.cancel()
        stop_process_group(proc, grace=2.0)
    out.wall_s = time.perf_counter() - t0
    out.expired = expired.is_set()
    return out


def echoed(line: str) -> str | None:
    """What the terminal shows of a streamed line: the ServerApp's own `fedmtl |` lines
    (rounds, warnings), without Flower's prefix. Not Ray's and Flower's tracebacks of client
    errors (the ServerApp names each distinct one, with its clients), nor the ServerApp's
    'run failed' line (`report_outcome` prints the failure once, at the end); the full log
    is in flower.log."""
    if RUN_FAILED in line or "fedmtl | " not in line:
        return None
    return strip_ansi(line.rstrip().split("fedmtl | ", 1)[1])


STATUS_TRIES = 3


def flower_status(
    env: dict[str, str], connection: str, run_id: str = "", timeout: float = 120.0
) -> str:
    """A run's status as the SuperLink records it (e.g. 'finished:failed'); the latest run's
    when `run_id` is empty; 'unknown' when the SuperLink does not say.

    The query is asked up to `STATUS_TRIES` times: on a machine loaded by many runs the
    `flwr` CLI alone can take most of a minute to start, and a run that finished must not
    be counted as failed because the question about it timed out."""
    cmd = ["flwr", "ls", connection, "--format", "json"]
    if run_id:
        cmd += ["--run-id", run_id]
    for _ in range(STATUS_TRIES):
        try:
            out = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            continue
        try:
            runs = json.loads(out.stdout).get("runs", [])
        except json.JSONDecodeError:
            return "unknown"
        return str(runs[-1].get("status", "unknown")) if runs else "unknown"
    return "unknown"


@dataclass
class Outcome:
    """How a run ended, by the ServerApp's `summary.json` and by the SuperLink."""

    status: str
    summary: dict[str, Any] | None
    results_dir: Path
    log_path: Path
    wall_time_s: float
    flower_status: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.flower_status.startswith("finished:completed")


def read_outcome(results_dir: Path, log_path: Path, wall_s: float, flower: str) -> Outcome:
    """The outcome of the run that wrote `results_dir` ('failed' without a summary)."""
    path = results_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    status = summary["status"] if summary else "failed"
    return Outcome(status, summary, results_dir, log_path, wall_s, flower)


# --- what both command lines share ---


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """'key=value' strings -> dict. Values of string keys are taken as written (quotes
    optional: `attack=nan` is the attack, not a float); others are read as TOML values."""
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


METRICS = (
    "test/accuracy",
    "test/macro_f1",
    "test/mae",
    "test/rmse",
    "test/r2",
    "test/pixel_accuracy",
    "test/miou",
    "test/abs_rel",
)
HEADLINES = tuple(f"test/{m}" for m in HEADLINE_METRICS)  # one row per task, compact table


def summary_table(summary: dict[str, Any], compact: bool = False) -> str:
    """A Markdown table of the final round's test metrics per task (`compact`: only the
    metric a task is judged by). `test examples` is the number of test examples behind the
    task's mean, over the clients holding it: small per-client test sets move per-client
    accuracy in coarse steps."""
    rows = [
        "| task | metric | mean over clients | weighted | std | worst 10 % | last-5 mean "
        "| clients | test examples |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, metrics in summary.get("per_task", {}).items():
        for name in HEADLINES if compact else METRICS:
            if name in metrics:
                m = metrics[name]
                rows.append(
                    f"| {task} | {name[5:]} | {m['mean']:.4f} | {m['weighted']:.4f} | "
                    f"{m['std']:.4f} | {m['worst10']:.4f} | {m['last5_mean']:.4f} | "
                    f"{m.get('clients', '')} | {_examples(m)} |"
                )
    return "\n".join(rows)


def _examples(stats: dict[str, Any]) -> str:
    """'412 (min 18 per client)' from a per-task stats entry ('' from an older summary)."""
    if "examples" not in stats:
        return ""
    return f"{stats['examples']:,} (min {stats['min_examples']} per client)"


def failure_reason(outcome: Outcome) -> str:
    """Why the run failed, in one line: summary.json's error (each distinct client error
    once, with its clients), else the last error line of flower.log."""
    if outcome.summary and outcome.summary.get("error"):
        return str(outcome.summary["error"])
    last = last_error_line(outcome.log_path)
    return (last + "; " if last else "") + f"no summary.json; see {outcome.log_path}"


def last_error_line(log_path: Path) -> str:
    """The last 'SomeError: message' line of a log, cleaned of colour codes ('' if none)."""
    if not log_path.exists():
        return ""
    found = ""
    for line in log_path.read_text(errors="replace").splitlines():
        line = strip_ansi(line).strip()
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failed)\b.*: \S", line):
            found = line
    return one_line(found)


def report_outcome(outcome: Outcome, where: str = "", *, quiet: bool = False) -> int:
    """Print the summary table, totals and where the results are, or, when the run failed,
    why (one line) and where the full log is; 1 when the run failed. `quiet`: one row per
    task in the table."""
    has_rows = bool(outcome.summary and outcome.summary.get("per_task"))
    if outcome.summary and has_rows:
        print()
        print(summary_table(outcome.summary, compact=quiet))
        print(
            f"\nbytes up {outcome.summary['bytes_up']:,}  down {outcome.summary['bytes_down']:,}  "
            f"wall time {outcome.wall_time_s:.1f}s"
        )
    print(f"results: {outcome.results_dir}{where}")
    if not outcome.ok:
        print(
            f"run FAILED (summary: {outcome.status}, flower: {outcome.flower_status}): "
            f"{failure_reason(outcome)}",
            file=sys.stderr,
        )
        print(f"full log: {outcome.log_path}", file=sys.stderr)
        return 1
    return 0
