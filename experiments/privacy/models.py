"""The attacked models: every client's deployed model rebuilt from a run's own outputs, the
models as round 1 starts, and the views of a multi-task model the attack library needs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from client.state import read_state_files
from client.train import build_model, evaluate
from common.algorithms import get_algorithm
from common.config import RunConfig
from common.federation import ClientData, Split, load_client_data
from common.metric_names import HEADLINE_METRICS
from common.models import MultiTaskModel
from common.storage import read_arrays
from common.tasks import TaskSpec
from experiments.privacy.membership import logit_confidence


@contextlib.contextmanager
def cached_accounting() -> Iterator[None]:
    """Memoise `client.dp.noise_multiplier` and `client.dp.epsilon` while attacks replay
    DP-SGD rounds: the σ search and the RDP accountant cost up to seconds per call on this box
    and are pure functions of their arguments, so every value is unchanged."""
    import client.dp as dp

    sigma, eps = dp.noise_multiplier, dp.epsilon

    @functools.cache
    def eps_of(history: tuple, delta: float) -> float:
        return eps(history, delta)

    dp.noise_multiplier = functools.lru_cache(maxsize=None)(sigma)
    dp.epsilon = lambda history, delta: eps_of(tuple(map(tuple, history)), delta)
    try:
        yield
    finally:
        dp.noise_multiplier, dp.epsilon = sigma, eps


@dataclass
class ClientModel:
    data: ClientData
    model: MultiTaskModel


def client_models(run_dir: Path, cfg: RunConfig) -> list[ClientModel]:
    """Every client's deployed model, rebuilt from what the run wrote.

    Start from `build_model` (the seeded init), load the client's private state from
    `<state-dir>/<federation>/client-<id>/state.npz` (for `local` that is the whole model),
    then the final shared encoder (`shared_arrays.npz`) and, where heads are federated, the
    server's averaged heads (`task_arrays.npz`): the same loading order as the ClientApp's
    evaluation."""
    algorithm = get_algorithm(cfg.algorithm)
    shared = read_arrays(run_dir / "shared_arrays.npz")
    heads_path = run_dir / "task_arrays.npz"
    heads = read_arrays(heads_path) if heads_path.exists() else {}
    out = []
    for cid in range(cfg.num_clients):
        data = load_client_data(cfg, cid, cfg.num_clients)
        model = build_model(cfg, data.tasks, data.input_shape, global_heads=algorithm.global_heads)
        private, _ = read_state_files(Path(cfg.state_dir) / cfg.federation_name / f"client-{cid}")
        state = model.state_dict()
        loaded = {**private, **shared, **{k: v for k, v in heads.items() if k in state}}
        unknown = sorted(set(loaded) - set(state))
        if unknown:
            raise ValueError(f"client {cid}: arrays {unknown[:3]} are not in its model")
        model.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in loaded.items()}, strict=False
        )
        model.eval()
        out.append(ClientModel(data, model))
    return out


def reconstruction_check(clients: Sequence[ClientModel], summary: dict[str, Any]) -> float:
    """Largest |difference| between the rebuilt models' test metrics and the run's own
    `per_client` entries: 0 means the attacks target exactly the models the run evaluated."""
    worst = 0.0
    for c in clients:
        reported = summary["per_client"][str(c.data.client_id)]
        for task, metrics in evaluate(c.model, c.data.test, c.data.tasks).items():
            for name in HEADLINE_METRICS:
                if name in metrics:
                    worst = max(worst, abs(metrics[name] - reported[task][f"test/{name}"]))
    return worst


# ---------------------------------------------------------------- losses and confidences


def stack_targets(split: Split, tasks: Sequence[TaskSpec]) -> Tensor:
    """(N, T) float targets, one column per task, so attack helpers can slice them by row."""
    return torch.stack([torch.from_numpy(split.y[t.name]).double() for t in tasks], dim=1)


class FlatOutputs(nn.Module):
    """A client model whose output is one (N, Σ output sizes) tensor in its task order: the
    attack library expects tensor outputs with one row per example."""

    def __init__(self, model: MultiTaskModel, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.model = model
        self.names = [t.name for t in tasks]

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return torch.cat([out[t] for t in self.names], dim=1)


def multitask_loss_fn(tasks: Sequence[TaskSpec]):
    """Per-example loss of a client on `FlatOutputs`: the sum of its tasks' losses (its EW
    training loss)."""
    widths = np.cumsum([0] + [t.output_size for t in tasks])

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        return sum(
            t.per_example_loss(out[:, widths[i] : widths[i + 1]], y[:, i])
            for i, t in enumerate(tasks)
        )

    return loss_fn


@torch.no_grad()
def confidence(model: nn.Module, split: Split, tasks: Sequence[TaskSpec]) -> np.ndarray:
    """LiRA statistic of a multi-task client: Σ over its tasks of the logit-scaled true-class
    confidence (classification) or −loss (regression, and dense tasks, whose loss is the
    mean over their pixels). Non-finite outputs (a diverged model) count as maximally
    unconfident."""
    model.eval()
    out = model(torch.from_numpy(split.x))
    phi = torch.zeros(len(split), dtype=torch.float64)
    for t in tasks:
        y = torch.from_numpy(split.y[t.name])
        if t.is_classification and not t.is_dense:
            phi += logit_confidence(out[t.name].double(), y).double()
        else:
            phi -= t.per_example_loss(out[t.name], y).double()
    return np.nan_to_num(phi.numpy(), nan=-1e6, posinf=1e6, neginf=-1e6)


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The ROC numbers a report needs (drops the counts and the unresolvable 0.1 % FPR)."""
    return {k: v for k, v in metrics.items() if k in ("auc", "advantage", "tpr_at_1pct_fpr")}


def initial_clients(cfg: RunConfig) -> list[ClientModel]:
    """Every client's model as round 1 starts: the seeded init (private state is empty)."""
    algorithm = get_algorithm(cfg.algorithm)
    out = []
    for cid in range(cfg.num_clients):
        data = load_client_data(cfg, cid, cfg.num_clients)
        out.append(
            ClientModel(
                data,
                build_model(cfg, data.tasks, data.input_shape, global_heads=algorithm.global_heads),
            )
        )
    return out
