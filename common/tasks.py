"""Task specifications: what a task predicts, how it is scored and how its loss is computed.

A task is identified by its name; every client that holds a task uses the same spec, so the
task's head has the same shape everywhere (which is what lets `fedavg` average it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

TaskKind = Literal["multiclass", "binary", "regression"]
TASK_KINDS: tuple[str, ...] = ("multiclass", "binary", "regression")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task. `num_classes` is the class count (multiclass), 2 (binary) or 1."""

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
        if self.kind == "multiclass" and self.num_classes < 2:
            raise ValueError(f"task '{self.name}': a multiclass task needs num_classes >= 2")

    @property
    def output_size(self) -> int:
        """Width of the head's output layer (binary tasks use one logit)."""
        return self.num_classes if self.kind == "multiclass" else 1

    @property
    def is_classification(self) -> bool:
        return self.kind != "regression"

    @property
    def higher_is_better(self) -> bool:
        """Direction of the task's headline metric (accuracy up, MAE down)."""
        return self.is_classification

    @property
    def headline_metric(self) -> str:
        return "accuracy" if self.is_classification else "mae"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy, binary cross-entropy or MSE."""
        return self.per_example_loss(output, target).mean()

    def per_example_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss per example (used by membership-inference attacks and DP)."""
        if self.kind == "multiclass":
            return F.cross_entropy(output, target.long(), reduction="none")
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(
                output.squeeze(-1), target.float(), reduction="none"
            )
        normalised = (target.float() - self.offset) / self.scale
        return F.mse_loss(output.squeeze(-1), normalised, reduction="none")

    def predict(self, output: torch.Tensor) -> np.ndarray:
        """Class labels for classification, values for regression."""
        if self.kind == "multiclass":
            return output.argmax(dim=-1).cpu().numpy()
        if self.kind == "binary":
            return (output.squeeze(-1) > 0).long().cpu().numpy()
        return (output.squeeze(-1).detach() * self.scale + self.offset).cpu().numpy()

    def metrics(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Accuracy and macro-F1 (over the classes present in `y_true` or `y_pred`) for
        classification; MAE, RMSE and R² for regression."""
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
