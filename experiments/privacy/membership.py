"""Membership inference: M1 (loss threshold), M2 (LiRA-offline, RMIA) and M3 (from an update).

Everything takes torch modules, callables and tensors so it works on any model; a "loss_fn" is
always `loss_fn(model_output, targets) -> per-example losses` (reduction="none").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import Tensor, nn

from .metrics import ArrayLike, mia_metrics, to_numpy

LossFn = Callable[[Tensor, Tensor], Tensor]
TaskType = Literal["classification", "regression"]


def _per_example(loss: Tensor, n: int) -> Tensor:
    """Reduce any trailing dims so a loss_fn may return (N,) or (N, ...) losses."""
    if loss.dim() == 0 or loss.shape[0] != n:
        raise ValueError("loss_fn must return per-example losses (use reduction='none')")
    return loss.reshape(n, -1).mean(dim=1)


@torch.no_grad()
def _batched_outputs(
    model: nn.Module, x: Tensor, fn: Callable[[Tensor, slice], Tensor], batch_size: int
) -> np.ndarray:
    """Apply `fn(model(x[batch]), batch)` in eval mode, restoring the model's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        out = [
            fn(model(x[i : i + batch_size]), slice(i, i + batch_size))
            for i in range(0, len(x), batch_size)
        ]
    finally:
        model.train(was_training)
    return to_numpy(torch.cat(out))


def per_example_losses(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, batch_size: int = 1024
) -> np.ndarray:
    """Per-example losses of `model` on (x, y), shape (N,)."""
    return _batched_outputs(
        model, x, lambda out, s: _per_example(loss_fn(out, y[s]), len(out)), batch_size
    )


# ---------------------------------------------------------------- M1: loss threshold


