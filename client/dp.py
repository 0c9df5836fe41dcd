"""Sample-level DP-SGD on a client's whole local model (encoder and heads) with Opacus.

ε is cumulative: the accountant's history — (noise multiplier, sample rate, steps) per round
— lives in the client's private state (memory and state dir), so every round's ε accounts for
all rounds before it, across restarts and resumes. A round that would take ε past the budget
is refused before it trains. Heads are trained under DP too: heads trained without it would
shape later encoder gradients and void the guarantee on the released encoder. The Gaussian
noise and the Poisson sampling come from OS entropy (`common.randomness`), not from the run
seed, so the server cannot regenerate them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, TensorDataset

from client.train import TrainStats, model_device
from common.config import RunConfig
from common.federation import ClientData
from common.models import MultiTaskModel
from common.randomness import dp_noise_seed, noise_generator, warn_seeded_noise
from common.weighting import Weighting

History = list[tuple[float, float, int]]


class PrivacyBudgetExhausted(RuntimeError):
    """The client refuses to train: one more round would exceed its ε budget."""


def epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """ε after `history`, from Opacus's RDP accountant (0 before any step)."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta))


def sample_rate(cfg: RunConfig, n: int) -> float:
    return min(1.0, cfg.batch_size / max(n, 1))


def steps_per_round(cfg: RunConfig, n: int) -> int:
    return cfg.local_epochs * math.ceil(1.0 / sample_rate(cfg, n))


def noise_multiplier(cfg: RunConfig, n: int) -> float:
    """`dp-noise-multiplier`, or (when 0) the σ that spends `dp-epsilon` over all rounds."""
    if cfg.dp_noise_multiplier > 0:
        return cfg.dp_noise_multiplier
    return float(
        get_noise_multiplier(
            target_epsilon=cfg.dp_epsilon,
            target_delta=cfg.dp_delta,
            sample_rate=sample_rate(cfg, n),
            steps=cfg.num_server_rounds * steps_per_round(cfg, n),
            accountant="rdp",
        )
    )


def unreached_parameters(model: MultiTaskModel, x: torch.Tensor) -> list[torch.nn.Parameter]:
    """Trainable parameters that no output of the client's tasks depends on, found from
    the autograd graph of one forward pass (nothing is updated): when every task of a
    client is dense, the encoder's projection after its feature map. SGD leaves them as
    they are; Opacus would refuse them, so DP-SGD freezes them for the round."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    torch.stack([o.float().sum() for o in out.values()]).sum().backward()
    idle = [p for p in model.parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return idle


def dp_round(
    model: MultiTaskModel,
    data: ClientData,
    weighting: Weighting,
    cfg: RunConfig,
    server_round: int,
    history: History,
) -> tuple[TrainStats, History, float]:
    """One round of DP-SGD (Poisson sampling, per-example clipping, Gaussian noise), on the
    model's device (batches are moved there; mixed precision is refused under DP-SGD).

    Returns the stats, the extended accountant history and the cumulative ε."""
    n = len(data.train)
    sigma, q = noise_multiplier(cfg, n), sample_rate(cfg, n)
    planned = [*history, (sigma, q, steps_per_round(cfg, n))]
    projected = epsilon(planned, cfg.dp_delta)
    if projected > cfg.dp_epsilon * (1 + 1e-6):
        raise PrivacyBudgetExhausted(
            f"client {data.client_id}: round {server_round} would bring ε to {projected:.3f}, "
            f"past its budget dp-epsilon = {cfg.dp_epsilon} (δ = {cfg.dp_delta}); it has spent "
            f"ε = {epsilon(history, cfg.dp_delta):.3f} and refuses to train further"
        )
    torch.manual_seed(cfg.seed * 7919 + data.client_id * 31 + server_round)
    # Noise and Poisson sampling draw from their own generator, never from the seeded global
    # stream above: the server knows every input of that stream and could replay the noise.
    # Opacus's Poisson loader takes the generator of the loader it wraps.
    seed = dp_noise_seed(cfg, data.client_id, server_round)
    if seed is not None:
        warn_seeded_noise(f"client {data.client_id}, round {server_round}")
    # Poisson sampling runs on the CPU; Opacus draws the noise on the parameters' device.
    device = model_device(model)
    sampling = noise_generator(seed)
    noise = sampling if device.type == "cpu" else noise_generator(seed, device)
    names = list(model.tasks)
    dataset = TensorDataset(
        torch.from_numpy(data.train.x), *(torch.from_numpy(data.train.y[t]) for t in names)
    )
    loader = DataLoader(dataset, batch_size=cfg.batch_size, generator=sampling)
    idle = unreached_parameters(model, torch.from_numpy(data.train.x[:1]).to(device))
    for p in idle:  # Opacus needs a per-example gradient for every trainable parameter
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    engine = PrivacyEngine(accountant="rdp")
    # Opacus refuses a module in eval mode, and a round that first evaluates what it
    # received (its evaluation rides on the training message) leaves the model in it.
    model.train()
    private_model, private_opt, private_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=cfg.dp_max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise,
    )
    shared = list(model.encoder.parameters())
    totals = dict.fromkeys(names, 0.0)
    drawn = 0
    try:
        private_model.train()
        for _ in range(cfg.local_epochs):
            for x, *ys in private_loader:
                drawn += 1
                if len(x) == 0:
                    continue  # counted in `drawn`: the accountant stays conservative
                out = private_model(x.to(device))
                losses = {
                    t: model.tasks[t].loss(out[t], y.to(device))
                    for t, y in zip(names, ys, strict=True)
                }
                private_opt.zero_grad(set_to_none=True)
                weighting.backward(losses, shared)
                private_opt.step()
                for t, value in losses.items():
                    totals[t] += float(value.detach())
    finally:
        private_model._close()  # remove Opacus hooks: the module is used again outside DP
        for p in idle:
            p.requires_grad_(True)
    new_history = [*history, (sigma, q, drawn)]
    mean = {t: v / max(drawn, 1) for t, v in totals.items()}
    stats = TrainStats(float(sum(mean.values())), mean, drawn, n)
    return stats, new_history, epsilon(new_history, cfg.dp_delta)
