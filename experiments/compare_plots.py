"""Plots of a comparison grid, from plain numbers (the report module gathers them).

Every function writes one PNG atomically and returns its path; matplotlib runs headless.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# {row label: {task: (rounds, mean over seeds of the client-mean test metric)}}
Curves = Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    _plt().close(fig)
    tmp.replace(path)
    return path


def _ylabel(metric: str) -> str:
    return f"test {metric}" + (" (lower is better)" if metric == "mae" else "")


def plot_rounds(
    curves: Curves, tasks: Sequence[str], metrics: Mapping[str, str], title: str, path: Path
) -> Path:
    """Per task: the client-mean test metric over rounds, one line per row of the table."""
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        for label, by_task in curves.items():
            if task in by_task:
                xs, ys = by_task[task]
                ax.plot(xs, ys, label=label, lw=1.3)
        ax.set_title(task)
        ax.set_xlabel("round")
        ax.set_ylabel(_ylabel(metrics[task]))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: client-mean test metric per round (mean over seeds)")
    return _save(fig, path)


def plot_clients(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    tasks: Sequence[str],
    metrics: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Per task: the final-round test metric of every client (all seeds), as a box plot with
    the individual clients on top: the spread that a mean over clients hides."""
    plt = _plt()
    labels = list(values)
    fig, axes = plt.subplots(
        1,
        len(tasks),
        figsize=(max(3.6, 0.55 * len(labels)) * len(tasks), 3.6),
        squeeze=False,
        layout="constrained",
    )
    rng = np.random.default_rng(0)
    for ax, task in zip(axes[0], tasks, strict=True):
        data = [list(values[label].get(task, [])) for label in labels]
        positions = list(range(1, len(labels) + 1))
        ax.boxplot(
            [d if d else [math.nan] for d in data],
            positions=positions,
            widths=0.6,
            showfliers=False,
        )
        for pos, d in zip(positions, data, strict=True):
            if d:
                ax.scatter(
                    pos + rng.uniform(-0.18, 0.18, len(d)), d, s=8, alpha=0.6, color="tab:blue"
                )
        ax.set_xticks(positions, labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(task)
        ax.set_ylabel(_ylabel(metrics[task]))
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{title}: per-client final-round test metric (all seeds)")
    return _save(fig, path)


def plot_delta_m(deltas: Mapping[str, Mapping[str, tuple[float, float]]], path: Path) -> Path:
    """Δm (%) vs local single-task per row, one panel per setting (mean ± std over seeds;
    lower is better)."""
    plt = _plt()
    settings = list(deltas)
    fig, axes = plt.subplots(
        1, len(settings), figsize=(3.3 * len(settings), 3.6), squeeze=False, layout="constrained"
    )
    for ax, setting in zip(axes[0], settings, strict=True):
        labels = list(deltas[setting])
        means = [deltas[setting][k][0] for k in labels]
        stds = [deltas[setting][k][1] for k in labels]
        colors = ["tab:green" if m < 0 else "tab:red" for m in means]
        ax.barh(range(len(labels)), means, xerr=stds, color=colors, alpha=0.75)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(setting, fontsize=9)
        ax.set_xlabel("Δm % (lower is better)")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Δm vs local single-task (mean ± std over seeds)")
    return _save(fig, path)


def plot_transfer(
    table: Mapping[str, Mapping[str, Mapping[float, tuple[float, float]]]],
    metrics: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Per task: the new clients' test metric against the fraction of their training data,
    frozen global encoder vs from scratch. table: {task: {arm: {fraction: (mean, std)}}}."""
    plt = _plt()
    tasks = list(table)
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tasks, strict=True):
        for arm, by_fraction in table[task].items():
            fr = sorted(by_fraction)
            ax.errorbar(
                [100 * f for f in fr],
                [by_fraction[f][0] for f in fr],
                yerr=[by_fraction[f][1] for f in fr],
                marker="o",
                capsize=3,
                label=arm,
            )
        ticks = sorted({100 * f for arm in table[task].values() for f in arm})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("% of the new client's training data")
        ax.set_ylabel(_ylabel(metrics[task]))
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
