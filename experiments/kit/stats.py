"""Numbers over seeds: mean ± std (what the tables show), mean ± a 95 % confidence interval
(Student's t, scipy), and differences paired by seed with their t-test and Wilcoxon
signed-rank test (scipy). Values that are None or not finite are left out, and counted out
of `n`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import NamedTuple


class Stat(NamedTuple):
    """mean, spread (sample std, or a CI half-width) and the number of values."""

    mean: float
    spread: float
    n: int


def finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_std(values: Iterable[float | None]) -> Stat:
    """Mean and sample std (ddof 1; 0 for a single value); (nan, nan, 0) without values."""
    vals = finite(values)
    if not vals:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


def mean_ci(values: Iterable[float | None], confidence: float = 0.95) -> Stat:
    """Mean and the half-width of its two-sided `confidence` interval, t(n−1)·s/√n (nan for
    a single value: one seed says nothing about the spread)."""
    from scipy import stats

    vals = finite(values)
    if not vals:
        return Stat(math.nan, math.nan, 0)
    if len(vals) == 1:
        return Stat(vals[0], math.nan, 1)
    t = float(stats.t.ppf(0.5 + confidence / 2, len(vals) - 1))
    return Stat(
        statistics.fmean(vals), t * statistics.stdev(vals) / math.sqrt(len(vals)), len(vals)
    )


def nanmean(values: Iterable[float | None]) -> float:
    """The mean of the finite values; nan without any."""
    vals = finite(values)
    return statistics.fmean(vals) if vals else math.nan


class Paired(NamedTuple):
    """a − b per seed, their mean ± sample std, and two-sided p-values of the paired t-test
    and the Wilcoxon signed-rank test (nan where the test is undefined: fewer than two
    pairs, or all differences zero)."""

    diffs: list[float]
    stat: Stat
    t_p: float
    wilcoxon_p: float


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Differences of two methods on the same seeds (same data and initialisation)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)} values")
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return Paired(diffs, mean_std(diffs), *_paired_tests(diffs))


def _paired_tests(diffs: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(diffs) < 2 or all(d == 0 for d in diffs):
        return math.nan, math.nan
    t_p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return t_p, float(stats.wilcoxon(diffs).pvalue)


class Verdict(NamedTuple):
    """A paired comparison as a report states it: the mean difference, its 95 % confidence
    interval (t, seeds as pairs), the paired t-test's p-value and the verdict at `alpha`."""

    mean: float
    low: float
    high: float
    p: float
    n: int
    verdict: str

    def text(self, digits: int = 1, unit: str = " points") -> str:
        if self.n == 0:
            return "n/a (no seed finished both)"
        if not math.isfinite(self.low):
            return f"{self.mean:+.{digits}f}{unit} (n = {self.n}: no interval)"
        return (
            f"{self.mean:+.{digits}f}{unit}, 95 % CI [{self.low:+.{digits}f}, "
            f"{self.high:+.{digits}f}], paired t-test p = {self.p:.3f} (n = {self.n}): "
            f"{self.verdict}"
        )


def paired_verdict(
    a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05, higher_is_better: bool = True
) -> Verdict:
    """`a` against `b` paired by seed: 'better', 'worse' or 'no difference' at `alpha` by the
    two-sided paired t-test ('n/a' with fewer than two pairs)."""
    pair = paired(a, b)
    ci = mean_ci(pair.diffs, 1 - alpha)
    if pair.stat.n == 0:
        return Verdict(math.nan, math.nan, math.nan, math.nan, 0, "n/a")
    p = pair.t_p if pair.t_p == pair.t_p else (1.0 if pair.stat.n > 1 else math.nan)
    if pair.stat.n < 2:
        verdict = "n/a"
    elif p < alpha:
        verdict = "better" if (ci.mean > 0) == higher_is_better else "worse"
    else:
        verdict = f"no difference at α = {alpha:g}"
    if verdict in ("better", "worse"):
        verdict += f" at α = {alpha:g}"
    return Verdict(ci.mean, ci.mean - ci.spread, ci.mean + ci.spread, p, ci.n, verdict)


def pm(
    stat: Sequence[float],
    digits: int,
    *,
    scale: float = 1.0,
    bare_single: bool = False,
    empty: str = "–",
) -> str:
    """'mean ± spread' with `digits` decimals after multiplying by `scale` ('%' tables use
    100); `empty` without values; just the mean for a single value when `bare_single`. A
    mean that rounds to zero prints without a sign."""
    m, s, n = stat[0], stat[1], int(stat[2])
    if n == 0 or not math.isfinite(m):
        return empty
    m, s = m * scale, s * scale
    m = 0.0 if round(m, digits) == 0 else m  # no '-0.0'
    if n == 1 and bare_single:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"
