"""What a comparison grid reports: a CSV (one row per cell × task), Markdown tables (mean ±
std over seeds), plots, and, for the default suite, docs/RESULTS.md with the targets checked.

Everything is read back from the result files the runs wrote (`summary.json`,
`metrics.jsonl`, `transfer.json`, `timings.json`), never typed in: rerunning the command
rewrites every number.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from client.train import build_model
from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import PENGUIN_ISLANDS, dataset_tasks
from common.models import count_parameters
from common.records import model_shared_keys, model_task_keys
from experiments.compare import (
    CENTRALIZED,
    CENTRALIZED_TUNED,
    LABELS,
    METHODS,
    REFERENCES,
    SINGLE_TASK,
    Cell,
    Grid,
    _hms,
    is_done,
)
from experiments.compare_plots import plot_clients, plot_delta_m, plot_rounds, plot_transfer
from experiments.compare_stats import (
    delta_m,
    higher_is_better,
    mean_classification_accuracy,
    mean_std,
    task_headlines,
)
from experiments.references import federation_clients
from server.results import LAST_K, read_metrics

RowKey = tuple[str, str, str, str]  # setting, method, weighting, strategy
# Personalised federated MTL algorithms: the candidates for "the best federated MTL".
FED_MTL = ("fedavg-ft", "fedper", "fedrep", "ditto", "fedrod")
# Those whose task heads never leave the client (the product's default premise).
PRIVATE_HEADS = ("fedper", "fedrep", "ditto")
DEFAULT_ALGORITHM = RunConfig().algorithm  # the run config's default (pyproject)
# The targets: each number here is both what is checked and what the target's name says.
HEADLINE_SETTING = "multidigits-a0.5"  # where the best federated MTL is judged
NEAR_IID_SETTING = "multidigits-a5"  # where head-only personalisation must not collapse
SKEWED_SETTING = "multidigits-a0.1"
LOCAL_MARGIN = 3.0  # points: best federated MTL ≥ Local + this
CENTRALIZED_MARGIN = 2.0  # points: best federated MTL ≥ tuned Centralized − this
FEDAVG_SLACK = 0.5  # points: at α=5 the default ≥ FedAvg − this
SUITE_MINUTES = 60.0  # the whole default suite's wall time
CSV_COLUMNS = (
    "setting",
    "dataset",
    "alpha",
    "method",
    "weighting",
    "strategy",
    "seed",
    "task",
    "metric",
    "final_mean",
    "final_weighted",
    "final_std_clients",
    "final_worst10",
    f"last{LAST_K}_mean",
    "val_final_mean",
    "delta_task",
    "delta_m",
    "mean_cls_acc",
    "val_mean_cls_acc",
    "shared_params",
    "private_params",
    "total_params",
    "bytes_up_per_round",
    "bytes_down_per_round",
    "rounds",
    "clients",
    "wall_s",
    "run_dir",
)
TASK_COLUMNS = (
    "final_mean",
    "final_weighted",
    "final_std_clients",
    "final_worst10",
    f"last{LAST_K}_mean",
    "val_final_mean",
    "delta_task",
)
CELL_COLUMNS = (
    "delta_m",
    "mean_cls_acc",
    "val_mean_cls_acc",
    "shared_params",
    "private_params",
    "total_params",
    "bytes_up_per_round",
    "bytes_down_per_round",
)


@dataclass
class Collected:
    """The grid's finished results, read back from disk."""

    grid: Grid
    summaries: dict[Cell, dict[str, Any]] = field(default_factory=dict)
    transfers: dict[Cell, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def row_key(cell: Cell) -> RowKey:
    return (cell.setting.label, cell.method, cell.weighting, cell.strategy)


def default_key(grid: Grid, setting: str, method: str) -> RowKey:
    """The row a target reads: the grid's first weighting and strategy."""
    if method == SINGLE_TASK:
        return (setting, method, "ew", "none")
    strategy = "none" if method in REFERENCES else grid.strategies[0]
    return (setting, method, grid.weightings[0], strategy)


def collect(grid: Grid) -> Collected:
    out = Collected(grid)
    timings = _read_timings(grid)["cells"]
    for cell in grid.cells():
        if not is_done(grid, cell):
            out.missing.append(cell.name)
            continue
        d = grid.cell_dir(cell)
        if cell.kind == "transfer":
            out.transfers[cell] = json.loads((d / "transfer.json").read_text())
        elif cell.kind != "transfer-fed":
            out.summaries[cell] = json.loads((d / "summary.json").read_text())
    single = {
        (c.setting.label, c.seed): s for c, s in out.summaries.items() if c.kind == SINGLE_TASK
    }
    for cell, summary in out.summaries.items():
        ref = single.get((cell.setting.label, cell.seed))
        per_task_delta, dm = (
            delta_m(summary["per_client"], ref["per_client"]) if ref else ({}, math.nan)
        )
        shared, private, total = parameter_counts(grid, cell)
        rounds = max(int(summary.get("rounds", 0)), 1)
        flower = cell.kind == "flower"
        base = {
            "setting": cell.setting.label,
            "dataset": cell.setting.config["dataset"],
            "alpha": cell.setting.alpha if cell.setting.alpha is not None else "",
            "method": cell.method,
            "weighting": cell.weighting,
            "strategy": cell.strategy,
            "seed": cell.seed,
            "delta_m": dm,
            "mean_cls_acc": mean_classification_accuracy(summary, "test"),
            "val_mean_cls_acc": mean_classification_accuracy(summary, "val"),
            "shared_params": shared,
            "private_params": private,
            "total_params": total,
            "bytes_up_per_round": summary["bytes_up"] / rounds if flower else math.nan,
            "bytes_down_per_round": summary["bytes_down"] / rounds if flower else math.nan,
            "rounds": summary.get("rounds", 0),
            "clients": len(summary.get("per_client", {})),
            "wall_s": timings.get(cell.name, summary.get("wall_time_s", math.nan)),
            "run_dir": str(grid.cell_dir(cell)),
        }
        for task, metric in task_headlines(summary).items():
            stats = summary["per_task"][task][f"test/{metric}"]
            val = summary["per_task"][task].get(f"val/{metric}", {})
            out.rows.append(
                {
                    **base,
                    "task": task,
                    "metric": metric,
                    "final_mean": stats["mean"],
                    "final_weighted": stats["weighted"],
                    "final_std_clients": stats["std"],
                    "final_worst10": stats["worst10"],
                    f"last{LAST_K}_mean": stats[f"last{LAST_K}_mean"],
                    "val_final_mean": val.get("mean", math.nan),
                    "delta_task": per_task_delta.get(task, math.nan),
                }
            )
    return out


def parameter_counts(grid: Grid, cell: Cell) -> tuple[float, float, float]:
    """(shared, private, total) parameters per client, mean over the clients."""
    ov = {**grid.overrides(cell), "seed": 0, "run-name": "params", "weighting": "ew"}
    return _parameter_counts(tuple(sorted(ov.items())), cell.method)


@lru_cache(maxsize=256)
def _parameter_counts(items: tuple, method: str) -> tuple[float, float, float]:
    """Shared = what travels (the encoder; heads under fedavg; generic heads under fedrod);
    private = what a client keeps (its heads; Ditto's whole personal model). Centralized is
    one model for all tasks, not a per-client split."""
    cfg = parse_run_config(dict(items))
    clients = federation_clients(cfg)
    if method in (CENTRALIZED, CENTRALIZED_TUNED):
        specs = {t.name: t for c in clients for t in c.tasks}
        tasks = [specs[n] for n in dataset_tasks(cfg) if n in specs]
        return (
            math.nan,
            math.nan,
            float(count_parameters(build_model(cfg, tasks, clients[0].input_shape))),
        )
    shared, private = [], []
    for c in clients:
        if method == SINGLE_TASK:
            shared.append(0)
            private.append(
                sum(count_parameters(build_model(cfg, (t,), c.input_shape)) for t in c.tasks)
            )
            continue
        alg = get_algorithm(method)
        model = build_model(cfg, c.tasks, c.input_shape, global_heads=alg.global_heads)
        keys = model_shared_keys(model, alg, cfg.shared_layers) + model_task_keys(model, alg)
        n_shared, n_model = count_parameters(model, keys), count_parameters(model)
        shared.append(n_shared)
        private.append(n_model - n_shared + (n_model if alg.schedule == "ditto" else 0))
    s, p = sum(shared) / len(shared), sum(private) / len(private)
    return s, p, s + p


# ---------------------------------------------------------------- aggregation over seeds


@dataclass
class Aggregate:
    """One table row: every column as (mean, std, n) over seeds."""

    key: RowKey
    tasks: dict[str, dict[str, Any]]
    cell: dict[str, tuple[float, float, int]]
    seeds: list[int]


def aggregate(rows: list[dict[str, Any]]) -> dict[RowKey, Aggregate]:
    groups: dict[RowKey, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["setting"], r["method"], r["weighting"], r["strategy"])].append(r)
    out = {}
    for key, rs in groups.items():
        tasks: dict[str, dict[str, Any]] = {}
        for task in dict.fromkeys(r["task"] for r in rs):
            tr = [r for r in rs if r["task"] == task]
            tasks[task] = {"metric": tr[0]["metric"]} | {
                col: mean_std(r[col] for r in tr) for col in TASK_COLUMNS
            }
        per_seed = {r["seed"]: r for r in rs}
        cell = {col: mean_std(r[col] for r in per_seed.values()) for col in CELL_COLUMNS}
        out[key] = Aggregate(key, tasks, cell, sorted(per_seed))
    return out


