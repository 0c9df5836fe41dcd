"""Input reconstruction by an honest-but-curious server: R1 (analytic), R2 (gradient inversion)
and label recovery from a visible head gradient.

Gradients/updates are passed in as tensors, so the same code scores a single-step gradient, a
multi-step update (an approximation the sweeps over local steps measure) or a noised DP update.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import ArrayLike, psnr, to_numpy

# ---------------------------------------------------------------- R1: analytic, linear layer


@dataclass
class LinearReconstruction:
    """R1 output. Rows are sorted by |dL/db_i| (largest first)."""

    top: Tensor  # (top_k, D): reconstructions from the rows with the largest |dL/db_i|
    per_row: Tensor  # (R, D): one reconstruction per row with a non-negligible bias gradient
    rows: Tensor  # (R,): the layer's row index of each `per_row` entry


def analytic_linear_reconstruction(
    grad_weight: Tensor, grad_bias: Tensor, top_k: int = 1, rel_eps: float = 1e-6
) -> LinearReconstruction:
    """Invert the first Linear layer (Phong et al. 2017; Geiping et al. 2020).

    For y = W x + b, dL/dW_i = (dL/dy_i) x^T and dL/db_i = dL/dy_i, so x = dL/dW_i / dL/db_i
    for any row with dL/db_i != 0: exact for one example. For a batch each row gives a
    dL/dy-weighted mix of the examples that reach it; rows behind a ReLU that only one example
    activates still give that example exactly, hence the per-row set (see `best_match_psnr`).
    Reconstructions are flat (D = in_features): reshape them to the input's shape. Passing a
    multi-step update (delta W, delta b) instead of a gradient gives the approximate version.
    """
    gw = grad_weight.detach().reshape(grad_weight.shape[0], -1)
    gb = grad_bias.detach().reshape(-1)
    if gw.shape[0] != gb.shape[0]:
        raise ValueError(f"weight rows {gw.shape[0]} != bias size {gb.shape[0]}")
    mag = gb.abs()
    keep = mag > rel_eps * mag.max().clamp_min(torch.finfo(mag.dtype).tiny)
    rows = torch.nonzero(keep).squeeze(1)
    rows = rows[torch.argsort(mag[rows], descending=True)]
    per_row = gw[rows] / gb[rows, None]
    return LinearReconstruction(top=per_row[:top_k], per_row=per_row, rows=rows)


def best_match_psnr(x_true: ArrayLike, candidates: ArrayLike, data_range: float) -> np.ndarray:
    """For each true example (B, ...), the best PSNR over candidate reconstructions (R, ...)."""
    xt, xc = to_numpy(x_true), to_numpy(candidates)
    xt, xc = xt.reshape(xt.shape[0], -1), xc.reshape(xc.shape[0], -1)
    if xc.shape[0] == 0:  # e.g. no row had a bias gradient
        return np.full(xt.shape[0], -np.inf)
    return np.array([max(psnr(t, c, data_range) for c in xc) for t in xt])


# ---------------------------------------------------------------- label recovery


def recover_label(head_grad_weight: Tensor, head_grad_bias: Tensor | None = None) -> int:
    """iDLG (Zhao et al. 2020) for one example with softmax cross-entropy.

    dL/dW_c = (p_c - y_c) h: every row is parallel to the features h and only the true class
    has a negative coefficient. With a bias gradient that is just argmin. Otherwise, for 3+
    classes, the class whose projection on the largest row has the odd sign is the label
    (no assumption on h); for 2 classes we assume h >= 0 (ReLU/sigmoid features).
    """
    if head_grad_bias is not None:
        return int(torch.argmin(head_grad_bias.detach().reshape(-1)))
    g = head_grad_weight.detach().reshape(head_grad_weight.shape[0], -1)
    if g.shape[0] < 3:
        return int(torch.argmin(g.sum(dim=1)))
    coef = g @ g[torch.argmax(g.norm(dim=1))]
    neg, pos = coef < 0, coef > 0
    if int(neg.sum()) == 1:
        return int(torch.nonzero(neg)[0])
    if int(pos.sum()) == 1:
        return int(torch.nonzero(pos)[0])
    return int(torch.argmin(g.sum(dim=1)))


def recover_labels(
    head_grad_weight: Tensor, batch_size: int, head_grad_bias: Tensor | None = None
) -> Tensor:
    """Batch label recovery: negative-row rule plus greedy counts (in the spirit of LLG,
    Wainakh et al. 2022).

    With softmax cross-entropy the bias gradient is s_c = mean_i p_ic - n_c / B: classes in the
    batch go negative (for h >= 0 the weight-row sums behave alike). Absent classes keep only
    the mean-probability term, so the mean positive entry estimates that offset; after removing
    it, -s_c is proportional to the count n_c. Classes are then picked greedily from the most
    negative entry, adding back one example's share after each pick. Returns `batch_size`
    labels, sorted (the order within a batch is not recoverable).
    """
    if head_grad_bias is not None:
        s = head_grad_bias.detach().reshape(-1).double().clone()
    else:
        s = head_grad_weight.detach().reshape(head_grad_weight.shape[0], -1).sum(dim=1).double()
    if (s > 0).any():
        s = s - s[s > 0].mean()
    impact = float(-s[s < 0].sum()) / batch_size
    if impact <= 0:
        impact = float(s.abs().max()) / batch_size or 1.0
    labels = []
    for _ in range(batch_size):
        c = int(torch.argmin(s))
        labels.append(c)
        s[c] += impact
    return torch.tensor(sorted(labels), dtype=torch.long)


def label_accuracy(true_labels: ArrayLike, pred_labels: ArrayLike) -> float:
    """Fraction of labels recovered, order-invariant (multiset overlap / batch size)."""
    t = Counter(np.asarray(true_labels).astype(int).ravel().tolist())
    p = Counter(np.asarray(pred_labels).astype(int).ravel().tolist())
    return sum((t & p).values()) / max(sum(t.values()), 1)


# ---------------------------------------------------------------- R2: gradient inversion


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV over the last two dims (images); zero for inputs with < 2 dims/example."""
    if x.dim() < 3:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs().mean()


