"""The command line every study shares: `--seeds`, `-c key=value` overrides of its base
config, `--dry-run` (list the cells and which are finished) and `--report-only` (no runs:
the report from the result files on disk); SIGTERM stops a study like Ctrl-C."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable, Iterable, Sequence


def add_study_options(parser: argparse.ArgumentParser, seeds: Sequence[int] | None) -> None:
    """The options every study takes; `seeds` is the default seed list (None: the study
    decides when it is not given)."""
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None if seeds is None else list(seeds)
    )
    parser.add_argument(
        "-c", "--run-config", action="append", default=[], help="key=value over the base config"
    )
    add_modes(parser)


def add_modes(parser: argparse.ArgumentParser) -> None:
    """--dry-run and --report-only."""
    parser.add_argument("--dry-run", action="store_true", help="list the cells and what is done")
    parser.add_argument("--report-only", action="store_true", help="no runs: report from disk")


def dry_run(
    cells: Iterable[tuple[str, str, bool | str]], out: Callable[[str], None] = print
) -> int:
    """One line per cell: done/todo (or a state of the study's own, e.g. 'n/a'), its kind,
    its name; (kind, name, finished or state) each."""
    for kind, name, state in cells:
        label = state if isinstance(state, str) else ("done" if state else "todo")
        out(f"{label:<4}  {kind:<12} {name}")
    return 0


def stop_on_sigterm() -> None:
    """SIGTERM ends a study like Ctrl-C: the SuperLink and workers are stopped and the time
    so far is recorded (the `finally` blocks run)."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