# ---------------------------------------------------------------- formatting


def fmt(ms: tuple[float, float, int] | None, metric: str = "", scale: float = 1.0) -> str:
    """'mean ± std' (accuracy in %, other metrics with digits by magnitude); '—' if none."""
    if ms is None or ms[2] == 0 or not math.isfinite(ms[0]):
        return "—"
    m, s = ms[0] * scale, ms[1] * scale
    if metric in ("accuracy", "macro_f1") and scale == 1.0:
        m, s = 100 * m, 100 * s
    digits = 1 if metric in ("accuracy", "macro_f1", "delta") or abs(m) >= 10 else 3
    if abs(m) >= 100 and metric not in ("accuracy", "delta"):
        digits = 0
    m = 0.0 if round(m, digits) == 0 else m  # no '-0.0'
    return f"{m:.{digits}f} ± {s:.{digits}f}"


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
    head = [f"{t} ({'acc %' if metrics[t] == 'accuracy' else metrics[t].upper()})" for t in tasks]
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


def md_header(*columns: str) -> list[str]:
    return [md_row(*columns), md_row(*["---"] * len(columns))]


def md_row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


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
                        m = "accuracy" if "accuracy" in test else "mae"
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
                better = (diff > 0) == higher_is_better(m) if diff != 0 else False
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


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    status: str  # met, missed, n/a, info
    detail: str


