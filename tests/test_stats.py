import math

import numpy as np
import pytest

from harness.common.stats import rates, summarize


def test_known_values() -> None:
    s = summarize([10.0, 11.0, 12.0, 10.5, 11.5])
    assert s.n == 5
    assert s.mean == pytest.approx(11.0)
    assert s.stddev == pytest.approx(np.std([10, 11, 12, 10.5, 11.5], ddof=1))  # sample stddev
    assert s.median == 11.0
    assert s.ci_low <= s.median <= s.ci_high
    assert (s.min, s.max) == (10.0, 12.0)


def test_undefined_figures_are_nan_not_zero() -> None:
    one = summarize([5.0])
    assert one.mean == 5.0 and one.median == 5.0
    assert math.isnan(one.stddev) and math.isnan(one.ci_low) and math.isnan(one.cv)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_more_repetitions_tighten_the_interval() -> None:
    rng = np.random.default_rng(1)
    widths = {}
    for n in (5, 40, 320):
        runs = [summarize(rng.normal(100, 5, n), seed=i) for i in range(20)]
        widths[n] = np.median([r.ci_high - r.ci_low for r in runs])
    assert widths[5] > widths[40] > widths[320]


def test_interval_covers_the_true_median_most_of_the_time() -> None:
    rng = np.random.default_rng(2)
    hits = sum(s.ci_low <= 100 <= s.ci_high
               for s in (summarize(rng.normal(100, 5, 30), seed=i) for i in range(100)))
    assert hits >= 85


def test_rates() -> None:
    assert rates([512, 128], [1_000_000_000, 2_000_000_000]) == [512.0, 64.0]
