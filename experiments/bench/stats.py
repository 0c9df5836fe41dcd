"""Small statistics for noisy timings on a shared machine: medians and minima of repeats
(never single runs), least-squares fits with R², and target checks."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fit_poly(xs: Sequence[float], ys: Sequence[float], degree: int) -> dict[str, Any]:
    """Least-squares polynomial (highest power first) and its R²."""
    import numpy as np

    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    coef = np.polyfit(x, y, degree)
    pred = np.polyval(coef, x)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"coef": [float(c) for c in coef], "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """y ≈ slope·x + intercept, with R² (and the quadratic fit's R², to tell whether the
    growth is really linear)."""
    line = fit_poly(xs, ys, 1)
    out = {"slope": line["coef"][0], "intercept": line["coef"][1], "r2": line["r2"]}
    if len(xs) >= 4:
        quad = fit_poly(xs, ys, 2)
        out["quadratic"] = {"a": quad["coef"][0], "r2": quad["r2"]}
    return out


@dataclass
class Target:
    """One benchmark target: the measured value against the limit, and whether it is met."""

    name: str
    measured: float
    limit: float
    unit: str = "×"
    higher_is_better: bool = False
    note: str = ""

    @property
    def met(self) -> bool:
        if self.measured != self.measured:  # NaN: not measured
            return False
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn`."""
    import time

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