def loss_threshold_mia(
    model: nn.Module,
    loss_fn: LossFn,
    x_members: Tensor,
    y_members: Tensor,
    x_nonmembers: Tensor,
    y_nonmembers: Tensor,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """M1 (Yeom et al. 2018): score = -loss; a global threshold, no reference models needed."""
    lm = per_example_losses(model, loss_fn, x_members, y_members, batch_size)
    ln = per_example_losses(model, loss_fn, x_nonmembers, y_nonmembers, batch_size)
    return mia_metrics(-lm, -ln)


# ---------------------------------------------------------------- M2: LiRA-offline / RMIA


def logit_confidence(logits: Tensor, y: Tensor) -> Tensor:
    """phi = log(p_y / (1 - p_y)) of the true class, computed stably from logits.

    (N, C) logits use softmax (phi = z_y - logsumexp of the other logits); (N,) or (N, 1)
    logits are a binary sigmoid output (phi = z for y = 1, -z for y = 0). The logit scaling
    makes the confidence roughly Gaussian across training runs, which LiRA relies on.
    """
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        z = logits.reshape(-1)
        return torch.where(y.reshape(-1) > 0.5, z, -z)
    y = y.reshape(-1).long()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def _mse(out: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(out, target.reshape(out.shape), reduction="none")


def lira_confidences(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    task: TaskType = "classification",
    loss_fn: LossFn | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Per-example LiRA statistic: logit-scaled true-class confidence, or -loss for regression."""
    if task == "classification":
        return _batched_outputs(model, x, lambda out, s: logit_confidence(out, y[s]), batch_size)
    return -per_example_losses(model, loss_fn or _mse, x, y, batch_size)


def train_shadow_models(
    train_fn: Callable[[np.ndarray], nn.Module],
    pool_indices: ArrayLike,
    n_shadow: int,
    subset_size: int,
    exclude: ArrayLike | None = None,
    seed: int = 0,
) -> list[tuple[nn.Module, np.ndarray]]:
    """Train `n_shadow` reference models, each on a random subset of the attacker's pool.

    `exclude` (the candidate examples) is removed from the pool, so every shadow model is an
    OUT model for every candidate, as offline LiRA/RMIA require. `train_fn(indices)` trains
    and returns one model; it should mimic the target's training recipe.
    """
    pool = np.asarray(pool_indices).ravel()
    if exclude is not None:
        pool = np.setdiff1d(pool, np.asarray(exclude).ravel())
    if subset_size > pool.size:
        raise ValueError(f"subset_size {subset_size} > pool size {pool.size}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_shadow):
        idx = np.sort(rng.choice(pool, size=subset_size, replace=False))
        out.append((train_fn(idx), idx))
    return out


def shadow_confidences(
    models: Iterable[nn.Module],
    x: Tensor,
    y: Tensor,
    task: TaskType = "classification",
    loss_fn: LossFn | None = None,
) -> np.ndarray:
    """Stack `lira_confidences` of several reference models: shape (K, N)."""
    return np.stack([lira_confidences(m, x, y, task, loss_fn) for m in models])


def lira_offline_scores(
    target_conf: ArrayLike, shadow_out_conf: ArrayLike, fix_variance: bool = False
) -> np.ndarray:
    """LiRA-offline (Carlini et al. 2022): log P[Z <= phi_target], Z ~ N(mu_out, sigma_out^2).

    `shadow_out_conf` is (K, N), K >= 2 OUT models. One-sided because members are *more*
    confident. `fix_variance=True` pools one variance over all examples, as Carlini et al.
    suggest for few shadow models; on our memorising test case per-example variances did
    better at low FPR even with K = 4, hence the default. Scores are log-probabilities so
    low-FPR thresholds keep their resolution.
    """
    t = to_numpy(target_conf).ravel()
    s = to_numpy(shadow_out_conf)
    if s.ndim != 2 or s.shape[1] != t.size or s.shape[0] < 2:
        raise ValueError(f"shadow_out_conf must be (K>=2, {t.size}); got {s.shape}")
    mu = s.mean(axis=0)
    if fix_variance:
        sigma = np.full_like(mu, np.sqrt(np.sum((s - mu) ** 2) / (s.size - s.shape[1])))
    else:
        sigma = s.std(axis=0, ddof=1)
    z = np.clip((t - mu) / np.maximum(sigma, 1e-8), -1e6, 1e6)
    return norm.logcdf(z)


def lira_offline_mia(
    target_conf: ArrayLike,
    shadow_out_conf: ArrayLike,
    is_member: ArrayLike,
    fix_variance: bool = False,
) -> dict[str, Any]:
    """M2: LiRA-offline scores for the candidates, summarised with `mia_metrics`."""
    scores = lira_offline_scores(target_conf, shadow_out_conf, fix_variance)
    member = np.asarray(is_member, dtype=bool).ravel()
    return mia_metrics(scores[member], scores[~member])


def rmia_scores(
    target_conf_x: ArrayLike,
    ref_conf_x: ArrayLike,
    target_conf_z: ArrayLike,
    ref_conf_z: ArrayLike,
    a: float = 0.3,
    gamma: float = 1.0,
) -> np.ndarray:
    """Offline RMIA (Zarifzadeh et al. 2024) for classification, from logit confidences.

    p = sigmoid(phi) recovers the true-class probability. Pr(x) is approximated from OUT
    reference models as ((1 + a) mean_ref p + (1 - a)) / 2; the score of x is the fraction of
    population points z with (p_t(x)/Pr(x)) / (p_t(z)/Pr(z)) > gamma. Works with 1-4 reference
    models, where LiRA's Gaussian fit is poor. `ref_conf_*` are (K, N) and (K, Z).
    """

    def ratio(target: ArrayLike, ref: ArrayLike) -> np.ndarray:
        p_t = 1.0 / (1.0 + np.exp(-to_numpy(target).ravel()))
        p_ref = 1.0 / (1.0 + np.exp(-np.atleast_2d(to_numpy(ref))))
        return p_t / (0.5 * ((1.0 + a) * p_ref.mean(axis=0) + (1.0 - a)))

    rx, rz = ratio(target_conf_x, ref_conf_x), np.sort(ratio(target_conf_z, ref_conf_z))
    return np.searchsorted(rz, rx / gamma, side="left") / rz.size


# ---------------------------------------------------------------- M3: from an encoder update


def per_example_gradients(
    model: nn.Module, params: Iterable[Tensor], loss_fn: LossFn, x: Tensor, y: Tensor
) -> Tensor:
    """Flattened gradient of each example's loss wrt `params` (e.g. the encoder): (N, P).

    A plain loop (one backward per example) so it works for any module; fine at CPU scale.
    The model must not mix examples within a batch (no BatchNorm), as in our DP setting.
    """
    params = list(params)
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            ).detach()
        )
    return torch.stack(rows)


def flat_update(new_params: Iterable[Tensor], old_params: Iterable[Tensor]) -> Tensor:
    """Client update new - old, flattened to one vector in parameter order."""
    return torch.cat(
        [(n.detach() - o.detach()).reshape(-1) for n, o in zip(new_params, old_params, strict=True)]
    )


def update_mia_scores(update: Tensor, per_example_grads: Tensor) -> np.ndarray:
    """M3 score: cosine(-grad_i, update). SGD moves the weights along -sum of member gradients,
    so members align with the update. `update` may be a secure-aggregation sum: the same score
    then tests membership in *any* client's data, diluted by the other clients."""
    u = update.detach().reshape(1, -1).to(per_example_grads.dtype)
    return to_numpy(F.cosine_similarity(-per_example_grads, u, dim=1, eps=1e-12))


def update_mia(update: Tensor, grads_members: Tensor, grads_nonmembers: Tensor) -> dict[str, Any]:
    """M3: `update_mia_scores` for members and non-members, summarised with `mia_metrics`."""
    return mia_metrics(
        update_mia_scores(update, grads_members), update_mia_scores(update, grads_nonmembers)
    )
