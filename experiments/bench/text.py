"""Formatting shared by the benchmark report's sections: numbers for tables, and Flower's
own intervals read from the installed flwr (the timings are explained with them)."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from experiments.kit.tables import md_table

# Intervals in Flower's own code that the timings below are explained with. Read from the
# installed flwr, not typed, so the text follows the Flower that ran; a test checks that each
# is still found. name -> (module, object in it, pattern whose group 1 is the seconds).
FLOWER_FACTS: dict[str, tuple[str, str, str]] = {
    "vce_tick_s": (
        "flwr.server.superlink.fleet.vce.vce_api",
        "add_messages_to_queue",
        r"f_stop\.wait\(([\d.]+)\)",
    ),
    "inmemory_pull_s": (
        "flwr.superlink.grid.inmemory_grid",
        "InMemoryGrid.__init__",
        r"pull_interval: float = ([\d.]+)",
    ),
    "superexec_poll_s": (
        "flwr.supercore.superexec.run_superexec",
        "",
        r"_DEFAULT_TASK_POLL_INTERVAL_SECONDS = ([\d.]+)",
    ),
    "supernode_idle_poll_s": (
        "flwr.supernode.start_client_internal",
        "",
        r"If no message was received, wait for a while\s+time\.sleep\(([\d.]+)\)",
    ),
    "http_grid_pull_s": (
        "flwr.superlink.grid.http_grid",
        "HttpGrid.send_and_receive",
        r"time\.sleep\(([\d.]+)\)",
    ),
}


@cache
def flower_facts() -> dict[str, float | None]:
    """Each FLOWER_FACTS interval in seconds, or None where the source no longer matches."""
    out: dict[str, float | None] = {}
    for name, (module, qualname, pattern) in FLOWER_FACTS.items():
        try:
            obj: Any = importlib.import_module(module)
            for part in filter(None, qualname.split(".")):
                obj = getattr(obj, part)
            match = re.search(pattern, inspect.getsource(obj))
        except (ImportError, AttributeError, OSError, TypeError):
            match = None
        out[name] = float(match.group(1)) if match else None
    return out


def fact(name: str) -> str:
    """A FLOWER_FACTS interval for the text ('?' when not found)."""
    value = flower_facts()[name]
    return "?" if value is None else f"{value:g}"


def federation_option(federation: str, key: str) -> str:
    """One option's value in a federation config string ('?' when absent)."""
    match = re.search(rf"(?:^| ){re.escape(key)}=(\S+)", federation or "")
    return match.group(1) if match else "?"


def federation_changes(federation: str, baseline: str) -> list[str]:
    """The options of `federation` that are not in `baseline`, as `key=value`."""
    base = set((baseline or "").split())
    return [x for x in (federation or "").split() if x not in base]


def fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    """A number for a table: fixed digits, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table and the blank line after it."""
    return [*md_table(header, rows), ""]


def span(pair: Sequence[float] | None) -> str:
    return f" ({fmt(pair[0], 2)}–{fmt(pair[1], 2)})" if pair else ""


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
