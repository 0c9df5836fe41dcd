"""Two references outside Flower, run on exactly the federation's data and model code.

- **Centralized MTL**: the training splits of all clients pooled (each example keeps only the
  labels of the tasks its client holds), one model with every task of the dataset
  (`build_model`), trained for rounds × local-epochs epochs with the same optimizer,
  batch size and loss weighting, evaluated on every client's own validation and test split.
  Not private: an upper reference for what sharing everything would give.
- **Local single-task**: one model per client and task (`build_model` with that task only),
  trained on the client's own training split with `local_round` (the Flower `local`
  algorithm's own training function), same budget; the baseline Δm is measured against.

Clients come from `load_client_data(cfg, client, num_clients)`, the call the ClientApp makes
in simulation, so the splits are the federated runs' splits. Both write `metrics.jsonl` and
`summary.json` through the server's own `RunResults`, so every downstream number (per-task
stats, last-5 mean, worst 10 %) is computed by the same code as for the federated rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.train import (
    build_model,
    build_weighting,
    evaluate,
    local_round,
    round_generator,
    train_epochs,
)
from common.algorithms import get_algorithm
from common.config import RunConfig, parse_run_config
from common.datasets import dataset_tasks
from common.federation import ClientData, Split, load_client_data
from common.models import MultiTaskModel, count_parameters
from common.storage import atomic_write_json
from common.tasks import TaskSpec
from common.weighting import EqualWeighting
from experiments.kit.scores import mean_classification_accuracy
from server.metrics import per_task
from server.results import RunResults

CENTRALIZED = "centralized"
CENTRALIZED_TUNED = "centralized-tuned"
SINGLE_TASK = "single-task"
REFERENCES = (CENTRALIZED, CENTRALIZED_TUNED, SINGLE_TASK)
# Supplementary pooled reference: the learning rate chosen on validation from these (the
# first is the run config's default). Pooled data take clients × more steps per epoch than
# any client, and at the federation's lr the pooled model can diverge.
TUNED_LRS = (0.05, 0.02, 0.01)
# Batch-order stream of the pooled model: no simulated client has this id (ids seed a
# uint32 generator, so it stays small).
CENTRAL_CLIENT_ID = 10_000


def federation_clients(cfg: RunConfig) -> list[ClientData]:
    """Every client of the simulated federation, as its ClientApp loads it."""
    return [load_client_data(cfg, cid, cfg.num_clients) for cid in range(cfg.num_clients)]


def split_fingerprint(clients: list[ClientData]) -> dict[str, str]:
    """Hash of each client's train/val/test arrays: lets a test (or a reader) check that two
    runs used the same splits without storing the data."""
    out = {}
    for c in clients:
        h = hashlib.sha256()
        for split in (c.train, c.val, c.test):
            h.update(np.ascontiguousarray(split.x).tobytes())
            for t in sorted(split.y):
                h.update(t.encode())
                h.update(np.ascontiguousarray(split.y[t]).tobytes())
        out[str(c.client_id)] = h.hexdigest()[:16]
    return out


def missing_label(spec: TaskSpec, n: int, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Marker for 'this example has no label for the task' (its client does not hold it);
    `shape` is one example's label shape ((H, W) for dense tasks)."""
    if spec.kind in ("regression", "depth"):
        return np.full((n, *shape), np.nan, dtype=np.float32)
    return np.full((n, *shape), -1, dtype=np.int64)


def pooled_train(clients: list[ClientData], tasks: list[TaskSpec]) -> Split:
    """All clients' training splits concatenated; labels of tasks a client does not hold
    are marked missing (NaN / −1), so the pooled model sees exactly the federation's labels."""
    x = np.concatenate([c.train.x for c in clients])
    shapes = {t: v.shape[1:] for c in clients for t, v in c.train.y.items()}
    y = {
        t.name: np.concatenate(
            [
                c.train.y[t.name]
                if t.name in c.train.y
                else missing_label(t, len(c.train), shapes.get(t.name, ()))
                for c in clients
            ]
        )
        for t in tasks
    }
    return Split(x=x, y=y)


def masked_task_losses(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]):
    """Per-task loss over the examples that carry the task's label (a `train_epochs` loss
    function); a task with no label in the batch gives a constant that weighting skips."""
    out = model(x)
    losses = {}
    for name, spec in model.tasks.items():
        target = y[name]
        keep = ~torch.isnan(target) if spec.kind in ("regression", "depth") else target >= 0
        if spec.is_dense:  # an example's label map is missing as a whole
            keep = keep.flatten(1).all(dim=1)
        if bool(keep.any()):
            losses[name] = spec.loss(out[name][keep], target[keep])
        else:
            losses[name] = torch.zeros(())
    return losses, None


def client_metrics(
    model: MultiTaskModel, data: ClientData, tasks: tuple[TaskSpec, ...] | None = None
) -> dict[str, dict[str, float]]:
    """{task: {'val/<m>': .., 'test/<m>': .., 'n': len(test)}}, the ClientApp's evaluate
    reply as `server.metrics.per_client` turns it into numbers."""
    tasks = tasks or data.tasks
    out: dict[str, dict[str, float]] = {t.name: {} for t in tasks}
    for split_name, split in (("val", data.val), ("test", data.test)):
        for task, metrics in evaluate(model, split, tasks).items():
            out[task].update({f"{split_name}/{m}": float(v) for m, v in metrics.items()})
    for t in tasks:
        out[t.name]["n"] = float(len(data.test))
    return out