def _pts(ms: tuple[float, float, int] | None) -> float:
    return 100 * ms[0] if ms and ms[2] else math.nan


def check_targets(collected: Collected, agg: dict[RowKey, Aggregate]) -> list[Target]:
    """The targets, each met/missed with the numbers behind it. The 'best federated MTL
    algorithm' is chosen on validation (final-round mean classification accuracy), never on
    test; Centralized, the reference it must come near, is the one with its lr chosen on
    validation."""
    grid = collected.grid
    out: list[Target] = []

    def cell(setting: str, method: str, col: str) -> tuple[float, float, int] | None:
        a = agg.get(default_key(grid, setting, method))
        return a.cell[col] if a else None

    def best_fed(setting: str, among: tuple[str, ...] = FED_MTL) -> str | None:
        cands = [(cell(setting, m, "val_mean_cls_acc"), m) for m in among]
        cands = [(v[0], m) for v, m in cands if v and v[2] and math.isfinite(v[0])]
        return max(cands)[1] if cands else None

    def acc(setting: str, method: str) -> str:
        return f"{LABELS[method]} {fmt(cell(setting, method, 'mean_cls_acc'), 'accuracy')}"

    s = HEADLINE_SETTING
    where = _setting_name(grid, s)
    best = best_fed(s)
    if best:
        b = _pts(cell(s, best, "mean_cls_acc"))
        name = f"{LABELS[best]} (best of {', '.join(LABELS[m] for m in FED_MTL)} on validation)"
        loc, avg = (_pts(cell(s, m, "mean_cls_acc")) for m in ("local", "fedavg"))
        dm = cell(s, best, "delta_m")
        out += [
            Target(
                f"{where}: best federated MTL ≥ Local + {LOCAL_MARGIN:g} points (mean cls "
                "accuracy)",
                _status(b - loc >= LOCAL_MARGIN, b, loc),
                f"{name}: {acc(s, best)} vs {acc(s, 'local')}: {pts(b - loc)}",
            ),
            Target(
                f"{where}: best federated MTL ≥ FedAvg",
                _status(b >= avg, b, avg),
                f"{acc(s, best)} vs {acc(s, 'fedavg')}: {pts(b - avg)}",
            ),
            *_centralized_checks(collected, agg, s, best, b),
            Target(
                f"{where}: Δm of the best federated MTL vs local single-task < 0",
                _status(dm is not None and dm[0] < 0, dm[0] if dm else math.nan),
                f"{LABELS[best]} Δm {fmt(dm, 'delta')} %",
            ),
        ]
        private = best_fed(s, PRIVATE_HEADS)
        if private:
            p = _pts(cell(s, private, "mean_cls_acc"))
            pdm = cell(s, private, "delta_m")
            out.append(
                Target(
                    f"Supplementary, heads never leave the client ({where}): best of "
                    f"{', '.join(LABELS[m] for m in PRIVATE_HEADS)} (on validation) ≥ Local + "
                    f"{LOCAL_MARGIN:g} points, ≥ FedAvg, Δm < 0",
                    _status(
                        p - loc >= LOCAL_MARGIN and p >= avg and pdm is not None and pdm[0] < 0, p
                    ),
                    f"{acc(s, private)} vs {acc(s, 'local')}: {pts(p - loc)}; vs "
                    f"{acc(s, 'fedavg')}: {pts(p - avg)}; Δm {fmt(pdm, 'delta')} %",
                )
            )
    else:
        out.append(Target(f"{where} targets", "n/a", "setting or rows not in this grid"))
    s5 = NEAR_IID_SETTING
    d5, a5, r5 = (
        _pts(cell(s5, m, "mean_cls_acc")) for m in (DEFAULT_ALGORITHM, "fedavg", "fedrod")
    )
    out.append(
        Target(
            f"{_setting_name(grid, s5)}: the default ({LABELS[DEFAULT_ALGORITHM]}) ≥ FedAvg − "
            f"{FEDAVG_SLACK:g} points",
            _status(d5 >= a5 - FEDAVG_SLACK, d5, a5),
            f"{acc(s5, DEFAULT_ALGORITHM)} vs {acc(s5, 'fedavg')}: {pts(d5 - a5)}",
        )
    )
    out.append(
        Target(
            f"Check: FedRoD vs FedAvg at {_alpha_name(s5)} (≥ FedAvg − {FEDAVG_SLACK:g} points?)",
            _status(r5 >= a5 - FEDAVG_SLACK, r5, a5),
            f"{acc(s5, 'fedrod')} vs {acc(s5, 'fedavg')}: {pts(r5 - a5)}; "
            f"{paired_difference(collected, s5, 'fedrod', 'fedavg')}",
        )
    )
    s01 = SKEWED_SETTING
    r01, p01 = (_pts(cell(s01, m, "mean_cls_acc")) for m in ("fedrod", "fedper"))
    out.append(
        Target(
            f"Check: FedRoD vs FedPer at {_alpha_name(s01)} (FedRoD ≥ FedPer?)",
            _status(r01 >= p01, r01, p01),
            f"{acc(s01, 'fedrod')} vs {acc(s01, 'fedper')}: {pts(r01 - p01)}; "
            f"{paired_difference(collected, s01, 'fedrod', 'fedper')}; Δm FedRoD "
            f"{fmt(cell(s01, 'fedrod', 'delta_m'), 'delta')} vs "
            f"FedPer {fmt(cell(s01, 'fedper', 'delta_m'), 'delta')}",
        )
    )
    out.append(_fedrod_default(grid, agg, cell))
    out += _penguins_targets(collected, agg, best_fed)
    out.append(_wall_target(grid))
    return out


