"""Experiment tracking (run-config key `tracking`): the run's config, every round's metrics and
the final summary, also sent to TensorBoard or MLflow, from the server side.

It receives what `metrics.jsonl` and `summary.json` hold and nothing else (no arrays, no
client state): per round and task, the client mean and spread of each metric, the train
loss, bytes up and down, and ε where the run accounts one. Both back ends write under the run's
results folder, with no server to start:

- TensorBoard: event files in `<run>/tb` (written with tensorboardX, which needs no
  TensorFlow or tensorboard package); `tensorboard --logdir results` shows them.
- MLflow: a SQLite store `<run>/mlflow.db` (MLflow's file store is in maintenance mode) and
  artifacts in `<run>/mlartifacts`; one MLflow run per fedmtl run, continued on resume.

Both packages come with the optional extra `fedmtl[tracking]`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from common.config import ConfigError

EXTRA = "pip install 'fedmtl[tracking]'"
# The per-task statistics of `server.metrics.per_task` that are logged (not the client count).
STATS = ("mean", "std", "worst10", "weighted")


class Tracker(Protocol):
    def log_round(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def finish(self, summary: Mapping[str, Any], scalars: Mapping[str, float]) -> None: ...


def round_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The scalars of one metrics.jsonl row: `<task>/<split>/<metric>/<stat>` for the full
    evaluation's per-task statistics (`sampled/...` for a sampled one), and the round's train
    loss, clients, failures, bytes, seconds and ε."""
    out: dict[str, float] = {}
    for prefix, key in (("", "per_task"), ("sampled/", "sampled_per_task")):
        for task, metrics in row.get(key, {}).items():
            for metric, stats in metrics.items():
                for stat in STATS:
                    if stat in stats:
                        out[f"{prefix}{task}/{metric}/{stat}"] = float(stats[stat])
    for key in ("train_loss", "clients", "failures", "bytes_up", "bytes_down", "seconds"):
        if row.get(key) is not None:
            out[f"round/{key}"] = float(row[key])
    eps = list(row.get("dp_epsilon", {}).values())
    if eps:
        out["privacy/dp_epsilon_max"] = float(max(eps))
        out["privacy/dp_epsilon_mean"] = float(sum(eps) / len(eps))
    if "central_dp" in row:
        out["privacy/central_epsilon"] = float(row["central_dp"]["epsilon"])
        out["privacy/central_delta"] = float(row["central_dp"]["delta"])
        if "epsilon_amplified" in row["central_dp"]:
            out["privacy/central_epsilon_amplified"] = float(row["central_dp"]["epsilon_amplified"])
    return out


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The final summary's numbers: `final/<task>/<split>/<metric>/<stat>` (with the
    last-rounds mean) and the run's totals."""
    out: dict[str, float] = {}
    for task, metrics in summary.get("per_task", {}).items():
        for metric, stats in metrics.items():
            for stat, value in stats.items():
                if stat != "clients" and isinstance(value, int | float):
                    out[f"final/{task}/{metric}/{stat}"] = float(value)
    for key in ("rounds", "bytes_up", "bytes_down", "failures", "wall_time_s"):
        if key in summary:
            out[f"final/{key}"] = float(summary[key])
    return out


def open_tracker(kind: str, run_dir: Path, config: Mapping[str, Any], *, resume: bool) -> Tracker:
    """The tracker for run config `tracking` = `kind` ('tensorboard' or 'mlflow'); a missing
    package is a ConfigError that says how to install it."""
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir / "tb", config, resume=resume)
    if kind == "mlflow":
        return MlflowTracker(run_dir, config, resume=resume)
    raise ConfigError(f"run config 'tracking' = '{kind}': no such tracker")


def _require(module: str, kind: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ConfigError(
            f"run config 'tracking' = '{kind}' needs the '{module}' package ({err}); "
            f"install it with {EXTRA}"
        ) from None


class TensorBoardTracker:
    """Scalars per round (step = round) and the config and summary as text."""

    def __init__(self, logdir: Path, config: Mapping[str, Any], *, resume: bool) -> None:
        tbx = _require("tensorboardX", "tensorboard")
        if not resume:  # a new run under the same name replaces the old curves
            shutil.rmtree(logdir, ignore_errors=True)
        self.writer = tbx.SummaryWriter(logdir=str(logdir))
        self.writer.add_text("config", _as_code(config))

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def finish(self, summary: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
        step = int(summary.get("final_round", 0))
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_text("summary", _as_code(summary), step)
        self.writer.close()


class MlflowTracker:
    """One MLflow run: the config as params, scalars per round (step = round), the final
    numbers as metrics, summary.json as an artifact, and the run's status."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], *, resume: bool) -> None:
        _require("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.run_dir = run_dir.resolve()
        self.client = MlflowClient(tracking_uri=mlflow_uri(self.run_dir))
        experiment = self.client.get_experiment_by_name("fedmtl")
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(
                "fedmtl", artifact_location=(self.run_dir / "mlartifacts").as_uri()
            )
        )
        digest = str(config.get("digest", ""))
        previous = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`fedmtl.digest` = '{digest}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if resume and previous:
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(
            experiment_id,
            run_name=str(config.get("run-name", "")) or None,
            tags={"fedmtl.digest": digest},
        )
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in sorted(config.items())]
        for batch in _chunks(params, 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=batch)

    def log_round(self, step: int, scalars: Mapping[str, float]) -> None:
        self._log(scalars, step)

    def finish(self, summary: Mapping[str, Any], scalars: Mapping[str, float]) -> None:
        self._log(scalars, int(summary.get("final_round", 0)))
        path = self.run_dir / "summary.json"
        if path.exists():
            self.client.log_artifact(self.run_id, str(path))
        status = "FINISHED" if summary.get("status") == "completed" else "FAILED"
        self.client.set_terminated(self.run_id, status=status)

    def _log(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in scalars.items()]
        for batch in _chunks(metrics, 1000):
            self.client.log_batch(self.run_id, metrics=batch)


def mlflow_uri(run_dir: Path) -> str:
    """The SQLite tracking URI of a run's MLflow store (for `MlflowClient` and `mlflow ui`)."""
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _as_code(value: Any) -> str:
    """JSON in a Markdown code block (TensorBoard renders text as Markdown)."""
    return "```\n" + json.dumps(value, indent=1, sort_keys=True, default=str) + "\n```"
