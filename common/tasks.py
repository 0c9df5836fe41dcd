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
from common.scoring import (
    classification_metrics,
    depth_metrics,
    regression_metrics,
    segmentation_metrics,
)

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
        if self.is_classification:
            return classification_metrics(y_true, y_pred)
        return regression_metrics(y_true, y_pred)
