"""Local training and evaluation as plain functions (no Flower): the ClientApp, the bare-loop
benchmark and the centralized reference all call these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common.config import RunConfig
from common.federation import ClientData, Split
from common.models import MultiTaskModel, build_encoder
from common.tasks import TaskSpec
from common.weighting import Weighting, make_weighting


def build_model(
    cfg: RunConfig, tasks: Sequence[TaskSpec], input_shape: tuple[int, ...]
) -> MultiTaskModel:
    """The client's model. The encoder is built from the run seed (as on the server); heads
    from (seed, task), so clients holding a task start from the same head."""
    encoder = build_encoder(
        cfg.architecture,
        cfg.encoder,
        input_shape,
        cfg.hidden,
        cfg.num_blocks,
        cfg.num_experts,
        cfg.seed,
    )
    return MultiTaskModel(encoder, tasks, seed=cfg.seed)


def build_weighting(
    cfg: RunConfig, task_names: Sequence[str], all_tasks: Sequence[str], client_id: int = 0
) -> Weighting:
    options = cfg.weighting_options(client_id)
    if cfg.weighting == "static":
        options["static_weights"] = cfg.static_alphas(list(all_tasks))
    return make_weighting(cfg.weighting, task_names, options)


@dataclass
class TrainStats:
    loss: float
    task_loss: dict[str, float]
    steps: int
    num_examples: int


def train_epochs(
    model: MultiTaskModel,
    split: Split,
    tasks: Sequence[TaskSpec],
    weighting: Weighting,
    *,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    shared_params: Sequence[torch.Tensor] | None = None,
) -> TrainStats:
    """Minibatch training of the model's trainable parameters for `epochs` epochs.

    `shared_params` are the parameters every task uses (the encoder): the weighting method
    decides their gradient; each head gets its own task's gradient.
    """
    shared = list(shared_params if shared_params is not None else model.encoder.parameters())
    x_all = torch.from_numpy(split.x)
    y_all = {t.name: torch.from_numpy(split.y[t.name]) for t in tasks}
    n = len(split)
    model.train()
    totals = {t.name: 0.0 for t in tasks}
    steps = 0
    for _ in range(epochs):
        epoch = {t.name: 0.0 for t in tasks}
        batches = 0
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            out = model(x_all[idx])
            losses = {t.name: t.loss(out[t.name], y_all[t.name][idx]) for t in tasks}
            optimizer.zero_grad(set_to_none=True)
            weighting.backward(losses, shared)
            optimizer.step()
            for name, value in losses.items():
                epoch[name] += float(value.detach())
            batches += 1
        epoch_means = {k: v / max(batches, 1) for k, v in epoch.items()}
        weighting.end_epoch(epoch_means)
        for k, v in epoch_means.items():
            totals[k] += v / epochs
        steps += batches
    return TrainStats(
        loss=float(sum(totals.values())), task_loss=totals, steps=steps, num_examples=n
    )


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, split: Split, tasks: Sequence[TaskSpec]
) -> dict[str, dict[str, float]]:
    """Per-task metrics and loss on a split."""
    model.eval()
    if len(split) == 0:
        return {}
    out = model(torch.from_numpy(split.x))
    results = {}
    for t in tasks:
        y = split.y[t.name]
        metrics = t.metrics(y, t.predict(out[t.name]))
        metrics["loss"] = float(t.loss(out[t.name], torch.from_numpy(y)))
        results[t.name] = metrics
    return results


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def round_generator(cfg: RunConfig, client_id: int, server_round: int) -> torch.Generator:
    """Batch order is a function of (seed, client, round): the same seed replays a run."""
    g = torch.Generator()
    g.manual_seed(int(np.uint32(cfg.seed * 1_000_003 + client_id * 10_007 + server_round)))
    return g


def local_round(
    model: MultiTaskModel, data: ClientData, weighting: Weighting, cfg: RunConfig, server_round: int
) -> TrainStats:
    """One round of local training with the `joint` (fedper) schedule."""
    torch.manual_seed(cfg.seed * 7919 + data.client_id * 31 + server_round)
    params = list(model.parameters()) + list(weighting.parameters())
    optimizer = make_optimizer(params, cfg)
    return train_epochs(
        model,
        data.train,
        data.tasks,
        weighting,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        optimizer=optimizer,
        generator=round_generator(cfg, data.client_id, server_round),
    )
