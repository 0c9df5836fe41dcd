"""Inter-task affinity, measured on a client from its own tasks and data (`task-affinity`).

Two measures, both on the shared encoder, at the model a round starts from (the received
encoder with the client's private heads), on `affinity-batches` random training batches:

- `cos`: cosine similarity of two tasks' loss gradients on the encoder's weight tensors
  (biases and norm parameters left out, as TAG's cosine baseline does). Symmetric.
- `tag`: TAG's lookahead affinity (Fifty et al., NeurIPS 2021) of task i onto task j:
  Z_{i→j} = (1 − L_j(θ − η·g_i) / L_j(θ)) / η, where θ − η·g_i is a plain SGD step of the
  encoder on task i alone (η = `lr`), on the same batch. Z > 0: a step for i helps j.

Only these numbers leave the client, as `affinity/<cos|tag>/<i>/<j>` entries of the reply's
`task-metrics` record with the number of batches measured; the server averages them over the
clients that hold both tasks (`server.affinity`). TAG measures during training; measuring at
each round's starting point keeps the training itself untouched (its batches, its random
state) and still follows the model through the run.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from common.federation import Split
from common.models import MultiTaskModel
from common.records import AFFINITY, AFFINITY_BATCHES

TINY_LOSS = 1e-12  # a task already at zero loss on the batch gives no ratio


def measure_affinity(
    model: MultiTaskModel,
    split: Split,
    *,
    batches: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> dict[str, float | int]:
    """The client's affinity entries (empty with fewer than two tasks or no data)."""
    names = list(model.tasks)
    if len(names) < 2 or len(split) == 0:
        return {}
    device = next(model.parameters()).device
    shared = [(n, p) for n, p in model.named_parameters() if n.startswith("encoder.")]
    weights = [i for i, (_, p) in enumerate(shared) if p.dim() > 1]
    state = {n: p.detach() for n, p in model.named_parameters()}
    state |= {n: b for n, b in model.named_buffers()}
    k = len(names)
    cos, tag = torch.zeros(k, k, dtype=torch.float64), torch.zeros(k, k, dtype=torch.float64)
    was_training = model.training
    model.train()
    try:
        for _ in range(batches):
            idx = torch.randperm(len(split), generator=generator)[:batch_size].numpy()
            x = torch.from_numpy(split.x[idx]).to(device)
            y = {t: torch.from_numpy(split.y[t][idx]).to(device) for t in names}
            out = model(x)
            losses = [model.tasks[t].loss(out[t], y[t]) for t in names]
            grads = [
                torch.autograd.grad(
                    loss, [p for _, p in shared], retain_graph=True, allow_unused=True
                )
                for loss in losses
            ]
            flat = [_flatten(g, shared, weights) for g in grads]
            for i in range(k):
                for j in range(k):
                    cos[i, j] += float(torch.nn.functional.cosine_similarity(flat[i], flat[j], 0))
            with torch.no_grad():
                before = [float(v) for v in losses]
                for i in range(k):
                    stepped = {
                        n: p.detach() - lr * g if g is not None else p.detach()
                        for (n, p), g in zip(shared, grads[i], strict=True)
                    }
                    ahead = functional_call(model, {**state, **stepped}, (x,))
                    for j, t in enumerate(names):
                        if before[j] > TINY_LOSS:
                            after = float(model.tasks[t].loss(ahead[t], y[t]))
                            tag[i, j] += (1.0 - after / before[j]) / lr
    finally:
        model.train(was_training)
    entries: dict[str, float | int] = {AFFINITY_BATCHES: batches}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                entries[f"{AFFINITY}cos/{a}/{b}"] = float(cos[i, j]) / batches
                entries[f"{AFFINITY}tag/{a}/{b}"] = float(tag[i, j]) / batches
    return entries


def _flatten(
    grads: tuple[torch.Tensor | None, ...],
    shared: list[tuple[str, torch.nn.Parameter]],
    weights: list[int],
) -> torch.Tensor:
    parts = [
        (grads[i] if grads[i] is not None else torch.zeros_like(shared[i][1])).flatten()
        for i in weights
    ]
    return torch.cat(parts).double()
