"""The comparison's Markdown tables: per setting (final-round metric per task, Δm, parameters,
bytes), per task in detail, parameter efficiency, and transfer to new clients."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import parse_run_config
from common.datasets import dataset_tasks
from common.metric_names import HEADLINE_METRICS, metric_higher_is_better
from experiments.compare.collect import Aggregate, Collected, RowKey
from experiments.compare.grid import LABELS, METHODS, Grid
from experiments.compare.references import CENTRALIZED, CENTRALIZED_TUNED, SINGLE_TASK
from experiments.kit.stats import mean_std, pm
from experiments.kit.tables import md_header, md_row
from server.results import LAST_K

# Column labels of the headline metrics.
METRIC_LABELS = {"accuracy": "acc %", "mae": "MAE", "miou": "mIoU", "abs_rel": "abs-rel"}


def fmt(ms: tuple[float, float, int] | None, metric: str = "", scale: float = 1.0) -> str:
    """'mean ± std' (accuracy in %, other metrics with digits by magnitude); '—' if none."""
    if ms is None:
        return "—"
    if metric in ("accuracy", "macro_f1") and scale == 1.0:
        scale = 100.0
    m = ms[0] * scale
    digits = 1 if metric in ("accuracy", "macro_f1", "delta") or abs(m) >= 10 else 3
    if abs(m) >= 100 and metric not in ("accuracy", "delta"):
        digits = 0
    return pm(ms, digits, scale=scale, empty="—")


def pts(diff: float) -> str:
    """A difference in accuracy points for the targets ('—' when a side is missing)."""
    return f"{diff:+.1f} points" if math.isfinite(diff) else "— (missing rows)"


def row_label(grid: Grid, key: RowKey) -> str:
    _, method, weighting, strategy = key
    label = LABELS.get(method, method)
    extra = []
    if len(grid.weightings) > 1 and method != SINGLE_TASK:
        extra.append(weighting)
    if len(grid.strategies) > 1 and strategy != "none":
        extra.append(strategy)
    return label + (f" ({', '.join(extra)})" if extra else "")


def ordered_keys(agg: dict[RowKey, Aggregate], setting: str) -> list[RowKey]:
    keys = [k for k in agg if k[0] == setting]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(keys, key=lambda k: (order.get(k[1], 99), k[2], k[3]))


def setting_tasks(grid: Grid, setting: str, agg: dict[RowKey, Aggregate]) -> list[str]:
    seen = {t for k, a in agg.items() if k[0] == setting for t in a.tasks}
    s = next(x for x in grid.settings if x.label == setting)
    order = dataset_tasks(parse_run_config({**grid.common, **s.config}))
    return [t for t in order if t in seen]


def setting_title(grid: Grid, setting: str) -> str:
    s = next(x for x in grid.settings if x.label == setting)
    cfg = parse_run_config({**grid.common, **s.config})
    part = f"Dirichlet α = {s.alpha:g}" if s.alpha is not None else f"{cfg.partitioner} partition"
    return f"{cfg.dataset} — {part}, {cfg.num_clients} clients"


def main_table(grid: Grid, agg: dict[RowKey, Aggregate], setting: str) -> list[str]:
    """Final-round test metric (client mean) per task, mean accuracy, Δm, parameters and
    bytes per round; mean ± std over seeds."""
    tasks = setting_tasks(grid, setting, agg)
    metrics = {
        t: next(a.tasks[t]["metric"] for k, a in agg.items() if k[0] == setting and t in a.tasks)
        for t in tasks
    }
    head = [f"{t} ({METRIC_LABELS.get(metrics[t], metrics[t])})" for t in tasks]
    lines = md_header(
        "method",
        *head,
        "mean cls acc %",
        "Δm % ↓",
        "params/client shared · private · total",
        "KiB/round ↑ · ↓",
        "seeds",
    )
    for key in ordered_keys(agg, setting):
        a = agg[key]
        cells = [fmt(a.tasks[t]["final_mean"], metrics[t]) if t in a.tasks else "—" for t in tasks]
        lines.append(
            md_row(
                row_label(grid, key),
                *cells,
                fmt(a.cell["mean_cls_acc"], "accuracy"),
                fmt(a.cell["delta_m"], "delta"),
                _params(a),
                _bytes(a),
                len(a.seeds),
            )
        )
    return lines


def detail_table(grid: Grid, agg: dict[RowKey, Aggregate], setting: str) -> list[str]:
    """Per task: final-round mean, weighted mean, std across clients, worst 10 %, last-5
    mean and Δ vs single-task, each mean ± std over seeds."""
    lines = md_header(
        "method",
        "task",
        "metric",
        "final mean",
        "weighted",
        "std across clients",
        "worst 10 %",
        f"last-{LAST_K} mean",
        "Δ vs single-task %",
    )
    for key in ordered_keys(agg, setting):
        a = agg[key]
        for task in setting_tasks(grid, setting, agg):
            if task not in a.tasks:
                continue
            t = a.tasks[task]
            m = t["metric"]
            cols = [
                fmt(t[c], m)
                for c in (
                    "final_mean",
                    "final_weighted",
                    "final_std_clients",
                    "final_worst10",
                    f"last{LAST_K}_mean",
                )
            ]
            lines.append(
                f"| {row_label(grid, key)} | {task} | {m} | "
                + " | ".join(cols)
                + f" | {fmt(t['delta_task'], 'delta')} |"
            )
    return lines


def _params(a: Aggregate) -> str:
    s, p, t = (a.cell[c][0] for c in ("shared_params", "private_params", "total_params"))
    if not math.isfinite(s):
        return f"— · — · {t:,.0f} (one model)"
    return f"{s:,.0f} · {p:,.0f} · {t:,.0f}"


def _bytes(a: Aggregate) -> str:
    up, down = a.cell["bytes_up_per_round"][0], a.cell["bytes_down_per_round"][0]
    if not math.isfinite(up):
        return "—"
    return f"{up / 1024:,.0f} · {down / 1024:,.0f}"


def efficiency_table(grid: Grid, agg: dict[RowKey, Aggregate]) -> list[str]:
    """Parameter efficiency per dataset (params do not depend on α; bytes barely do)."""
    lines = md_header(
        "setting",
        "method",
        "shared params/client",
        "private params/client",
        "total params/client",
        "KiB up/round (all clients)",
        "KiB down/round (incl. evaluation)",
    )
    seen = set()
    for s in grid.settings:
        ds = s.config["dataset"]
        if ds in seen:
            continue
        seen.add(ds)
        for key in ordered_keys(agg, s.label):
            a = agg[key]
            sh, pr, to = (a.cell[c][0] for c in ("shared_params", "private_params", "total_params"))
            up, down = a.cell["bytes_up_per_round"][0], a.cell["bytes_down_per_round"][0]
            one = key[1] in (CENTRALIZED, CENTRALIZED_TUNED)
            total = _int(to) + (" (one model, all tasks)" if one else "")
            lines.append(
                md_row(
                    s.label, row_label(grid, key), _int(sh), _int(pr), total, _kib(up), _kib(down)
                )
            )
    return lines


def _int(v: float) -> str:
    return f"{v:,.0f}" if math.isfinite(v) else "—"


def _kib(v: float) -> str:
    return f"{v / 1024:,.1f}" if math.isfinite(v) else "—"


# ---------------------------------------------------------------- transfer


def transfer_summary(collected: Collected) -> dict[str, Any]:
    """{alg: {task: {'metric', 'examples': {f: mean}, arm: {fraction: (mean, std, n)}}}}:
    per seed the mean over the new clients holding the task, then mean ± std over seeds."""
    per_seed: dict[tuple[str, str, str, float], list[float]] = defaultdict(list)
    examples: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    metrics: dict[str, str] = {}
    for cell, rec in collected.transfers.items():
        acc: dict[tuple[str, str, float], list[float]] = defaultdict(list)
        for client in rec["clients"].values():
            for f_key, res in client["by_fraction"].items():
                f = float(f_key)
                for task in client["tasks"]:
                    examples[(cell.method, task, f)].append(res["train_examples"])
                    for arm in ("frozen", "scratch"):
                        test = res[arm]["test"][task]
                        m = next(h for h in HEADLINE_METRICS if h in test)
                        metrics[task] = m
                        acc[(arm, task, f)].append(test[m])
        for (arm, task, f), vals in acc.items():
            per_seed[(cell.method, task, arm, f)].append(sum(vals) / len(vals))
    out: dict[str, Any] = {}
    for (alg, task, arm, f), vals in per_seed.items():
        t = out.setdefault(alg, {}).setdefault(task, {"metric": metrics[task], "examples": {}})
        t.setdefault(arm, {})[f] = mean_std(vals)
        ex = examples[(alg, task, f)]
        t["examples"][f] = sum(ex) / len(ex)
    return out


def transfer_table(grid: Grid, summary: dict[str, Any]) -> list[str]:
    lines = md_header(
        "federation",
        "task",
        "metric",
        "% of train data",
        "train examples (mean)",
        "frozen global encoder + own heads",
        "from scratch",
        "frozen − scratch",
    )
    for alg, tasks in summary.items():
        for task, t in tasks.items():
            m = t["metric"]
            for f in sorted(t["frozen"]):
                fr, sc = t["frozen"][f], t["scratch"][f]
                diff = fr[0] - sc[0]
                better = (diff > 0) == metric_higher_is_better(m) if diff != 0 else False
                d = f"{100 * diff:+.1f} pts" if m == "accuracy" else f"{diff:+.3f}"
                verdict = "frozen better" if better else "scratch better or equal"
                lines.append(
                    md_row(
                        LABELS.get(alg, alg),
                        task,
                        m,
                        f"{100 * f:g}",
                        f"{t['examples'][f]:.0f}",
                        fmt(fr, m),
                        fmt(sc, m),
                        f"{d} ({verdict})",
                    )
                )
    return lines


def tables_markdown(
    collected: Collected,
    agg: dict[RowKey, Aggregate],
    plots: dict[str, Path],
    rel: Callable[[Path], str],
) -> list[str]:
    grid = collected.grid
    lines: list[str] = []
    for s in grid.settings:
        if not any(k[0] == s.label for k in agg):
            continue
        lines += [f"### {setting_title(grid, s.label)} (`{s.label}`)", ""]
        lines += [*main_table(grid, agg, s.label), ""]
        for kind, what in (
            ("rounds", "per-task metric over rounds"),
            ("clients", "per-client distribution"),
        ):
            p = plots.get(f"{s.label}-{kind}")
            if p:
                lines += [f"![{s.label}: {what}]({rel(p)})", ""]
        lines += [
            "<details><summary>Per task: weighted mean, std across clients, worst 10 %, "
            f"last-{LAST_K} mean, Δ vs single-task</summary>",
            "",
            *detail_table(grid, agg, s.label),
            "",
            "</details>",
            "",
        ]
    return lines
