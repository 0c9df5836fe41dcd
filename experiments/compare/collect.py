"""The comparison's results read back from disk: one row per finished cell × task (the CSV),
and those rows aggregated over seeds (mean ± std per column)."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from client.train import build_model
from common.algorithms import get_algorithm
from common.config import parse_run_config
from common.datasets import dataset_tasks
from common.models import count_parameters
from common.records import model_shared_keys, model_task_keys
from experiments.compare.grid import Cell, Grid
from experiments.compare.references import (
    CENTRALIZED,
    CENTRALIZED_TUNED,
    REFERENCES,
    SINGLE_TASK,
    federation_clients,
)
from experiments.kit.runner import Timings
from experiments.kit.scores import delta_m, mean_classification_accuracy, task_headlines
from experiments.kit.stats import mean_std
from server.results import LAST_K

RowKey = tuple[str, str, str, str]  # setting, method, weighting, strategy
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
    *TASK_COLUMNS,
    *CELL_COLUMNS,
    "rounds",
    "clients",
    "wall_s",
    "run_dir",
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
    timings = Timings(grid.grid_dir / "timings.json").cells
    for cell in grid.cells():
        if not grid.finished(cell):
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
