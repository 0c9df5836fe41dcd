"""Per-task metrics in NumPy. Evaluation runs in every message a client handles, and
importing scikit-learn for its metrics cost a fresh ClientApp process about a second; these
functions do the same arithmetic as scikit-learn's `accuracy_score`, `f1_score` (macro),
`mean_absolute_error`, `mean_squared_error` and `r2_score` (same dtypes, same operations in
the same order), so the numbers are the same to the last bit, which
`tests/test_scoring.py` checks against scikit-learn itself. Non-finite predictions are
refused, as scikit-learn refuses them.
"""

from __future__ import annotations

import numpy as np


def _finite(name: str, *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"{name}: the predictions or labels contain NaN or infinity")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in `y_true` or `y_pred`: a class a
    label-skewed client neither holds nor predicts has no F1 to average, and counting it as
    0 would cap perfect predictions on 5 of 10 classes at 0.5. A predicted class that is
    absent from the labels still counts (its F1 is 0)."""
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    _finite("classification metrics", t, p)
    labels = np.union1d(t, p)
    tp = np.array([np.count_nonzero((t == c) & (p == c)) for c in labels], dtype=np.int64)
    true_sum = np.array([np.count_nonzero(t == c) for c in labels], dtype=np.int64)
    pred_sum = np.array([np.count_nonzero(p == c) for c in labels], dtype=np.int64)
    # F = (1 + β²)·tp / (β²·(tp + fn) + (tp + fp)) with β = 1, in float64; every label is in
    # the labels or the predictions, so no denominator is 0.
    f1 = (2.0 * tp.astype(np.float64)) / (
        1.0 * true_sum.astype(np.float64) + pred_sum.astype(np.float64)
    )
    return {"accuracy": float(np.average(t == p)), "macro_f1": float(np.nanmean(f1))}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² (0 with fewer than two examples), computed as columns in the
    inputs' floating dtype (float32 stays float32), as scikit-learn does."""
    floating = [a.dtype for a in (y_true, y_pred) if a.dtype.kind == "f"]
    dtype = np.result_type(*floating) if floating else np.float64
    t = np.asarray(y_true, dtype=dtype).reshape(-1, 1)
    p = np.asarray(y_pred, dtype=dtype).reshape(-1, 1)
    _finite("regression metrics", t, p)
    mae = np.average(np.average(np.abs(p - t), axis=0))
    mse = np.average(np.average((t - p) ** 2, axis=0))
    return {"mae": float(mae), "rmse": float(np.sqrt(float(mse))), "r2": _r2(t, p)}


def _r2(t: np.ndarray, p: np.ndarray) -> float:
    """R² with scikit-learn's finite convention: 1 for perfect predictions, 0 where the
    labels are constant but the predictions are not."""
    if len(t) < 2:
        return 0.0
    numerator = np.sum(1.0 * (t - p) ** 2, axis=0)
    denominator = np.sum(1.0 * (t - np.average(t, axis=0)) ** 2, axis=0)
    score = np.ones(1, dtype=numerator.dtype)
    valid = (denominator != 0) & (numerator != 0)
    score[valid] = 1 - (numerator[valid] / denominator[valid])
    score[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.average(score))


def segmentation_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the classes present in the labels or the
    predictions (as macro-F1 does: a class neither held nor predicted has no IoU to
    average; one predicted but absent scores 0)."""
    t, p = y_true.reshape(-1), y_pred.reshape(-1)
    ious = []
    for c in np.union1d(t, p):
        union = np.count_nonzero((t == c) | (p == c))
        ious.append(np.count_nonzero((t == c) & (p == c)) / union)
    return {"pixel_accuracy": float(np.mean(t == p)), "miou": float(np.mean(ious))}


def depth_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Absolute relative error mean(|d̂ − d| / d) and RMSE, over the pixels with a positive
    ground-truth depth (the standard depth-estimation pair)."""
    t, p = y_true.reshape(-1).astype(np.float64), y_pred.reshape(-1).astype(np.float64)
    valid = t > 0
    if not valid.any():
        raise ValueError("depth metrics need at least one pixel with a positive depth")
    t, p = t[valid], p[valid]
    return {
        "abs_rel": float(np.mean(np.abs(p - t) / t)),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
    }
