"""Attack metrics: membership-inference ROC summaries and image-reconstruction quality.

Kept free of any model code so every attack (and the report) scores results the same way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.metrics import roc_auc_score, roc_curve

ArrayLike = Any  # numpy array, torch tensor or sequence of numbers

#: TPR at 0.1 % FPR is only meaningful with enough non-members to resolve that FPR.
MIN_NONMEMBERS_FOR_0_1PCT = 1000


def to_numpy(a: ArrayLike) -> np.ndarray:
    """Float64 numpy copy of a tensor/array (detached, on CPU)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    """Map ±inf to just beyond the finite range (roc_curve rejects inf); NaN is a caller bug."""
    if np.isnan(scores).any():
        raise ValueError("membership scores contain NaN")
    finite = scores[np.isfinite(scores)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    return np.nan_to_num(scores, posinf=hi + 1.0, neginf=lo - 1.0)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Highest TPR reachable by a threshold whose FPR does not exceed `max_fpr`."""
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def mia_metrics(scores_members: ArrayLike, scores_nonmembers: ArrayLike) -> dict[str, Any]:
    """ROC summary of a membership attack; a higher score means "more likely a member".

    Returns `auc`, `advantage` (max TPR - FPR over thresholds), `tpr_at_1pct_fpr` and
    `tpr_at_0_1pct_fpr` (None with fewer than 1000 non-members: the FPR cannot be resolved),
    plus the two counts. Low-FPR TPRs matter more than AUC (Carlini et al. 2022).
    """
    sm, sn = to_numpy(scores_members).ravel(), to_numpy(scores_nonmembers).ravel()
    if sm.size == 0 or sn.size == 0:
        raise ValueError("need at least one member and one non-member score")
    scores = _finite_scores(np.concatenate([sm, sn]))
    labels = np.concatenate([np.ones(sm.size), np.zeros(sn.size)])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "advantage": float(np.max(tpr - fpr)),
        "tpr_at_1pct_fpr": tpr_at_fpr(fpr, tpr, 0.01),
        "tpr_at_0_1pct_fpr": (
            tpr_at_fpr(fpr, tpr, 0.001) if sn.size >= MIN_NONMEMBERS_FOR_0_1PCT else None
        ),
        "n_members": int(sm.size),
        "n_nonmembers": int(sn.size),
    }


def psnr(x: ArrayLike, x_hat: ArrayLike, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB over all elements; `inf` for identical inputs."""
    a, b = to_numpy(x), to_numpy(x_hat)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def ssim(
    x: ArrayLike,
    x_hat: ArrayLike,
    data_range: float = 1.0,
    win_size: int = 7,
    sigma: float = 1.5,
) -> float:
    """Mean structural similarity (Wang et al. 2004) with a Gaussian window, valid region only.

    Inputs are 2-D images or stacks `(..., H, W)` (channels/batch are averaged). The window is
    shrunk to the largest odd size that fits, so tiny images (e.g. 4x4) still get a score.
    """
    a, b = to_numpy(x), to_numpy(x_hat)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two equal-shape images (..., H, W); got {a.shape}, {b.shape}")
    h, w = a.shape[-2:]
    size = min(win_size, h, w)
    size -= 1 - size % 2  # odd, >= 1
    window = _gaussian_window(size, sigma)
    a, b = a.reshape(-1, h, w), b.reshape(-1, h, w)

    def filt(img: np.ndarray) -> np.ndarray:
        patches = sliding_window_view(img, (size, size), axis=(1, 2))
        return np.einsum("nhwij,ij->nhw", patches, window)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a * mu_a
    var_b = filt(b * b) - mu_b * mu_b
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))
