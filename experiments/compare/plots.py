"""Plots of a comparison grid: per-task metric over rounds, per-client spread, Δm per row,
transfer to new clients. Each writes one PNG (kit.plots) and returns its path."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common.metric_names import metric_higher_is_better
from experiments.compare.collect import Aggregate, Collected, RowKey, row_key
from experiments.compare.grid import LABELS, METHODS
from experiments.compare.references import SINGLE_TASK
from experiments.compare.tables import (
    ordered_keys,
    row_label,
    setting_tasks,
    setting_title,
    transfer_summary,
)
from experiments.kit import plots
from experiments.kit.scores import task_headlines
from server.results import read_metrics

# {row label: {task: (rounds, mean over seeds of the client-mean test metric)}}
Curves = Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]]


def _ylabel(metric: str) -> str:
    return f"test {metric}" + ("" if metric_higher_is_better(metric) else " (lower is better)")


def plot_rounds(
    curves: Curves, tasks: Sequence[str], metrics: Mapping[str, str], title: str, path: Path
) -> Path:
    """Per task: the client-mean test metric over rounds, one line per row of the table."""
    plt = plots.pyplot()
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
    return plots.save(fig, path, dpi=90, tight=False, bbox=True)


def plot_clients(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    tasks: Sequence[str],
    metrics: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Per task: the final-round test metric of every client (all seeds), as a box plot with
    the individual clients on top: the spread that a mean over clients hides."""
    plt = plots.pyplot()
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
    return plots.save(fig, path, dpi=90, tight=False, bbox=True)


def plot_delta_m(deltas: Mapping[str, Mapping[str, tuple[float, float]]], path: Path) -> Path:
    """Δm (%) vs local single-task per row, one panel per setting (mean ± std over seeds;
    lower is better)."""
    plt = plots.pyplot()
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
    return plots.save(fig, path, dpi=90, tight=False, bbox=True)


def plot_transfer(
    table: Mapping[str, Mapping[str, Mapping[float, tuple[float, float]]]],
    metrics: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """Per task: the new clients' test metric against the fraction of their training data,
    frozen global encoder vs from scratch. table: {task: {arm: {fraction: (mean, std)}}}."""
    plt = plots.pyplot()
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
    return plots.save(fig, path, dpi=90, tight=False, bbox=True)


# ---------------------------------------------------------------- the grid's figures


def round_curves(
    collected: Collected, setting: str
) -> tuple[dict[str, dict[str, tuple[list[int], list[float]]]], dict[str, str]]:
    """Per row: client-mean test headline per round, averaged over seeds."""
    grid = collected.grid
    acc: dict[RowKey, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    metrics: dict[str, str] = {}
    for cell, summary in collected.summaries.items():
        if cell.setting.label != setting:
            continue
        heads = task_headlines(summary)
        metrics.update(heads)
        for r in read_metrics(grid.cell_dir(cell) / "metrics.jsonl"):
            for task, m in r.get("per_task", {}).items():
                if task in heads:
                    acc[row_key(cell)][task][r["round"]].append(m[f"test/{heads[task]}"]["mean"])
    order = {m: i for i, m in enumerate(METHODS)}
    curves = {}
    for key in sorted(acc, key=lambda k: (order.get(k[1], 99), k[2], k[3])):
        curves[row_label(grid, key)] = {
            t: (sorted(by_round), [sum(v) / len(v) for _, v in sorted(by_round.items())])
            for t, by_round in acc[key].items()
        }
    return curves, metrics


def client_values(collected: Collected, setting: str) -> dict[str, dict[str, list[float]]]:
    out: dict[RowKey, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cell, summary in collected.summaries.items():
        if cell.setting.label != setting:
            continue
        heads = task_headlines(summary)
        for tasks in summary["per_client"].values():
            for task, m in tasks.items():
                if task in heads:
                    out[row_key(cell)][task].append(m[f"test/{heads[task]}"])
    order = {m: i for i, m in enumerate(METHODS)}
    return {
        row_label(collected.grid, k): dict(out[k])
        for k in sorted(out, key=lambda k: (order.get(k[1], 99), k[2], k[3]))
    }


def write_plots(
    collected: Collected, agg: dict[RowKey, Aggregate], plots_dir: Path
) -> dict[str, Path]:
    grid = collected.grid
    paths: dict[str, Path] = {}
    deltas: dict[str, dict[str, tuple[float, float]]] = {}
    for s in grid.settings:
        curves, metrics = round_curves(collected, s.label)
        if not curves:
            continue
        tasks = [t for t in setting_tasks(grid, s.label, agg) if t in metrics]
        title = setting_title(grid, s.label)
        paths[f"{s.label}-rounds"] = plot_rounds(
            curves, tasks, metrics, title, plots_dir / f"{s.label}-rounds.png"
        )
        paths[f"{s.label}-clients"] = plot_clients(
            client_values(collected, s.label),
            tasks,
            metrics,
            title,
            plots_dir / f"{s.label}-clients.png",
        )
        deltas[s.label] = {
            row_label(grid, k): agg[k].cell["delta_m"][:2]
            for k in ordered_keys(agg, s.label)
            if agg[k].cell["delta_m"][2] and k[1] != SINGLE_TASK
        }
    if any(deltas.values()):
        paths["delta_m"] = plot_delta_m(
            {k: v for k, v in deltas.items() if v}, plots_dir / "delta_m.png"
        )
    tsum = transfer_summary(collected)
    for alg, tasks in tsum.items():
        table = {
            t: {"frozen global encoder": v["frozen"], "from scratch": v["scratch"]}
            for t, v in tasks.items()
        }
        table = {
            t: {arm: {f: ms[:2] for f, ms in d.items()} for arm, d in arms.items()}
            for t, arms in table.items()
        }
        metrics = {t: v["metric"] for t, v in tasks.items()}
        where = grid.transfer.setting if grid.transfer else ""
        title = f"New clients on {where}, {LABELS.get(alg, alg)} encoder (mean ± std over seeds)"
        paths[f"transfer-{alg}"] = plot_transfer(
            table, metrics, title, plots_dir / f"transfer-{alg}.png"
        )
    return paths