def cosine_gradient_distance(grads: Sequence[Tensor], target: Sequence[Tensor]) -> Tensor:
    """1 - cos(grads, target) over all parameters at once (Geiping et al. 2020): insensitive to
    the gradient's scale, so the learning rate and the batch-mean reduction do not matter."""
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    g_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    t_norm = torch.sqrt(sum(t.pow(2).sum() for t in target))
    return 1.0 - dot / (g_norm * t_norm + 1e-12)


def random_head(in_features: int, num_classes: int, seed: int = 0) -> nn.Linear:
    """A head guess for the head-unknown attack: a freshly initialised Linear layer.

    Our clients keep their heads private, so a server only sees encoder gradients. We let it
    guess the architecture (one Linear layer, which is what our tasks use) but not the weights:
    a random init, which is what a curious server can do without extra knowledge.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return nn.Linear(in_features, num_classes)
    finally:
        torch.random.set_rng_state(gen_state)


@dataclass
class InversionResult:
    """R2 output: the dummy inputs, the labels used/found and the matching loss per step."""

    x: Tensor  # (B, *input_shape)
    labels: Tensor  # (B,): given labels, or argmax of the optimised soft labels
    soft_labels: Tensor | None  # (B, C) when labels were optimised
    history: list[float] = field(default_factory=list)


def gradient_inversion(
    model: nn.Module,
    target_grads: Sequence[Tensor],
    input_shape: Sequence[int],
    num_classes: int,
    *,
    params: Sequence[Tensor] | None = None,
    batch_size: int = 1,
    labels: Tensor | None = None,
    head: nn.Module | None = None,
    learn_head: bool = False,
    steps: int = 300,
    lr: float = 0.1,
    tv_weight: float = 0.0,
    optimizer: Literal["adam", "lbfgs"] = "adam",
    input_range: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
) -> InversionResult:
    """R2: find inputs whose gradient matches the observed one (DLG / inverting gradients).

    Head known: `model` maps inputs to logits (encoder + the real head) and `target_grads` are
    the gradients of its `params` (default: all of them). Head unknown: `model` is the encoder,
    `target_grads` its gradients only, and `head` the attacker's guess (e.g. `random_head`),
    applied on top but not matched; `learn_head=True` also optimises the guess. The loss is
    softmax cross-entropy with batch mean. Without `labels` (e.g. from `recover_label`) dummy
    soft labels are optimised jointly (DLG). Inputs are clamped to `input_range` if given.
    """
    params = list(model.parameters()) if params is None else list(params)
    target = [t.detach() for t in target_grads]
    if len(target) != len(params):
        raise ValueError(f"{len(target)} target gradients for {len(params)} parameters")
    gen = torch.Generator().manual_seed(seed)
    dtype = target[0].dtype
    shape = (batch_size, *input_shape)
    if input_range is not None:
        lo, hi = input_range
        x0 = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=dtype)
    else:
        x0 = torch.randn(shape, generator=gen, dtype=dtype)
    x_hat = x0.requires_grad_(True)
    variables: list[Tensor] = [x_hat]
    label_logits = None
    if labels is None:
        label_logits = torch.randn(batch_size, num_classes, generator=gen, dtype=dtype)
        variables.append(label_logits.requires_grad_(True))
    if head is not None and learn_head:
        variables += list(head.parameters())

    def objective() -> Tensor:
        out = model(x_hat) if head is None else head(model(x_hat))
        if labels is not None:
            loss = F.cross_entropy(out, labels.reshape(-1).long())
        else:
            soft = F.softmax(label_logits, dim=-1)
            loss = -(soft * F.log_softmax(out, dim=-1)).sum(dim=-1).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        grads = [
            g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
        ]
        dist = cosine_gradient_distance(grads, target)
        return dist + tv_weight * total_variation(x_hat) if tv_weight else dist

    history: list[float] = []
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(variables, lr=lr, max_iter=20, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            value = objective()
            _set_grads(variables, value)
            return value.detach()

        for _ in range(steps):
            history.append(float(opt.step(closure)))
            _clamp(x_hat, input_range)
    else:
        opt = torch.optim.Adam(variables, lr=lr)
        for _ in range(steps):
            value = objective()
            _set_grads(variables, value)
            opt.step()
            _clamp(x_hat, input_range)
            history.append(float(value.detach()))
    x_out = x_hat.detach()
    if label_logits is None:
        return InversionResult(x_out, labels.reshape(-1).long(), None, history)
    soft = F.softmax(label_logits.detach(), dim=-1)
    return InversionResult(x_out, soft.argmax(dim=-1), soft, history)


def _set_grads(variables: Sequence[Tensor], value: Tensor) -> None:
    """Like backward() but leaves the victim model's .grad fields untouched."""
    for v, g in zip(variables, torch.autograd.grad(value, variables), strict=True):
        v.grad = g


def _clamp(x: Tensor, input_range: tuple[float, float] | None) -> None:
    if input_range is not None:
        with torch.no_grad():
            x.clamp_(*input_range)
