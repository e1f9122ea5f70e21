"""One pure summary of a sample: no printing, and no zeros standing in for missing data.

Intervals of a median or percentile are distribution-free: the order statistics whose binomial
coverage is at least the stated confidence at that n (exact, not asymptotic, and not a
bootstrap, whose percentile interval of a median is [min, max] at n = 3 and covers about 75%).
Where no pair of order statistics reaches the confidence (a median below n = 6 at 95%), the
interval is NaN and displays say so rather than print a "95%" that is not one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    stddev: float  # sample (n-1) standard deviation, as llama-bench reports
    median: float
    ci_low: float  # order-statistic interval of the median (NaN when n is too small)
    ci_high: float
    min: float
    max: float
    cv: float  # stddev / mean

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {prefix + k: v for k, v in asdict(self).items()}


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean ± sample stddev, and the median with its order-statistic interval.

    Undefined figures are NaN: stddev needs two values, the interval `median_min_n(confidence)`.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan, nan)
    mean = float(x.mean())
    median = float(np.median(x))
    stddev = float(x.std(ddof=1)) if x.size > 1 else math.nan
    ci_low, ci_high = quantile_interval(x, 0.5, confidence)
    cv = stddev / mean if mean and not math.isnan(stddev) else math.nan
    return Summary(int(x.size), mean, stddev, median, ci_low, ci_high,
                   float(x.min()), float(x.max()), cv)


def median_min_n(confidence: float = 0.95) -> int:
    """The fewest values whose median has an order-statistic interval at `confidence`: [min, max]
    covers it with probability 1 − 2 · 0.5^n (6 at 95%)."""
    return math.ceil(math.log2(2 / (1 - confidence)))


def _log_binom_cdf(n: int, q: float) -> np.ndarray:
    """P(B ≤ k) for k = 0..n, B ~ Binomial(n, q), from log factorials (no scipy import)."""
    k = np.arange(n + 1)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    log_pmf = log_fact[n] - log_fact[k] - log_fact[n - k] + k * math.log(q) + (n - k) * math.log1p(-q)
    return np.minimum(np.cumsum(np.exp(log_pmf - log_pmf.max())) * math.exp(log_pmf.max()), 1.0)


def quantile_interval(values: Sequence[float], q: float, confidence: float = 0.95
                      ) -> tuple[float, float]:
    """Order statistics [x(l), x(u)] that cover the q-quantile with probability ≥ confidence
    (each tail ≤ (1 − confidence)/2). A bound that needs more samples than there are is NaN."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n == 0:
        return math.nan, math.nan
    cdf = _log_binom_cdf(n, q)  # cdf[j] = P(fewer than j+1 samples fall below the quantile)
    tail = (1 - confidence) / 2
    # x(l) (1-based) is below the quantile unless B ≤ l − 1: pick the largest l with cdf[l-1] ≤ tail.
    lows = np.nonzero(cdf[:n] <= tail)[0]
    low = float(x[lows[-1]]) if lows.size else math.nan
    # x(u) is above the quantile unless B ≥ u: pick the smallest u with 1 − cdf[u-1] ≤ tail.
    highs = np.nonzero(1 - cdf[:n] <= tail)[0]
    high = float(x[highs[0]]) if highs.size else math.nan
    return low, high


def rates(n_tokens: Sequence[int], durations_ns: Sequence[int]) -> list[float]:
    """Tokens per second of each trial."""
    return [n / (d / 1e9) for n, d in zip(n_tokens, durations_ns, strict=True) if d > 0]
