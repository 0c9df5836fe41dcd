"""What every report shares: the "Written by" header, the command that reproduces it, paths
relative to the document, and writing it."""

from __future__ import annotations

import os
import platform
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

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
