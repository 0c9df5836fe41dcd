"""Everything a run writes under `results/<run-name>/`: metrics.jsonl (a line per round),
the aggregated shared arrays (every round), summary.json and plots (at the end), and, with
run config `tracking`, the same rounds and summary for TensorBoard or MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from common.metric_names import HEADLINE_METRICS
from common.storage import append_jsonl, atomic_write_arrays, atomic_write_bytes, atomic_write_json
from server.affinity import plot_affinity, run_affinity
from server.figures import pyplot, save_figure
from server.tracking import Tracker, open_tracker, round_scalars, summary_scalars

LAST_K = 5


class RunResults:
    def __init__(self, directory: str | Path, config: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.rounds: list[dict[str, Any]] = []
        self.started = time.time()
        self.stopped_early: str | None = None
        self.tracker: Tracker | None = None
        self._previous = read_metrics(self.metrics_path) if self.metrics_path.exists() else []
        self.metrics_path.unlink(missing_ok=True)
        (self.dir / "summary.json").unlink(missing_ok=True)
        atomic_write_json(self.dir / "config.json", config)

    def keep_rounds_until(self, last_round: int) -> None:
        """Start the run's records at `last_round` (0: a new run). On resume: keep the metrics
        of rounds up to the checkpoint, drop later ones (a crash may have logged a round whose
        checkpoint was never written). The tracker, if any, opens here, before training, so a
        missing package fails the run at its start."""
        self.rounds = [r for r in self._previous if r["round"] <= last_round]
        atomic_write_bytes(
            self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rounds).encode()
        )
        kind = self.config.get("tracking", "none")
        if kind != "none":
            self.tracker = open_tracker(kind, self.dir, self.config, resume=last_round > 0)

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    def log_round(self, row: dict[str, Any]) -> None:
        self.rounds.append(row)
        append_jsonl(self.metrics_path, row)
        if self.tracker is not None:
            self.tracker.log_round(int(row["round"]), round_scalars(row))

    def save_arrays(self, arrays: ArrayRecord, name: str = "shared_arrays.npz") -> None:
        atomic_write_arrays(self.dir / name, {k: np.asarray(v.numpy()) for k, v in arrays.items()})

    def finish(
        self, status: str, *, error: str | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        summary = build_summary(self.rounds, status=status, config=self.config)
        summary["wall_time_s"] = round(time.time() - self.started, 3)
        if self.stopped_early:
            summary["stopped_early"] = self.stopped_early
        if error:
            summary["error"] = error
        summary.update(extra or {})
        atomic_write_json(self.dir / "summary.json", summary)
        if self.tracker is not None:
            self.tracker.finish(summary, summary_scalars(summary))
            self.tracker = None
        if summary.get("affinity"):
            plot_affinity(
                summary["affinity"], self.dir / "affinity.png", self.config.get("run-name", "")
            )
        if any(r.get("per_task") for r in self.rounds):
            plot_per_task(
                self.rounds, self.dir / "per_task.png", title=self.config.get("run-name", "")
            )
        return summary


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a torn last line (a crash mid-append) is dropped."""
    lines = [x for x in Path(path).read_text().splitlines() if x.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return rows


def build_summary(
    rounds: list[dict[str, Any]], *, status: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Final-round per-task stats, last-k means of the per-round client means, totals."""
    evaluated = [r for r in rounds if r.get("per_task")]
    final = evaluated[-1] if evaluated else {}
    per_task: dict[str, Any] = {}
    for task, metrics in final.get("per_task", {}).items():
        per_task[task] = {}
        for name, stats in metrics.items():
            last = [
                r["per_task"][task][name]["mean"]
                for r in evaluated[-LAST_K:]
                if name in r["per_task"].get(task, {})
            ]
            per_task[task][name] = {**stats, f"last{LAST_K}_mean": float(np.mean(last))}
    affinity = run_affinity(rounds)
    return {
        **({"affinity": affinity} if affinity else {}),
        "status": status,
        "rounds": len(rounds),
        "final_round": rounds[-1]["round"] if rounds else 0,
        "run_name": config.get("run-name"),
        "per_task": per_task,
        "per_client": final.get("per_client", {}),
        "bytes_up": int(sum(r.get("bytes_up", 0) for r in rounds)),
        "bytes_down": int(sum(r.get("bytes_down", 0) for r in rounds)),
        "failures": int(sum(r.get("failures", 0) for r in rounds)),
        "config": config,
    }


def headline(task_metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The metric a task is judged by (`common.metric_names`): test accuracy for
    classification, MAE for regression, mIoU for segmentation, abs-rel for depth."""
    for name in (f"test/{m}" for m in HEADLINE_METRICS):
        if name in task_metrics:
            value = task_metrics[name]
            return name.split("/")[1], value["mean"] if isinstance(value, dict) else value
    return None


def plot_per_task(rounds: list[dict[str, Any]], path: Path, title: str = "") -> None:
    plt = pyplot()
    tasks = sorted({t for r in rounds for t in r.get("per_task", {})})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        xs, ys, label = [], [], ""
        for r in rounds:
            h = headline(r.get("per_task", {}).get(task, {}))
            if h:
                label = h[0]
                xs.append(r["round"])
                ys.append(h[1])
        ax.plot(xs, ys, marker=".")
        ax.set_title(task)
        ax.set_xlabel("round")
        ax.set_ylabel(f"test {label} (client mean)")
        ax.grid(alpha=0.3)
    save_figure(fig, path, title)
