"""Local training and evaluation as plain functions (no Flower): the ClientApp, the bare-loop
benchmark, the GPU benchmark and the centralized reference all call these.

Training and evaluation run where the model's parameters are: `build_model(..., device=...)`
places the model, and every function here moves its batches there. Mixed precision (`amp`)
applies to the training step's forward pass only; evaluation runs in float32."""

from __future__ import annotations

import copy
import dataclasses
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from common.algorithms import Algorithm
from common.config import RunConfig
from common.device import autocast, grad_scaler
from common.federation import ClientData, Split
from common.models import MultiTaskModel, encoder_for
from common.tasks import TaskSpec
from common.weighting import EqualWeighting, Weighting, make_weighting

# (model, x, targets) -> (per-task losses the weighting method sees, extra loss or None)
LossFn = Callable[
    [MultiTaskModel, torch.Tensor, dict[str, torch.Tensor]],
    tuple[dict[str, torch.Tensor], torch.Tensor | None],
]


def build_model(
    cfg: RunConfig,
    tasks: Sequence[TaskSpec],
    input_shape: tuple[int, ...],
    *,
    global_heads: bool = False,
    device: torch.device | str = "cpu",
) -> MultiTaskModel:
    """The client's model, on `device`. The encoder is built from the run seed (as on the
    server); heads from (seed, task), so clients holding a task start from the same head.
    Weights are initialised on the CPU and then moved, so every device starts from the same
    values."""
    encoder = encoder_for(cfg, input_shape)
    model = MultiTaskModel(encoder, tasks, seed=cfg.seed, global_heads=global_heads)
    return model.to(device)


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters live (the device its batches must go to)."""
    return next(model.parameters()).device


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient × `scale` backward: fp16 loss scaling that leaves the loss
    values the weighting method sees (and the logged losses) unscaled."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def build_weighting(
    cfg: RunConfig, task_names: Sequence[str], all_tasks: Sequence[str], client_id: int = 0
) -> Weighting:
    """The configured weighting for a client's tasks. `static-weights` lists α in the dataset's
    task order (`all_tasks`); the method takes them by task name."""
    options = cfg.weighting_options(client_id)
    if "static_weights" in options:
        options["static_weights"] = cfg.static_alphas(list(all_tasks))
    return make_weighting(cfg.weighting, task_names, options)


@dataclass
class TrainStats:
    loss: float
    task_loss: dict[str, float]
    steps: int
    num_examples: int


def task_losses(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]):
    out = model(x)
    return {t: spec.loss(out[t], y[t]) for t, spec in model.tasks.items()}, None


def fedrod_losses(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]):
    """FedRoD: the generic heads (and the encoder) learn the plain task loss, which is what
    the federation averages; each private head learns, on detached features, a correction on
    top of the detached generic output. With IID data the generic path is FedAvg's; with
    skewed data the private correction personalizes."""
    feats = model.features(x)
    generic, personal = {}, []
    for t, spec in model.tasks.items():
        g = model.global_heads[t](feats[t])
        generic[t] = spec.loss(g, y[t])
        corrected = g.detach() + model.heads[t](feats[t].detach())
        personal.append(spec.loss(corrected, y[t]))
    return generic, torch.stack(personal).sum()


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily exclude modules from training (requires_grad off)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def train_epochs(
    model: MultiTaskModel,
    split: Split,
    weighting: Weighting,
    cfg: RunConfig,
    *,
    epochs: int,
    generator: torch.Generator,
    loss_fn: LossFn = task_losses,
    grad_hook: Callable[[], None] | None = None,
    extra_params: Sequence[torch.Tensor] = (),
) -> TrainStats:
    """Minibatch SGD on the model's trainable parameters for `epochs` epochs, on the model's
    device (the split goes there once), under the run's `amp`.

    The weighting method decides the encoder's gradient (the parameters every task uses);
    each head gets its own task's gradient. `grad_hook` runs after backward (proximal terms;
    under fp16, on the unscaled gradients). Losses are summed on the device in float64, read
    once per epoch: a read per step would wait for the GPU every step.
    """
    device = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    grad_hook = with_clipping(grad_hook, params, cfg.max_grad_norm)
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    scaler = grad_scaler(cfg.amp, device)
    x_all = torch.from_numpy(split.x).to(device)
    y_all = {t: torch.from_numpy(split.y[t]).to(device) for t in model.tasks}
    names = list(model.tasks)
    model.train()
    totals = dict.fromkeys(names, 0.0)
    steps = 0
    for _ in range(epochs):
        summed = torch.zeros(len(names), dtype=torch.float64, device=device)
        batches = 0
        order = torch.randperm(len(split), generator=generator).to(device)
        for idx in order.split(cfg.batch_size):
            with autocast(cfg.amp, device):
                losses, extra = loss_fn(model, x_all[idx], {t: v[idx] for t, v in y_all.items()})
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                if extra is not None:
                    extra.backward()
                weighting.backward(losses, shared)
                if grad_hook is not None:
                    grad_hook()
                optimizer.step()
            else:
                scaled_step(scaler, optimizer, weighting, losses, extra, shared, grad_hook, device)
            summed += torch.stack([losses[t].detach().float() for t in names]).double()
            batches += 1
        means = {t: v / max(batches, 1) for t, v in zip(names, summed.tolist(), strict=True)}
        weighting.end_epoch(means)
        for k, v in means.items():
            totals[k] += v / epochs
        steps += batches
    return TrainStats(float(sum(totals.values())), totals, steps, len(split))


def with_clipping(
    then: Callable[[], None] | None, params: Sequence[torch.Tensor], max_norm: float
) -> Callable[[], None] | None:
    """`then`, followed by clipping the gradient norm over `params` to `max_norm`
    (`max-grad-norm`; 0 leaves the hook as it is). It runs where the hook runs: after the
    weighting method's backward and, under fp16, on the unscaled gradients, so the norm is
    the true one. A client whose steps overshoot (a sharp regression head at a high lr)
    then takes steps from gradients of norm at most `max_norm` instead of diverging."""
    if max_norm <= 0:
        return then

    def hook() -> None:
        if then is not None:
            then()
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    return hook


def scaled_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    weighting: Weighting,
    losses: dict[str, torch.Tensor],
    extra: torch.Tensor | None,
    shared: Sequence[torch.Tensor],
    grad_hook: Callable[[], None] | None,
    device: torch.device,
) -> None:
    """One fp16 step: gradients scaled through the losses (so the weighting method sees the
    true loss values), unscaled before the hook, and the step skipped on inf/NaN."""
    scale = scaler.scale(torch.ones((), device=device))
    if extra is not None:
        _ScaleGradient.apply(extra, scale).backward()
    weighting.backward({t: _ScaleGradient.apply(v, scale) for t, v in losses.items()}, shared)
    scaler.unscale_(optimizer)
    if grad_hook is not None:
        grad_hook()
    scaler.step(optimizer)
    scaler.update()


def proximal_hook(
    model: nn.Module, anchor: dict[str, torch.Tensor], mu: float
) -> Callable[[], None]:
    """Adds μ(w − w_anchor) to the gradient of the anchored parameters: the gradient of
    μ/2‖w − w_anchor‖² (FedProx's proximal term, Ditto's pull toward the global model)."""
    named = dict(model.named_parameters())
    pairs = [(named[k], v) for k, v in anchor.items() if k in named]

    def hook() -> None:
        for p, a in pairs:
            if p.grad is not None:
                p.grad.add_(p.detach() - a, alpha=mu)

    return hook


def fedrep_body_hook(
    model: MultiTaskModel, cfg: RunConfig, then: Callable[[], None] | None
) -> Callable[[], None] | None:
    """FedRep's body phase clips the encoder's gradient norm to `fedrep-max-grad-norm`.

    The heads were just fitted to the frozen encoder, so the encoder's loss is sharp there (a
    regression head fitted on weak features has a high gain): unclipped, a client's step
    overshoots and kills ReLU units, and averaging hands the dead units to every client.
    Measured on MultiDigits (α = 0.5, 10 rounds, bare loop): without it the averaged encoder
    had 39 % / 64 % dead units and FedRep stayed at majority-class accuracy."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    return with_clipping(then, params, cfg.fedrep_max_grad_norm)