def _setting_name(grid: Grid, label: str) -> str:
    """'MultiDigits α=0.5' for a setting label, from the grid's own setting."""
    found = next((x for x in grid.settings if x.label == label), None)
    dataset = found.config["dataset"] if found else label.split("-a")[0]
    pretty = {"multidigits": "MultiDigits", "synthcorr": "SynthCorr", "penguins": "Penguins"}
    return f"{pretty.get(dataset, dataset)} {_alpha_name(label, found)}".strip()


def _alpha_name(label: str, setting: Any = None) -> str:
    alpha = setting.alpha if setting is not None else None
    if alpha is None and "-a" in label:
        alpha = float(label.rsplit("-a", 1)[1])
    return f"α={alpha:g}" if alpha is not None else ""


def _centralized_checks(
    collected: Collected, agg: dict[RowKey, Aggregate], setting: str, best: str, fed: float
) -> list[Target]:
    """Best federated MTL (`best`, `fed` points) against Centralized. The pooled model sums
    every task's loss and takes clients × more steps per epoch at the federation's learning
    rate, so at that lr it can become unstable, which would make 'within N points of
    Centralized' too easy. The target therefore uses Centralized with its lr chosen on
    validation; the same-lr model is shown as information only, with where its training
    loss bottomed out and its best round chosen on validation."""
    grid = collected.grid
    where = _setting_name(grid, setting)
    name = (
        f"{where}: best federated MTL within {CENTRALIZED_MARGIN:g} points of Centralized "
        "(its lr chosen on validation)"
    )
    best_acc = f"{LABELS[best]} {fed:.1f}"
    tuned = agg.get(default_key(grid, setting, CENTRALIZED_TUNED))
    if tuned is None or not tuned.cell["mean_cls_acc"][2]:
        out = [Target(name, "n/a", f"no {LABELS[CENTRALIZED_TUNED]} rows in this grid")]
    else:
        lrs = [
            s.get("selected_lr") for c, s in collected.summaries.items() if row_key(c) == tuned.key
        ]
        c = _pts(tuned.cell["mean_cls_acc"])
        chosen = f" (chosen lr per seed {lrs})" if lrs else ""
        out = [
            Target(
                name,
                _status(fed >= c - CENTRALIZED_MARGIN, fed, c),
                f"{best_acc} vs {LABELS[CENTRALIZED_TUNED]} "
                f"{fmt(tuned.cell['mean_cls_acc'], 'accuracy')}{chosen}: {pts(fed - c)}",
            )
        ]
    same = agg.get(default_key(grid, setting, CENTRALIZED))
    if same is not None and same.cell["mean_cls_acc"][2]:
        c = _pts(same.cell["mean_cls_acc"])
        out.append(
            Target(
                f"Info, not a target: Centralized at the federation's lr ({where}; untuned, "
                "can diverge)",
                "info",
                f"{best_acc} vs {LABELS[CENTRALIZED]} "
                f"{fmt(same.cell['mean_cls_acc'], 'accuracy')}: {pts(fed - c)}",
            )
        )
    key = default_key(grid, setting, CENTRALIZED)
    best_test, best_rounds, low_rounds, ratios = [], [], [], []
    for cell in collected.summaries:
        if row_key(cell) != key:
            continue
        rows = [r for r in read_metrics(grid.cell_dir(cell) / "metrics.jsonl") if r.get("per_task")]
        val = [mean_classification_accuracy(r, "val") for r in rows]
        i = max(range(len(rows)), key=lambda j: val[j])
        best_test.append(mean_classification_accuracy(rows[i], "test"))
        best_rounds.append(rows[i]["round"])
        losses = [r["train_loss"] for r in rows]
        low = min(range(len(losses)), key=lambda j: losses[j])
        low_rounds.append(rows[low]["round"])
        ratios.append(losses[-1] / losses[low] if losses[low] > 0 else math.nan)
    if best_test:
        out.append(
            Target(
                "Info: Centralized (same lr) training stability and best round on validation "
                "(labelled best-round, not the headline)",
                "info",
                f"train loss lowest at rounds {low_rounds}, final/lowest "
                f"{', '.join(f'{r:.2f}' for r in ratios)}; best-val rounds {best_rounds}: test "
                f"mean cls acc {fmt(mean_std(best_test), 'accuracy')}",
            )
        )
    return out


