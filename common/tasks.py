"""Task specifications: what a task predicts, how it is scored and how its loss is computed.

A task is identified by its name; every client that holds a task uses the same spec, so the
task's head has the same shape everywhere (which is what lets `fedavg` average it).

Dense tasks (`segmentation`, `depth`) predict one value per pixel of an image input: their
targets are (H, W) arrays per example, their heads decode the encoder's feature map
(`common.models.DenseHead`), and their per-example loss is the mean over the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from common.metric_names import HEADLINE_BY_KIND, metric_higher_is_better

TaskKind = Literal["multiclass", "binary", "regression", "segmentation", "depth"]
TASK_KINDS: tuple[str, ...] = ("multiclass", "binary", "regression", "segmentation", "depth")
DENSE_KINDS: tuple[str, ...] = ("segmentation", "depth")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task. `num_classes` is the class count (multiclass, segmentation),
    2 (binary) or 1; `offset`/`scale` normalise regression and depth targets."""

    name: str
    kind: TaskKind
    num_classes: int = 1
    # Regression targets are learned as (y - offset) / scale so that their loss is on the
    # same footing as the classification losses; metrics are reported in original units.
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(
                f"task '{self.name}': kind '{self.kind}' is not one of {list(TASK_KINDS)}"
            )
        if self.kind in ("multiclass", "segmentation") and self.num_classes < 2:
            raise ValueError(f"task '{self.name}': a {self.kind} task needs num_classes >= 2")

    @property
    def output_size(self) -> int:
        """Width (channels, for dense tasks) of the head's output (binary: one logit)."""
        return self.num_classes if self.kind in ("multiclass", "segmentation") else 1

    @property
    def is_classification(self) -> bool:
        """Labels are class ids (per example, or per pixel for segmentation)."""
        return self.kind in ("multiclass", "binary", "segmentation")

    @property
    def is_dense(self) -> bool:
        """One prediction per pixel: the head decodes the encoder's feature map."""
        return self.kind in DENSE_KINDS

    @property
    def higher_is_better(self) -> bool:
        """Direction of the task's headline metric (accuracy and mIoU up, MAE and abs-rel
        down)."""
        return metric_higher_is_better(self.headline_metric)

    @property
    def headline_metric(self) -> str:
        return HEADLINE_BY_KIND[self.kind]

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy, binary cross-entropy or MSE."""
        return self.per_example_loss(output, target).mean()

    def per_example_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss per example (used by membership-inference attacks and DP); dense tasks
        average over the pixels: per-pixel cross-entropy, L1 on normalised depth."""
        if self.kind == "segmentation":
            return F.cross_entropy(output, target.long(), reduction="none").flatten(1).mean(1)
        if self.kind == "depth":
            normalised = (target.float() - self.offset) / self.scale
            return (output.squeeze(1) - normalised).abs().flatten(1).mean(1)
        if self.kind == "multiclass":
            return F.cross_entropy(output, target.long(), reduction="none")
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                output.squeeze(-1), target.float(), reduction="none"
            )
        normalised = (target.float() - self.offset) / self.scale
        return F.mse_loss(output.squeeze(-1), normalised, reduction="none")

    def predict(self, output: torch.Tensor) -> np.ndarray:
        """Class labels for classification, values for regression (per pixel: (N, H, W))."""
        if self.kind == "segmentation":
            return output.argmax(dim=1).cpu().numpy()
        if self.kind == "depth":
            return (output.squeeze(1).detach() * self.scale + self.offset).cpu().numpy()
        if self.kind == "multiclass":
            return output.argmax(dim=-1).cpu().numpy()
        if self.kind == "binary":
            return (output.squeeze(-1) > 0).long().cpu().numpy()
        return (output.squeeze(-1).detach() * self.scale + self.offset).cpu().numpy()

    def metrics(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Accuracy and macro-F1 (over the classes present in `y_true` or `y_pred`) for
        classification; MAE, RMSE and R² for regression; pixel accuracy and mIoU for
        segmentation; abs-rel and RMSE for depth."""
        if self.kind == "segmentation":
            return segmentation_metrics(y_true, y_pred)
        if self.kind == "depth":
            return depth_metrics(y_true, y_pred)
        from sklearn.metrics import (
            accuracy_score,
            f1_score,
            mean_absolute_error,
            mean_squared_error,
            r2_score,
        )

        if self.is_classification:
            # Macro-F1 over the classes present in the labels or the predictions: a class a
            # label-skewed client neither holds nor predicts has no F1 to average, and counting
            # it as 0 would cap perfect predictions on 5 of 10 classes at 0.5. A predicted class
            # that is absent from the labels still counts (its F1 is 0).
            labels = np.union1d(y_true, y_pred)
            return {
                "accuracy": float(accuracy_score(y_true, y_pred)),
                "macro_f1": float(
                    f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
                ),
            }
        r2 = float(r2_score(y_true, y_pred)) if len(y_true) > 1 else 0.0
        return {
            "mae": float(mean_absolute_error(y_true, y_pred)),
            "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
            "r2": r2,
        }


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