EVAL_CHUNK = 1024  # at most this many examples per forward pass in evaluation
EVAL_ACTIVATION_BYTES = 16 * 2**20  # and about at most this much in its largest activation


# Per model and input shape: activation sizes depend on the architecture and the input, not
# on the weights, so a model (a warm actor keeps its clients' models) is probed once.
_EVAL_ROWS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], int]] = (
    weakref.WeakKeyDictionary()
)


def eval_rows(model: MultiTaskModel, row_shape: tuple[int, ...]) -> int:
    """Examples per forward pass in evaluation: `EVAL_CHUNK`, or fewer where one example's
    largest activation (measured by hooks on a one-example probe) would make a pass hold
    more than `EVAL_ACTIVATION_BYTES` in it. A ResNet's first stage on 64×64 images holds
    256 KiB per example: 1,024 of them would hold 256 MiB per tensor. Memory, not results:
    8×16 digits and tabular inputs stay at `EVAL_CHUNK`."""
    known = _EVAL_ROWS.setdefault(model, {})
    if row_shape not in known:
        known[row_shape] = _probe_rows(model, row_shape)
    return known[row_shape]


def _probe_rows(model: MultiTaskModel, row_shape: tuple[int, ...]) -> int:
    largest = 0

    def measure(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                largest = max(largest, out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(measure) for m in leaves]
    try:
        model(torch.zeros((1, *row_shape), device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return max(1, min(EVAL_CHUNK, EVAL_ACTIVATION_BYTES // max(largest, 1)))


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, split: Split, tasks: Sequence[TaskSpec]
) -> dict[str, dict[str, float]]:
    """Per-task metrics and loss on a split, in float32, on the model's device; the outputs
    come back to the CPU, where the metrics and losses are computed."""
    model.eval()
    if len(split) == 0:
        return {}
    device = model_device(model)
    rows = eval_rows(model, tuple(split.x.shape[1:]))
    chunks = [
        model(torch.from_numpy(split.x[i : i + rows]).to(device))
        for i in range(0, len(split), rows)
    ]
    out = {t.name: torch.cat([c[t.name] for c in chunks]).cpu() for t in tasks}
    results = {}
    for t in tasks:
        y = split.y[t.name]
        metrics = t.metrics(y, t.predict(out[t.name]))
        metrics["loss"] = float(t.loss(out[t.name], torch.from_numpy(y)))
        results[t.name] = metrics
    return results


def round_generator(
    cfg: RunConfig, client_id: int, server_round: int, stream: int = 0
) -> torch.Generator:
    """Batch order is a function of (seed, client, round): the same seed replays a run."""
    g = torch.Generator()
    g.manual_seed(
        int(np.uint32(cfg.seed * 1_000_003 + client_id * 10_007 + server_round * 7 + stream))
    )
    return g


def train_heads(
    model: MultiTaskModel, data: ClientData, cfg: RunConfig, epochs: int, gen: torch.Generator
) -> TrainStats:
    """Heads only, the encoder frozen (FedRep's head phase, FedAvg-FT's fine-tuning)."""
    with frozen(model.encoder):
        return train_epochs(
            model, data.train, EqualWeighting(data.task_names), cfg, epochs=epochs, generator=gen
        )


@dataclass
class RoundState:
    """What a schedule works with during one round of local training."""

    model: MultiTaskModel
    data: ClientData
    weighting: Weighting
    cfg: RunConfig
    server_round: int
    generator: torch.Generator
    anchor: dict[str, torch.Tensor]  # the received encoder, as `encoder.*` parameter names
    hook: Callable[[], None] | None  # after each backward: FedProx's proximal term, if any
    personal: MultiTaskModel | None = None

    def run(self, epochs: int, loss_fn: LossFn = task_losses) -> TrainStats:
        """`epochs` of training of `model` under the client's weighting (and the weighting's
        own parameters), with the round's gradient hook."""
        return train_epochs(
            self.model,
            self.data.train,
            self.weighting,
            self.cfg,
            epochs=epochs,
            generator=self.generator,
            loss_fn=loss_fn,
            grad_hook=self.hook,
            extra_params=list(self.weighting.parameters()),
        )


def joint_schedule(r: RoundState) -> TrainStats:
    """Encoder and heads together for `local-epochs` (fedper, fedavg, local, ...)."""
    return r.run(r.cfg.local_epochs)


def fedrep_schedule(r: RoundState) -> TrainStats:
    """FedRep: the heads with the encoder frozen, then the encoder with the heads frozen."""
    train_heads(r.model, r.data, r.cfg, r.cfg.fedrep_head_epochs, r.generator)
    with frozen(r.model.heads, r.model.gates):
        body = dataclasses.replace(r, hook=fedrep_body_hook(r.model, r.cfg, r.hook))
        return body.run(r.cfg.fedrep_body_epochs)


def fedrod_schedule(r: RoundState) -> TrainStats:
    """FedRoD: generic heads on the task loss, private heads on a correction."""
    return r.run(r.cfg.local_epochs, fedrod_losses)


def ditto_schedule(r: RoundState) -> TrainStats:
    """Ditto: the global track (what is sent), then the personal model pulled toward the
    received encoder by `ditto-lambda`; the personal model's stats are reported."""
    if r.personal is None:
        raise ValueError("ditto needs the client's personal model")
    r.run(r.cfg.local_epochs)
    # The personal model's own weighting copy keeps its loss-weighting state separate.
    return train_epochs(
        r.personal,
        r.data.train,
        copy.deepcopy(r.weighting),
        r.cfg,
        epochs=r.cfg.local_epochs,
        generator=round_generator(r.cfg, r.data.client_id, r.server_round, 1),
        grad_hook=proximal_hook(r.personal, r.anchor, r.cfg.ditto_lambda),
    )


# The `schedule` of each algorithm in `common.algorithms`, by name.
SCHEDULES: dict[str, Callable[[RoundState], TrainStats]] = {
    "joint": joint_schedule,
    "fedrep": fedrep_schedule,
    "fedrod": fedrod_schedule,
    "ditto": ditto_schedule,
}


def local_round(
    model: MultiTaskModel,
    data: ClientData,
    weighting: Weighting,
    cfg: RunConfig,
    server_round: int,
    algorithm: Algorithm,
    *,
    personal: MultiTaskModel | None = None,
    proximal_mu: float = 0.0,
) -> TrainStats:
    """One round of local training under the algorithm's schedule.

    `model` holds the received shared arrays on entry; on return its shared arrays are the
    update to send. `personal` is Ditto's personal model (never sent).
    """
    torch.manual_seed(cfg.seed * 7919 + data.client_id * 31 + server_round)
    received = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
    anchor = {f"encoder.{k}": v for k, v in received.items()}
    state = RoundState(
        model,
        data,
        weighting,
        cfg,
        server_round,
        generator=round_generator(cfg, data.client_id, server_round),
        anchor=anchor,
        hook=proximal_hook(model, anchor, proximal_mu) if proximal_mu > 0 else None,
        personal=personal,
    )
    return SCHEDULES[algorithm.schedule](state)