def run_centralized(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Pooled multi-task training; evaluated per client every 'round' (local-epochs epochs)."""
    torch.set_num_threads(1)
    clients = federation_clients(cfg)
    all_names = dataset_tasks(cfg)
    specs = {t.name: t for c in clients for t in c.tasks}
    tasks = [specs[n] for n in all_names if n in specs]
    model = build_model(cfg, tasks, clients[0].input_shape)
    weighting = build_weighting(cfg, [t.name for t in tasks], all_names, CENTRAL_CLIENT_ID)
    train = pooled_train(clients, tasks)
    results = RunResults(out_dir, _config(cfg, CENTRALIZED))
    for rnd in range(1, cfg.num_server_rounds + 1):
        torch.manual_seed(cfg.seed * 7919 + CENTRAL_CLIENT_ID + rnd)
        stats = train_epochs(
            model,
            train,
            weighting,
            cfg,
            epochs=cfg.local_epochs,
            generator=round_generator(cfg, CENTRAL_CLIENT_ID, rnd),
            loss_fn=masked_task_losses,
            extra_params=list(weighting.parameters()),
        )
        clients_metrics = {str(c.client_id): client_metrics(model, c) for c in clients}
        _log(results, rnd, stats.loss, clients_metrics)
    return results.finish(
        "completed",
        extra={
            "reference": CENTRALIZED,
            "splits": split_fingerprint(clients),
            "parameters": {"total": count_parameters(model), "train_examples": len(train)},
        },
    )


def run_centralized_tuned(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """Centralized MTL with the learning rate chosen on the clients' validation splits
    (final-round mean classification accuracy, else the negative validation loss) from
    `TUNED_LRS`, the rest as in `run_centralized`; the chosen run's files are copied up."""
    scores, summaries = {}, {}
    for lr in TUNED_LRS:
        summaries[lr] = run_centralized(dataclasses.replace(cfg, lr=lr), out_dir / f"lr{lr:g}")
        score = mean_classification_accuracy(summaries[lr], "val")
        if not math.isfinite(score):
            losses = [m["val/loss"]["mean"] for m in summaries[lr]["per_task"].values()]
            score = -sum(losses)
        scores[lr] = score
    best = max(TUNED_LRS, key=lambda lr: scores[lr])
    for name in ("metrics.jsonl", "per_task.png"):
        if (out_dir / f"lr{best:g}" / name).exists():
            shutil.copyfile(out_dir / f"lr{best:g}" / name, out_dir / name)
    summary = {
        **summaries[best],
        "config": _config(cfg, CENTRALIZED_TUNED),
        "reference": CENTRALIZED_TUNED,
        "selected_lr": best,
        "validation_by_lr": {f"{lr:g}": v for lr, v in scores.items()},
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def run_single_task(cfg: RunConfig, out_dir: Path) -> dict[str, Any]:
    """One model per (client, task) trained by `local_round` under the `local` algorithm."""
    torch.set_num_threads(1)
    clients = federation_clients(cfg)
    local = get_algorithm("local")
    models = {}
    for c in clients:
        for spec in c.tasks:
            one = dataclasses.replace(c, tasks=(spec,))
            models[(c.client_id, spec.name)] = (
                one,
                build_model(cfg, one.tasks, one.input_shape),
                EqualWeighting([spec.name]),  # one task: nothing to weight
            )
    results = RunResults(out_dir, _config(cfg, SINGLE_TASK))
    for rnd in range(1, cfg.num_server_rounds + 1):
        clients_metrics: dict[str, dict[str, dict[str, float]]] = {}
        losses = []
        for (cid, _), (one, model, weighting) in models.items():
            stats = local_round(model, one, weighting, cfg, rnd, local)
            losses.append(stats.loss)
            clients_metrics.setdefault(str(cid), {}).update(client_metrics(model, one))
        _log(results, rnd, float(np.mean(losses)), clients_metrics)
    per_client_params = {}
    for (cid, _), (_, model, _) in models.items():
        per_client_params[str(cid)] = per_client_params.get(str(cid), 0) + count_parameters(model)
    return results.finish(
        "completed",
        extra={
            "reference": SINGLE_TASK,
            "splits": split_fingerprint(clients),
            "parameters": {"private_per_client": per_client_params},
        },
    )


def run_reference(kind: str, overrides: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Entry point for the grid (also in a worker process): runs one reference, returns
    {'status', 'wall_s', 'error'?}; results go to `out_dir` like a federated run's."""
    t0 = time.perf_counter()
    cfg = parse_run_config(overrides)
    runner = {
        CENTRALIZED: run_centralized,
        CENTRALIZED_TUNED: run_centralized_tuned,
        SINGLE_TASK: run_single_task,
    }[kind]
    try:
        summary = runner(cfg, Path(out_dir))
    except Exception as err:  # reported per cell; the grid goes on
        RunResults(Path(out_dir), _config(cfg, kind)).finish(
            "failed", error=f"{type(err).__name__}: {err}"
        )
        return {"status": "failed", "wall_s": time.perf_counter() - t0, "error": str(err)}
    return {"status": summary["status"], "wall_s": time.perf_counter() - t0}


def _config(cfg: RunConfig, kind: str) -> dict[str, Any]:
    return {**cfg.to_dict(), "run-name": cfg.name, "digest": cfg.digest(), "reference": kind}


def _log(
    results: RunResults,
    rnd: int,
    loss: float,
    clients: dict[str, dict[str, dict[str, float]]],
) -> None:
    results.log_round(
        {
            "round": rnd,
            "clients": len(clients),
            "failures": 0,
            "train_loss": loss,
            "bytes_up": 0,
            "bytes_down": 0,
            "per_task": per_task(clients),
            "per_client": clients,
        }
    )
