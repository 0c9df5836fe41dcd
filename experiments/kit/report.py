"""What every report shares: the "Written by" header, the command that reproduces it, paths
relative to the document, and writing it."""

from __future__ import annotations

import os
import platform
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from common.config import RunConfig
from common.storage import atomic_write_bytes

# Options that change how a command runs, not what it produces.
NOT_REPRODUCING = ("--report-only", "--dry-run")


def command(module: str, argv: Sequence[str]) -> str:
    """The command line that reproduces a study's results (report-only is not part of
    producing them)."""
    args = [a for a in argv if a not in NOT_REPRODUCING]
    return f"python -m {module}" + (f" {shlex.join(args)}" if args else "")


def written_by(cmd: str) -> str:
    """The header line of every generated document."""
    return (
        f"Written by `{cmd}` on {platform.machine()} (Python {platform.python_version()}, "
        f"{os.cpu_count()} CPU cores), {time.strftime('%Y-%m-%d %H:%M')}; do not edit by hand."
    )


def relpath(path: Path, base: Path) -> str:
    """`path` relative to `base` (a document's folder) when below it, else absolute."""
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())
    return path


def training_text(cfg: RunConfig) -> str:
    """The defaults a study relies on, as its Setup prose names them (read from the resolved
    config, never typed): 'partitioner dirichlet α=0.5, batch 32, lr 0.05, hidden 64'."""
    partition = cfg.partitioner + (
        f" α={cfg.dirichlet_alpha:g}" if cfg.partitioner == "dirichlet" else ""
    )
    return f"partitioner {partition}, batch {cfg.batch_size}, lr {cfg.lr:g}, hidden {cfg.hidden}"


def task_counts(cfg: RunConfig) -> list[int]:
    """How many tasks the federation's clients hold under its task plan (distinct, sorted)."""
    from common.datasets import dataset_tasks
    from common.federation import client_tasks

    tasks = dataset_tasks(cfg)
    return sorted(
        {len(client_tasks(cfg, tasks, c, cfg.num_clients)) for c in range(cfg.num_clients)}
    )