def _status(ok: bool, *values: float) -> str:
    if any(not math.isfinite(v) for v in values):
        return "n/a"
    return "met" if ok else "missed"


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def paired_difference(collected: Collected, setting: str, a: str, b: str) -> str:
    """Mean classification accuracy of `a` minus `b`, paired by seed (same data and
    initialisation), in points: mean ± sample std over the seeds both finished."""
    by_seed: dict[str, dict[int, float]] = {a: {}, b: {}}
    for r in collected.rows:
        value = r.get("mean_cls_acc")
        if r["setting"] == setting and r["method"] in by_seed and _finite(value):
            by_seed[r["method"]][int(r["seed"])] = 100 * float(value)
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    diffs = [by_seed[a][k] - by_seed[b][k] for k in seeds]
    if not diffs:
        return "paired by seed: n/a"
    std = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    per = ", ".join(f"{d:+.1f}" for d in diffs)
    return f"paired by seed {per}: {statistics.mean(diffs):+.1f} ± {std:.1f} points"


def _fedrod_default(grid: Grid, agg: dict[RowKey, Aggregate], cell: Callable) -> Target:
    """FedRoD as the default instead of FedPer: better mean accuracy over the α sweep and it
    also meets the near-IID rule (≥ FedAvg − FEDAVG_SLACK)."""
    sweep = [
        s.label
        for s in grid.settings
        if s.config["dataset"] == "multidigits" and s.alpha is not None
    ]
    diffs = {
        s: _pts(cell(s, "fedrod", "mean_cls_acc")) - _pts(cell(s, "fedper", "mean_cls_acc"))
        for s in sweep
    }
    diffs = {s: d for s, d in diffs.items() if math.isfinite(d)}
    if not diffs:
        return Target(
            "Would FedRoD be the better default than FedPer?",
            "n/a",
            "no MultiDigits sweep in this grid",
        )
    r5, a5 = (
        _pts(cell(NEAR_IID_SETTING, "fedrod", "mean_cls_acc")),
        _pts(cell(NEAR_IID_SETTING, "fedavg", "mean_cls_acc")),
    )
    mean_diff = sum(diffs.values()) / len(diffs)
    yes = mean_diff > 0 and (not math.isfinite(a5) or r5 >= a5 - FEDAVG_SLACK)
    per = ", ".join(f"{s.split('-a')[-1] if '-a' in s else s}: {d:+.1f}" for s, d in diffs.items())
    return Target(
        "Would FedRoD be the better default than FedPer? (higher mean accuracy over the α "
        f"sweep and ≥ FedAvg − {FEDAVG_SLACK:g} at {_alpha_name(NEAR_IID_SETTING)})",
        "yes" if yes else "no",
        f"FedRoD − FedPer mean classification accuracy by α: {per} points (mean {mean_diff:+.1f})",
    )


