"""Which tasks to train together: a report from a run's measured inter-task affinity.

    python -m experiments.task_grouping results/<run> [--kind tag|cos] [--groups 2]

reads the run's affinity matrix (`summary.json`, written when the run had
`task-affinity = true`) and chooses at most `--groups` task groups the way TAG does (Fifty et
al., NeurIPS 2021): a task's score in a group is the mean affinity of the group's other
tasks onto it; a set of groups is worth the mean over tasks of each task's best score in any
group that holds it; the best set that covers every task wins (exhaustive search). A task
on its own scores 0 (no transfer), so a task that every partner hurts is suggested alone —
TAG's notebook instead never trains a task alone. A group with a pair that no client held
(no measurement) is not considered. Writes `task_grouping.md` next to the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ALONE = 0.0  # the score of a task trained on its own: no transfer either way

Matrix = Mapping[str, Mapping[str, float | None]]


def group_scores(matrix: Matrix, group: Sequence[str]) -> dict[str, float] | None:
    """Each task's mean affinity from the group's other tasks; None if a pair is unmeasured."""
    if len(group) == 1:
        return {group[0]: ALONE}
    scores = {}
    for t in group:
        values = [matrix[u].get(t) for u in group if u != t]
        if any(v is None for v in values):
            return None
        scores[t] = sum(values) / len(values)  # type: ignore[arg-type]
    return scores


def choose_groups(
    matrix: Matrix, budget: int
) -> tuple[list[tuple[str, ...]], float, dict[str, tuple[str, ...]]]:
    """The best collection of at most `budget` groups covering every task: (groups, value,
    the group that serves each task). Ties go to fewer groups, then smaller ones."""
    tasks = sorted(matrix)
    if len(tasks) > 10:
        raise ValueError(f"{len(tasks)} tasks: the exhaustive search is for at most 10")
    candidates = {}
    for size in range(1, len(tasks) + 1):
        for group in itertools.combinations(tasks, size):
            scores = group_scores(matrix, group)
            if scores is not None:
                candidates[group] = scores
    best: tuple[float, int, int, tuple] | None = None
    for k in range(1, budget + 1):
        for combo in itertools.combinations(candidates, k):
            if set().union(*combo) != set(tasks):
                continue
            value = sum(max(candidates[g][t] for g in combo if t in g) for t in tasks) / len(tasks)
            key = (-value, k, sum(len(g) for g in combo), combo)
            if best is None or key < best:
                best = key
    if best is None:
        raise ValueError("no collection of groups covers every task")
    combo = list(best[3])
    serving = {
        t: max((g for g in combo if t in g), key=lambda g: (candidates[g][t], -len(g)))
        for t in tasks
    }
    return combo, -best[0], serving


def render(run: Path, summary: dict, kind: str, budget: int) -> str:
    matrix = summary["affinity"][kind]
    tasks = sorted(matrix)
    groups, value, serving = choose_groups(matrix, budget)
    label = "TAG lookahead affinity Z(i→j)" if kind == "tag" else "gradient cosine similarity"
    lines = [
        f"# Task grouping for `{run.name}`",
        "",
        f"Written by `python -m experiments.task_grouping {run} --kind {kind} --groups "
        f"{budget}` from the run's `summary.json`; do not edit by hand.",
        "",
        f"## {label} (rows: source, columns: the task it acts on)",
        "",
        "| source \\ on | " + " | ".join(tasks) + " |",
        "| --- |" + " --- |" * len(tasks),
    ]
    for i in tasks:
        cells = [
            "—" if i == j else ("n/a" if matrix[i].get(j) is None else f"{matrix[i][j]:.3g}")
            for j in tasks
        ]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Suggested groups (at most {budget})",
        "",
        "| group | tasks it serves | their scores in it |",
        "| --- | --- | --- |",
    ]
    for g in groups:
        served = [t for t in tasks if serving[t] == g]
        scores = group_scores(matrix, g) or {}
        lines.append(
            f"| {', '.join(g)} | {', '.join(served) or '—'} | "
            + ", ".join(f"{t}: {scores[t]:.3g}" for t in served)
            + " |"
        )
    lines += [
        "",
        f"Mean over tasks of each task's best score: {value:.3g} (a task alone scores "
        f"{ALONE:g}). `n/a`: no client held both tasks, so groups with that pair were not "
        "considered.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run's results folder (holds summary.json)")
    parser.add_argument("--kind", choices=("tag", "cos"), default="tag")
    parser.add_argument("--groups", type=int, default=2, help="at most this many groups")
    args = parser.parse_args(argv)
    path = args.run / "summary.json"
    if not path.exists():
        parser.error(f"{path} does not exist: give a run's results folder")
    summary = json.loads(path.read_text())
    if not summary.get("affinity"):
        parser.error(f"{path} holds no affinity: run with -c task-affinity=true")
    if args.groups < 1:
        parser.error(f"--groups must be at least 1, got {args.groups}")
    text = render(args.run, summary, args.kind, args.groups)
    out = args.run / "task_grouping.md"
    out.write_text(text, encoding="utf-8")
    print(text + f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
