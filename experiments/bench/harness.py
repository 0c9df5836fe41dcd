"""What every section gets: where to write, how big to run, a log line with a clock, and
the machine's description (numbers from a shared 2-core box mean little without it)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.runs import REPO


@dataclass
class BenchContext:
    """`quick` shrinks every section to a smoke test (tests, trying the harness); the numbers
    it gives are not the ones the report's targets are about."""

    out_dir: Path = REPO / "results" / "bench"
    quick: bool = False
    started: float = field(default_factory=time.perf_counter)

    def section_dir(self, name: str) -> Path:
        d = self.out_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def log(self, text: str) -> None:
        print(f"[bench {time.perf_counter() - self.started:7.1f}s] {text}", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return "missing"


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, load, versions: printed at the top of the report."""
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_mem_total_gib(), 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "flwr": _version("flwr"),
        "ray": _version("ray"),
        "numpy": _version("numpy"),
        "commit": git.stdout.strip() or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "executable": sys.executable,
    }