def _penguins_targets(
    collected: Collected, agg: dict[RowKey, Aggregate], best_fed: Callable
) -> list[Target]:
    """Every island, every task: the federated MTL algorithm (chosen on validation) is no
    worse than Local, on the seed-mean of the island's final-round test metric."""
    grid = collected.grid
    if "penguins" not in [s.label for s in grid.settings]:
        return [
            Target("Penguins: federated MTL ≥ Local on every island", "n/a", "not in this grid")
        ]
    out = []
    chosen = best_fed("penguins")
    for method, why in ((chosen, "best on validation"), (DEFAULT_ALGORITHM, "the default")):
        if method is None:
            continue
        fed = _island_means(collected, default_key(grid, "penguins", method))
        loc = _island_means(collected, default_key(grid, "penguins", "local"))
        checks, ok = [], True
        for (cid, task), (m, metric) in sorted(fed.items()):
            if (cid, task) not in loc:
                continue
            lv = loc[(cid, task)][0]
            good = m >= lv if higher_is_better(metric) else m <= lv
            ok &= good
            f = (lambda v: f"{100 * v:.1f}") if metric == "accuracy" else (lambda v: f"{v:.0f}")
            known = cid.isdigit() and int(cid) < len(PENGUIN_ISLANDS)
            island = PENGUIN_ISLANDS[int(cid)] if known else cid
            checks.append(f"{island}/{task} {metric} {f(m)} vs {f(lv)}{'' if good else ' ✗'}")
        out.append(
            Target(
                f"Penguins: {LABELS[method]} ({why}) ≥ Local on every island and task",
                _status(ok) if checks else "n/a",
                "; ".join(checks) or "rows missing",
            )
        )
        if method == DEFAULT_ALGORITHM:
            break
    return out


def _island_means(collected: Collected, key: RowKey) -> dict[tuple[str, str], tuple[float, str]]:
    vals: dict[tuple[str, str], list[float]] = defaultdict(list)
    metric_of: dict[str, str] = {}
    for cell, summary in collected.summaries.items():
        if row_key(cell) != key:
            continue
        heads = task_headlines(summary)
        for cid, tasks in summary["per_client"].items():
            for task, m in tasks.items():
                if task in heads:
                    metric_of[task] = heads[task]
                    vals[(cid, task)].append(m[f"test/{heads[task]}"])
    return {k: (sum(v) / len(v), metric_of[k[1]]) for k, v in vals.items()}


def _read_timings(grid: Grid) -> dict[str, Any]:
    path = grid.grid_dir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {"cells": {}, "invocations": []}


def suite_wall_time(grid: Grid) -> tuple[float, list[dict[str, Any]]]:
    """Total wall time of the invocations that ran cells (a resumed grid sums its parts)."""
    inv = [i for i in _read_timings(grid)["invocations"] if i.get("ran", 0) > 0]
    return sum(i["wall_s"] for i in inv), inv


def _wall_target(grid: Grid) -> Target:
    total, inv = suite_wall_time(grid)
    name = f"Whole suite under {SUITE_MINUTES:g} minutes on this machine"
    if not inv:
        return Target(name, "n/a", "no timed invocation")
    parts = "; ".join(
        f"{i['started']}: {_hms(i['wall_s'])} ({i['ran']} cells run, {i['skipped']} skipped)"
        for i in inv
    )
    return Target(
        name,
        _status(total < 60 * SUITE_MINUTES, total),
        f"{_hms(total)} in {len(inv)} invocation(s): {parts}",
    )


# ---------------------------------------------------------------- plots


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


# ---------------------------------------------------------------- files


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            )
    tmp.replace(path)
    return path


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


