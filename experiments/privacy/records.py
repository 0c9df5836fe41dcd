"""Reading the sweep's per-cell records (privacy.json) for the report: a value over the
seeds of a group of cells, the accuracy drops paired by seed, and mean ± std."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from experiments.kit.stats import mean_std, pm
from experiments.privacy.grid import Cell


def ms(values: Sequence[float | None], digits: int = 3) -> str:
    """mean ± std over seeds; the value alone for one seed, '–' without any."""
    return pm(mean_std(values), digits, bare_single=True)


def _get(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if value is None:
            return None
        value = value.get(part) if isinstance(value, dict) else None
    return value


def group_values(records: dict[Cell, dict[str, Any]], group: tuple, path: str) -> list[Any]:
    return [
        _get(r, path)
        for c, r in sorted(records.items(), key=lambda kv: kv[0].seed)
        if c.group == group
    ]


def accuracy_drops(records: dict[Cell, dict[str, Any]], group: tuple) -> list[float]:
    """Paired by seed: no-DP accuracy minus this group's, in points (same algorithm/secagg)."""
    alg, _, sa = group
    base = {c.seed: r for c, r in records.items() if c.group == (alg, None, sa)}
    out = []
    for c, r in records.items():
        if c.group == group and c.seed in base:
            out.append(100 * (base[c.seed]["utility"]["mean_acc"] - r["utility"]["mean_acc"]))
    return out
