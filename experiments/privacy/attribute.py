"""A1: attribute inference from encoder embeddings (e.g. penguin `sex` for clients that do not
train that task): can a linear probe on the shared representation read the attribute?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from .metrics import ArrayLike, to_numpy


@torch.no_grad()
def compute_embeddings(encoder: nn.Module, x: Tensor, batch_size: int = 1024) -> np.ndarray:
    """Encoder outputs (N, D) in eval mode; the model's train/eval mode is restored."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = [
            encoder(x[i : i + batch_size]).reshape(len(x[i : i + batch_size]), -1)
            for i in range(0, len(x), batch_size)
        ]
    finally:
        encoder.train(was_training)
    return to_numpy(torch.cat(out))


def attribute_inference(
    embeddings: ArrayLike,
    attribute: ArrayLike,
    train_fraction: float = 0.5,
    seed: int = 0,
    c: float = 1.0,
) -> dict[str, Any]:
    """Fit a logistic-regression probe on part of the attacker's auxiliary data, test on the rest.

    Returns the probe's test `auc` and `accuracy` next to the `prior` (majority-class rate on
    the test split): leakage is the gap between accuracy and prior, or AUC above 0.5. The
    split is stratified so both classes appear on each side.
    """
    z = to_numpy(embeddings)
    z = z.reshape(z.shape[0], -1)
    raw = attribute.detach().cpu().numpy() if isinstance(attribute, Tensor) else attribute
    raw = np.asarray(raw).ravel()
    values = np.unique(raw)
    if values.size != 2:
        raise ValueError(f"attribute must take exactly two values; got {values.size}")
    a = (raw == values[1]).astype(int)  # the larger/later value is the positive class
    z_tr, z_te, a_tr, a_te = train_test_split(
        z, a, train_size=train_fraction, random_state=seed, stratify=a
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    probe.fit(z_tr, a_tr)
    proba = probe.predict_proba(z_te)[:, 1]
    return {
        "auc": float(roc_auc_score(a_te, proba)),
        "accuracy": float(np.mean((proba > 0.5) == a_te)),
        "prior": float(max(a_te.mean(), 1.0 - a_te.mean())),
        "n_train": len(a_tr),
        "n_test": len(a_te),
    }