def write_reports(
    grid: Grid,
    *,
    plots_dir: Path,
    docs_path: Path | None = None,
    command: str = "python -m experiments.compare",
    out: Callable[[str], None] = print,
) -> list[Path]:
    """CSV, table.md (grid dir), plots and, when asked, RESULTS.md; returns the paths."""
    collected = collect(grid)
    agg = aggregate(collected.rows)
    written = [write_csv(collected.rows, grid.grid_dir / "compare.csv")]
    plots = write_plots(collected, agg, plots_dir)
    written += list(plots.values())
    table_path = grid.grid_dir / "table.md"
    lines = [f"# Comparison grid `{grid.name}`", ""]
    lines += tables_markdown(collected, agg, plots, lambda p: _relpath(p, table_path.parent))
    tsum = transfer_summary(collected)
    if tsum:
        lines += ["## Transfer to new clients", "", *transfer_table(grid, tsum), ""]
    table_path.write_text("\n".join(lines) + "\n")
    written.append(table_path)
    targets = check_targets(collected, agg)
    for t in targets:
        out(f"target [{t.status}] {t.name}: {t.detail}")
    if docs_path is not None:
        docs_path.parent.mkdir(parents=True, exist_ok=True)
        docs_path.write_text(
            results_markdown(collected, agg, plots, targets, tsum, docs_path, command)
        )
        written.append(docs_path)
    if collected.missing:
        out(
            f"report: {len(collected.missing)} cells have no finished result: "
            + ", ".join(collected.missing[:8])
            + (" …" if len(collected.missing) > 8 else "")
        )
    return written


