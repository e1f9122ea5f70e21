import math

import numpy as np
import pytest

from harness.common.stats import median_min_n, rates, summarize


def test_known_values() -> None:
    s = summarize([10.0, 11.0, 12.0, 10.5, 11.5, 11.0])
    assert s.n == 6
    assert s.mean == pytest.approx(11.0)
    assert s.stddev == pytest.approx(np.std([10, 11, 12, 10.5, 11.5, 11], ddof=1))  # sample stddev
    assert s.median == 11.0
    assert s.mean == pytest.approx(11.0)
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
    for n in (6, 40, 320):
        runs = [summarize(rng.normal(100, 5, n)) for _ in range(20)]
        widths[n] = np.median([r.ci_high - r.ci_low for r in runs])
    assert widths[6] > widths[40] > widths[320]


#: skewed and heavy-tailed, each with its true median
DISTRIBUTIONS = {
    "lognormal": (lambda rng, size: rng.lognormal(0.0, 1.0, size), 1.0),
    "exponential": (lambda rng, size: rng.exponential(1.0, size), math.log(2)),
    "pareto 1.5": (lambda rng, size: rng.pareto(1.5, size) + 1, 2 ** (1 / 1.5)),
    "cauchy": (lambda rng, size: rng.standard_cauchy(size), 0.0),
}


@pytest.mark.parametrize("n", [3, 5, 6, 10, 30])
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_a_95_percent_interval_covers_95_percent_at_every_n(name: str, n: int) -> None:
    """Where summarize gives an interval it covers the true median at least 95% of the time,
    within the simulation's error (4,000 samples: 3 standard errors is 1.0 point); where it
    cannot (n < 6), it gives none instead of a narrower range labelled 95%."""
    draw, median = DISTRIBUTIONS[name]
    rng = np.random.default_rng(n)
    samples = [summarize(draw(rng, n)) for _ in range(4000)]
    if n < median_min_n(0.95):
        assert all(math.isnan(s.ci_low) and math.isnan(s.ci_high) for s in samples)
        return
    coverage = np.mean([s.ci_low <= median <= s.ci_high for s in samples])
    assert coverage >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / 4000)


def test_the_interval_exists_from_six_values_at_95_percent() -> None:
    assert median_min_n(0.95) == 6 and median_min_n(0.99) == 8
    assert math.isnan(summarize([1, 2, 3, 4, 5]).ci_low)
    assert (summarize([3, 1, 2, 6, 5, 4]).ci_low, summarize([3, 1, 2, 6, 5, 4]).ci_high) == (1, 6)


def test_rates() -> None:
    assert rates([512, 128], [1_000_000_000, 2_000_000_000]) == [512.0, 64.0]


def test_the_table_says_when_trials_are_too_few_for_an_interval() -> None:
    from reports.tables import _median

    few, enough = summarize([10.0, 12.0, 11.0]), summarize([10.0, 12.0, 11.0, 10.5, 11.5, 11.0])
    shown = _median(few.median, few.ci_low, few.ci_high, few.n, few.min, few.max)
    assert shown == "11.00 (n=3: range 10.00–12.00, too few for a 95% CI)"
    assert _median(enough.median, enough.ci_low, enough.ci_high, enough.n, enough.min,
                   enough.max) == "11.00 [10.00, 12.00]"
