"""The privacy attack suite (M1, M2, M3, R1, R2, A1) in one namespace.

The code lives in `metrics`, `membership`, `reconstruction` and `attribute`; import from here.
See docs/SECURITY.md (section 1) for the threat models and docs/PRIVACY.md for what each
attack assumes of the attacker.
"""

from .attribute import attribute_inference, compute_embeddings
from .membership import (
    flat_update,
    lira_confidences,
    lira_offline_mia,
    lira_offline_scores,
    logit_confidence,
    loss_threshold_mia,
    per_example_gradients,
    per_example_losses,
    rmia_scores,
    shadow_confidences,
    train_shadow_models,
    update_mia,
    update_mia_scores,
)
from .metrics import mia_metrics, psnr, ssim, tpr_at_fpr
from .reconstruction import (
    InversionResult,
    LinearReconstruction,
    analytic_linear_reconstruction,
    best_match_psnr,
    cosine_gradient_distance,
    gradient_inversion,
    label_accuracy,
    random_head,
    recover_label,
    recover_labels,
    total_variation,
)

__all__ = [
    "InversionResult",
    "LinearReconstruction",
    "analytic_linear_reconstruction",
    "attribute_inference",
    "best_match_psnr",
    "compute_embeddings",
    "cosine_gradient_distance",
    "flat_update",
    "gradient_inversion",
    "label_accuracy",
    "lira_confidences",
    "lira_offline_mia",
    "lira_offline_scores",
    "logit_confidence",
    "loss_threshold_mia",
    "mia_metrics",
    "per_example_gradients",
    "per_example_losses",
    "psnr",
    "random_head",
    "recover_label",
    "recover_labels",
    "rmia_scores",
    "shadow_confidences",
    "ssim",
    "total_variation",
    "tpr_at_fpr",
    "train_shadow_models",
    "update_mia",
    "update_mia_scores",
]