def _relpath(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


SETUP = """\
- Rows: **Local** (`algorithm=local` through Flower, nothing shared), **Local single-task**
  (one model per client and task, in-process, same budget), FedAvg, FedAvg-FT, FedPer, FedRep,
  Ditto, FedRoD (through the Flower Simulation Engine), **Centralized** (all clients' training
  data pooled, one model with every task, same architecture, optimizer and epochs; evaluated on
  every client's own test split). The references use `load_client_data` for the same splits and
  `build_model` / `local_round` / `train_epochs` for the same model and training code.
- Metric: final-round test metric per client (accuracy for classification, MAE for
  regression), mean over the clients holding the task; mean ± std (sample std) over seeds.
  *mean cls acc* = mean over the classification tasks. Δm (%) = mean over tasks of the
  per-task mean over clients of (−1)^{{higher-is-better}}·(M − M_single-task)/M_single-task·100,
  against local single-task with the same seed (lower is better).
- Selection: no model or round selection; the headline is the final round. Where a target
  names the *best* federated MTL algorithm ({fed_mtl}), it is chosen on the validation splits'
  mean classification accuracy, never on test. FedAvg-FT and FedRoD send task heads to the
  server (FedRoD its generic heads); a supplementary target repeats the {headline} check over
  the algorithms whose heads never leave the client ({private_heads}). Centralized, which the
  best federated MTL must come within {margin:g} points of, is the one with its lr chosen on
  validation; Centralized at the federation's lr is shown for information only.
- Parameters: per client, mean over clients. *Shared* = what travels each round (encoder;
  heads under FedAvg; generic heads under FedRoD); *private* = what a client keeps (its heads;
  Ditto's whole personal model; FedAvg-FT's fine-tuned heads are a throw-away copy). Bytes per
  round: `summary.json` bytes_up / bytes_down ÷ rounds, all clients together (down includes
  the arrays sent for evaluation).
"""

TRANSFER = """\
Setting `{setting}`: the federation is simulated with {fed} clients (`num-clients={fed}`);
clients {held} of the {n}-client partitioning never take part. Same generator and seed, so the
same distribution; on MultiDigits the digit images are split into train/test pools by the
seed, so a new client's test images were never in any federation client's training data.
Each new client trains on {fractions} of its training split (a seeded subset), for rounds ×
local epochs = {epochs} epochs: either its own heads on the frozen global encoder
(`shared_arrays.npz` of the federation's last round) or the whole model from scratch. Scored
on its full test split; per seed the mean over the new clients holding the task, then mean ±
std over seeds.
"""


def results_markdown(
    collected: Collected,
    agg: dict[RowKey, Aggregate],
    plots: dict[str, Path],
    targets: list[Target],
    tsum: dict[str, Any],
    docs_path: Path,
    command: str,
) -> str:
    grid = collected.grid
    rel = lambda p: _relpath(p, docs_path.parent)  # noqa: E731
    total, inv = suite_wall_time(grid)
    cfg = parse_run_config({**grid.common, **grid.settings[0].config})
    settings = ", ".join(f"`{s.label}`" for s in grid.settings)
    lines = [
        "# Results: federated multi-task learning, all algorithms against the references",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.machine()}, Python {platform.python_version()}).",
        "Every number below is read from the runs' result files; do not edit by hand, rerun",
        "the command.",
        "",
        "## How to reproduce",
        "",
        "```bash",
        "make venv   # or: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'",
        f".venv/bin/{command}",
        "```",
        "",
        "It resumes: a cell whose `summary.json` says completed with the same config is skipped",
        f"(`--dry-run` lists what is done). Results: `{_relpath(grid.grid_dir, Path.cwd())}/`",
        "(`runs/<cell>/` per run, `compare.csv` one row per cell × task, `table.md`,",
        "`timings.json`).",
        "",
        "## Setup",
        "",
        f"- Settings: {settings}; seeds {', '.join(map(str, grid.seeds))}; weighting "
        f"{', '.join(grid.weightings)}; Flower strategy {', '.join(grid.strategies)}.",
        f"- Budget, the same for every row: {cfg.num_server_rounds} rounds × {cfg.local_epochs} "
        f"local epochs (references: the same number of epochs), batch {cfg.batch_size}, SGD lr "
        f"{cfg.lr:g}, momentum {cfg.momentum:g}. Overrides of the run-config defaults for all "
        f"cells: {', '.join(f'`{k}={v}`' for k, v in grid.common.items()) or 'none'}."
        + (f" Why: {note}" if grid.name == "default" and (note := suite_note(grid, inv)) else ""),
        SETUP.format(
            fed_mtl=", ".join(LABELS[m] for m in FED_MTL),
            private_heads=", ".join(LABELS[m] for m in PRIVATE_HEADS),
            headline=_alpha_name(HEADLINE_SETTING) or HEADLINE_SETTING,
            margin=CENTRALIZED_MARGIN,
        ),
        "## Targets",
        "",
        *md_header("target", "status", "numbers"),
        *[md_row(t.name, f"**{t.status}**", t.detail) for t in targets],
        "",
        "## Wall time",
        "",
        f"Total for this grid: **{_hms(total)}** (h:mm:ss) on {_cpu_note(inv)}, measured by the",
        "command itself (sum over the invocations that ran cells; the machine is shared, so",
        "timings are noisy).",
        "",
        *[
            f"- {i['started']}: {_hms(i['wall_s'])}, {i['ran']} cells run, "
            f"{i['skipped']} skipped, {i.get('failed', 0)} failed; mean 1-minute load average "
            f"{i.get('mean_load') or '?'} on {i.get('cpus', '?')} cores (other work included)"
            + ("" if i.get("finished", True) else " — interrupted")
            + (f". {i['note']}" if i.get("note") else "")
            for i in inv
        ],
        "",
        "## Results per setting",
        "",
        "Final-round test metric (client mean), mean ± std over seeds. KiB/round: all clients.",
        "",
        *tables_markdown(collected, agg, plots, rel),
    ]
    if "delta_m" in plots:
        lines += ["## Δm per algorithm", "", f"![Δm per algorithm]({rel(plots['delta_m'])})", ""]
    lines += ["## Parameter efficiency", "", *efficiency_table(grid, agg), ""]
    if tsum and grid.transfer:
        t = grid.transfer
        adapt = next(c for c in grid.cells() if c.kind == "transfer")
        n = parse_run_config(grid.overrides(adapt)).num_clients
        text = TRANSFER.format(
            setting=t.setting,
            fed=n - t.holdout,
            held=", ".join(str(i) for i in range(n - t.holdout, n)),
            n=n,
            fractions=", ".join(f"{100 * f:g} %" for f in t.fractions),
            epochs=cfg.num_server_rounds * cfg.local_epochs,
        )
        lines += ["## Knowledge transfer to new clients", "", text, *transfer_table(grid, tsum), ""]
        for alg in tsum:
            if f"transfer-{alg}" in plots:
                lines += [f"![transfer, {alg}]({rel(plots[f'transfer-{alg}'])})", ""]
    if collected.missing:
        lines += ["## Missing cells", "", *[f"- `{m}`" for m in collected.missing], ""]
    return "\n".join(lines) + "\n"


def _cpu_note(invocations: list[dict[str, Any]]) -> str:
    """The CPU count the invocations recorded (the machine that ran them, not this one)."""
    cpus = sorted({i["cpus"] for i in invocations if i.get("cpus")})
    return (
        f"{'/'.join(map(str, cpus))} CPU cores"
        if cpus
        else "a machine whose CPUs were not recorded"
    )


def suite_note(grid: Grid, invocations: list[dict[str, Any]]) -> str:
    """Why the default suite's budget differs from the run-config defaults, with the numbers
    taken from RunConfig, the grid and the invocations' records."""
    default = RunConfig().num_server_rounds
    rounds = parse_run_config(grid.common).num_server_rounds
    if rounds == default:
        return ""
    cpus = sorted({i["cpus"] for i in invocations if i.get("cpus")})
    on = f" on {'/'.join(map(str, cpus))} cores" if cpus else ""
    return (
        f"the run-config default is {default} rounds; the default suite runs {rounds} for every "
        f"row alike to fit the {SUITE_MINUTES:g}-minute target{on} (a Flower cell's cost is "
        "mostly fixed start-up, so fewer rounds is the cut that keeps every row and seed)."
    )
