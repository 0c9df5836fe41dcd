"""Names of the per-task metrics and which way each is better: the one place that says so.
The server's summary, the reply checks, the launcher's tables and the studies' Δm read these.
Free of torch, so the launcher can import it without paying for torch."""

from __future__ import annotations

# The metric each kind is judged by (the one place that says so: reports, the server's
# summary and Δm read these), and the metrics where lower is better.
HEADLINE_BY_KIND: dict[str, str] = {
    "multiclass": "accuracy",
    "binary": "accuracy",
    "regression": "mae",
    "segmentation": "miou",
    "depth": "abs_rel",
}
HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "mae", "miou", "abs_rel")
LOWER_IS_BETTER: tuple[str, ...] = ("mae", "rmse", "loss", "abs_rel")


def metric_higher_is_better(metric: str) -> bool:
    """Direction of a metric by its name (`test/mae` and `mae` alike)."""
    return not metric.endswith(LOWER_IS_BETTER)
