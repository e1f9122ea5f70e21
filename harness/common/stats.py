"""One pure summary of a sample: no printing, and no zeros standing in for missing data."""

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
    ci_low: float  # bootstrap interval of the median
    ci_high: float
    min: float
    max: float
    cv: float  # stddev / mean

    def as_dict(self, prefix: str = "") -> dict[str, float | int]:
        return {prefix + k: v for k, v in asdict(self).items()}


def summarize(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 5000,
              seed: int = 0) -> Summary:
    """Mean ± sample stddev, and the median with a percentile-bootstrap interval.

    Undefined figures are NaN: stddev and the interval need at least two values.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan, nan)
    mean = float(x.mean())
    median = float(np.median(x))
    if x.size < 2:
        stddev = ci_low = ci_high = math.nan
    else:
        stddev = float(x.std(ddof=1))
        if np.ptp(x) == 0:
            ci_low = ci_high = median
        else:
            ci_low, ci_high = _bootstrap_median(x, confidence, n_resamples, seed)
    cv = stddev / mean if mean and not math.isnan(stddev) else math.nan
    return Summary(int(x.size), mean, stddev, median, ci_low, ci_high,
                   float(x.min()), float(x.max()), cv)


def _bootstrap_median(x: np.ndarray, confidence: float, n_resamples: int, seed: int
                      ) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, as scipy.stats.bootstrap(method="percentile")
    computes it, in numpy: importing scipy.stats takes over two seconds, more than a short grid's
    whole harness overhead."""
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(n_resamples, x.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def rates(n_tokens: Sequence[int], durations_ns: Sequence[int]) -> list[float]:
    """Tokens per second of each trial."""
    return [n / (d / 1e9) for n, d in zip(n_tokens, durations_ns, strict=True) if d > 0]
