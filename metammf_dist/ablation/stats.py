"""Paired comparisons over seeds: Student-t intervals of per-seed differences, in plain Python (no scipy).

Runs of one seed share their initial ID rows, batches, negatives and dropout draws across variants, so seeds
that run high do so in every variant: the differences ``variant - reference`` per seed have a much smaller
spread than the metrics themselves.  For n paired seeds with differences ``d_1..d_n``:

    mean = Σ d / n,   sd = sqrt(Σ (d - mean)² / (n - 1)),   95 % interval = mean ± t_{0.975, n-1} · sd / sqrt(n)

``t_quantile`` inverts the Student-t CDF, ``F(t) = 1 - I_x(ν/2, 1/2) / 2`` for t ≥ 0 with ``x = ν / (ν + t²)``,
by bisection; ``I_x`` (the regularized incomplete beta function) is its continued fraction, evaluated by the
modified Lentz method.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Dict, Optional, Sequence


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (0 < p < 1), to ~1e-12."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Paired:
    """``variant - reference`` over the seeds both have."""

    n: int
    mean: float
    sd: float  # nan for n < 2
    low: float  # 95 % Student-t interval (nan for n < 2)
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(variant: Dict[int, float], reference: Dict[int, float], level: float = 0.95) -> Optional[Paired]:
    """Paired difference over the common seeds of ``{seed: value}`` maps; None when no seed is common."""
    seeds = sorted(set(variant) & set(reference))
    if not seeds:
        return None
    diffs = [variant[s] - reference[s] for s in seeds]
    return interval(diffs, level)


def interval(values: Sequence[float], level: float = 0.95) -> Paired:
    """Mean and Student-t interval of ``values`` (one sample)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Paired(n, mean, math.nan, math.nan, math.nan)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Paired(n, mean, sd, mean - half, mean + half)
