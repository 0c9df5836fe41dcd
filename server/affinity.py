"""The server's side of `task-affinity`: checking the clients' affinity entries, averaging
them into task × task matrices, and drawing them.

A client sends `affinity/<cos|tag>/<i>/<j>` for ordered pairs of its own tasks and
`affinity/batches` (`client.affinity`). Per round, each pair's value is the mean over the
clients that hold both tasks, weighted by their batch counts; the run's matrix weighs every
round's contribution the same way. A pair that no client holds has no value (None): the
report says so rather than guessing. Matrices are `{kind: {i: {j: value}}}`, with the row
the source task and the column the task it acts on (TAG's Z_{i→j}).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.records import AFFINITY, AFFINITY_BATCHES
from server.figures import pyplot, save_figure

KINDS = ("cos", "tag")

Matrix = dict[str, dict[str, dict[str, float | None]]]


def affinity_problem(record: Mapping[str, Any], tasks: Sequence[str]) -> str | None:
    """Affinity entries name two different tasks of the client and hold finite numbers
    (cosines in [−1, 1]), with a positive integer batch count when there are any."""
    entries = {k: v for k, v in record.items() if k.startswith(AFFINITY) and k != AFFINITY_BATCHES}
    if not entries and AFFINITY_BATCHES not in record:
        return None
    batches = record.get(AFFINITY_BATCHES)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        return f"'{AFFINITY_BATCHES}' is {batches!r}, not an integer >= 1"
    for key, value in entries.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[1] not in KINDS:
            return f"unexpected entry '{key}' (expected affinity/<cos|tag>/<task>/<task>)"
        if parts[2] not in tasks or parts[3] not in tasks or parts[2] == parts[3]:
            return f"'{key}': not a pair of two of the client's tasks {list(tasks)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'{key}' is {value!r}, not a number"
        if not math.isfinite(value) or (parts[1] == "cos" and abs(value) > 1 + 1e-6):
            return f"'{key}' is {value}, out of range"
    return None


def _sums(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[float]]:
    """(kind, i, j) -> [Σ batches × value, Σ batches]."""
    sums: dict[tuple[str, str, str], list[float]] = {}
    for record in records:
        weight = float(record.get(AFFINITY_BATCHES, 0))
        for key, value in record.items():
            if key.startswith(AFFINITY) and key != AFFINITY_BATCHES:
                _, kind, i, j = key.split("/")
                acc = sums.setdefault((kind, i, j), [0.0, 0.0])
                acc[0] += weight * float(value)
                acc[1] += weight
    return sums


def _matrix(sums: Mapping[tuple[str, str, str], Sequence[float]], tasks: list[str]) -> Matrix:
    out: Matrix = {}
    for kind in KINDS:
        out[kind] = {
            i: {
                j: (sums[(kind, i, j)][0] / sums[(kind, i, j)][1])
                if (kind, i, j) in sums and sums[(kind, i, j)][1] > 0
                else None
                for j in tasks
                if j != i
            }
            for i in tasks
        }
    return out


def round_affinity(records: Iterable[Mapping[str, Any]], tasks: Sequence[str]) -> dict | None:
    """This round's matrices and per-pair batch counts from the accepted replies' records,
    over the tasks (in `tasks` order) that some client measured against another."""
    sums = _sums(records)
    if not sums:
        return None
    measured = {t for _, i, j in sums for t in (i, j)}
    tasks = [t for t in tasks if t in measured]
    matrices: dict[str, Any] = _matrix(sums, list(tasks))
    matrices["batches"] = {
        i: {j: sums.get(("cos", i, j), [0.0, 0.0])[1] for j in tasks if j != i} for i in tasks
    }
    return matrices


def run_affinity(rows: Iterable[Mapping[str, Any]]) -> dict | None:
    """The run's matrices: every round's pair values weighted by that round's batch counts."""
    sums: dict[tuple[str, str, str], list[float]] = {}
    tasks: list[str] = []
    for row in rows:
        found = row.get("affinity")
        if not found:
            continue
        for i, cols in found["batches"].items():
            tasks += [t for t in (i, *cols) if t not in tasks]
            for j, n in cols.items():
                for kind in KINDS:
                    value = found[kind][i][j]
                    if value is not None and n > 0:
                        acc = sums.setdefault((kind, i, j), [0.0, 0.0])
                        acc[0] += n * value
                        acc[1] += n
    if not sums:
        return None
    return _matrix(sums, tasks)


def plot_affinity(matrices: Mapping[str, Any], path: Path, title: str = "") -> None:
    """One heatmap per kind (rows: source task, columns: the task it acts on)."""
    import numpy as np

    plt = pyplot()

    tasks = list(matrices["cos"])
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.4 * len(tasks), 2 + 0.7 * len(tasks)))
    for ax, kind, label in zip(
        axes, KINDS, ("gradient cosine", "TAG lookahead Z(i→j)"), strict=True
    ):
        grid = np.full((len(tasks), len(tasks)), np.nan)
        for a, i in enumerate(tasks):
            for b, j in enumerate(tasks):
                value = matrices[kind][i].get(j)
                if value is not None:
                    grid[a, b] = value
        bound = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="coolwarm", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        ax.set_xlabel("acted on")
        ax.set_ylabel("source")
        ax.set_title(label)
        for a in range(len(tasks)):
            for b in range(len(tasks)):
                if np.isfinite(grid[a, b]):
                    ax.text(b, a, f"{grid[a, b]:.2g}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, path, title)
