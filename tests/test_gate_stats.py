"""Gate statistics on synthetic samples with known shifts and known noise (seeded: not flaky)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.gate.statistics import (
    IMPROVED,
    INCONCLUSIVE,
    MIN_HISTORY,
    PASS,
    REGRESSION,
    Drift,
    Thresholds,
    compare,
    robust_cv,
)


def _arms(shift: float, cv: float, n: int = 10, seed: int = 0, base: float = 50.0):
    """Baseline and current tokens/s: current's true median is base × (1 + shift)."""
    rng = np.random.default_rng(seed)
    return rng.normal(base, base * cv, n), rng.normal(base * (1 + shift), base * (1 + shift) * cv, n)


@pytest.mark.parametrize(("shift", "verdict"), [
    (0.0, PASS),
    (-0.10, REGRESSION),
    (-0.20, REGRESSION),
    (+0.10, IMPROVED),
    (-0.05, INCONCLUSIVE),  # the interval straddles the 5% line
])
def test_known_shifts_give_the_expected_verdict(shift: float, verdict: str) -> None:
    base, cur = _arms(shift, cv=0.01)
    result = compare(base, cur)
    assert result.verdict == verdict, result.reason
    assert result.ci_low <= result.ratio <= result.ci_high
    assert result.ratio == pytest.approx(1 + shift, abs=0.015)


def test_a_small_slowdown_passes_with_a_warning() -> None:
    result = compare(*_arms(-0.03, cv=0.005))
    assert result.verdict == PASS and result.warn
    assert "warn at 2.0%" in result.reason
    assert not compare(*_arms(-0.005, cv=0.005)).warn


def test_latencies_are_slower_when_they_grow() -> None:
    rng = np.random.default_rng(3)
    ttft_base, ttft_cur = rng.normal(100, 1, 10), rng.normal(112, 1.1, 10)  # ms: 12% longer
    result = compare(ttft_base, ttft_cur, higher_is_better=False)
    assert result.verdict == REGRESSION
    assert result.ratio == pytest.approx(100 / 112, abs=0.01)  # speed ratio: below 1 is slower
    assert compare(ttft_cur, ttft_base, higher_is_better=False).verdict == IMPROVED


def test_noise_above_the_cv_limit_is_inconclusive_even_for_a_big_shift() -> None:
    result = compare(*_arms(-0.30, cv=0.2, n=10))
    assert result.verdict == INCONCLUSIVE and "too noisy" in result.reason
    assert max(result.cv_baseline, result.cv_current) > 0.10
    looser = compare(*_arms(-0.30, cv=0.2, n=10), thresholds=Thresholds(max_cv=0.5))
    assert looser.verdict == REGRESSION


def test_too_few_trials_are_inconclusive() -> None:
    result = compare(*_arms(-0.30, cv=0.01, n=5))
    assert result.verdict == INCONCLUSIVE and "too few trials" in result.reason
    assert compare(*_arms(-0.30, cv=0.01, n=6)).verdict == REGRESSION


def test_the_noise_floor_raises_the_threshold_above_fail() -> None:
    """7.5% slower with 8% trial noise: many trials make the interval tight and wholly below
    0.95, yet the floor (one robust CV) keeps it from being called a regression."""
    base, cur = _arms(-0.075, cv=0.08, n=500, seed=5)
    result = compare(base, cur)
    assert result.ci_high < 0.95  # a bare 5% threshold would call this a regression
    assert result.noise_floor == pytest.approx(max(robust_cv(base), robust_cv(cur)))
    assert result.threshold == result.noise_floor > 0.05
    assert result.verdict == INCONCLUSIVE


def test_u_test_must_agree() -> None:
    """Medians far apart but the samples interleave (bimodal): U does not call it 'slower'."""
    base = [100, 100, 100, 100, 100, 100, 60, 60, 60, 60, 60]
    cur = [60, 60, 60, 60, 60, 60, 100, 100, 100, 100, 100]
    result = compare(base, cur, Thresholds(max_cv=1.0))
    assert result.verdict != REGRESSION
    assert result.p_slower > 0.05


def test_verdicts_are_reproducible() -> None:
    base, cur = _arms(-0.06, cv=0.02)
    assert compare(base, cur) == compare(base, cur)


def test_robust_cv_ignores_an_outlier() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(100, 2, 2000)
    assert robust_cv(x) == pytest.approx(0.02, rel=0.1)
    assert robust_cv([*x[:9], 10.0]) < 0.05  # one collapsed trial barely moves it
    assert np.isnan(robust_cv([1.0]))


def test_false_alarm_and_detection_rates_on_simulated_noise() -> None:
    """Default trials (10), 2% normal noise: A/A never regresses; a 10% slowdown is caught."""
    aa = [compare(*_arms(0.0, 0.02, seed=s)).verdict for s in range(150)]
    slow = [compare(*_arms(-0.10, 0.02, seed=s)).verdict for s in range(150)]
    assert aa.count(REGRESSION) == 0
    assert slow.count(REGRESSION) / len(slow) >= 0.9


def test_pairs_keep_shared_drift_out_of_the_interval() -> None:
    """Trial i of each arm ran side by side; a load that slows both by 0–15% is shared."""
    rng = np.random.default_rng(8)
    load = rng.uniform(0.85, 1.0, 10)
    base, cur = 50 * load * rng.normal(1, 0.005, 10), 46 * load * rng.normal(1, 0.005, 10)  # 8% slower
    paired = compare(base, cur, Thresholds(max_cv=0.3), paired=True)
    unpaired = compare(base, cur, Thresholds(max_cv=0.3))
    assert paired.paired and paired.verdict == REGRESSION, paired.reason
    assert unpaired.verdict == INCONCLUSIVE
    assert paired.ci_high - paired.ci_low < (unpaired.ci_high - unpaired.ci_low) / 3
    with pytest.raises(ValueError, match="equal lengths"):
        compare(base, cur[:-1], paired=True)


def test_run_to_run_drift_is_measured_from_history_or_assumed() -> None:
    th = Thresholds(run_to_run_cv=0.04)
    assumed = Drift.from_medians([100.0, 103.0], th)
    assert (assumed.cv, assumed.runs, assumed.measured) == (0.04, 2, False)
    measured = Drift.from_medians([100.0, 102.0, 98.0, 101.0], th)
    assert measured.measured and measured.runs == 4 >= MIN_HISTORY
    assert measured.cv == pytest.approx(np.std(np.log([100, 102, 98, 101]), ddof=1))
    # Prediction interval for one new run: Student t with runs − 1 degrees of freedom.
    assert measured.half_width(0.95) == pytest.approx(3.182 * measured.cv * np.sqrt(1.25), rel=1e-3)
    assert Drift(0.04, 1, False).half_width(0.95) == pytest.approx(1.96 * 0.04 * np.sqrt(2), rel=1e-3)


def test_drift_widens_the_interval_and_raises_the_floor() -> None:
    base, cur = _arms(-0.10, cv=0.01)
    within = compare(base, cur)
    assert within.verdict == REGRESSION
    drifty = compare(base, cur, drift=Drift(0.06, 5, True))
    assert drifty.ci_low < within.ci_low and drifty.ci_high > within.ci_high
    assert drifty.noise_floor == 0.06 and drifty.threshold == 0.06
    assert drifty.verdict == INCONCLUSIVE and "measured over 5 baseline runs" in drifty.reason
    assert compare(*_arms(-0.30, cv=0.01), drift=Drift(0.06, 5, True)).verdict == REGRESSION


def test_paired_arms_are_tested_paired() -> None:
    """A shared load that swings both arms by up to 40% hides an 8% slowdown from an unpaired
    rank test; the signed-rank test on the pairs sees every pair slower (exact p = 2^-10). The
    verdict still waits for the noise floor (each arm's spread), so it is not a REGRESSION."""
    rng = np.random.default_rng(3)
    load = rng.uniform(0.6, 1.0, 10)
    base, cur = 50 * load * rng.normal(1, 0.005, 10), 46 * load * rng.normal(1, 0.005, 10)
    unpaired = compare(base, cur, Thresholds(max_cv=0.5))
    paired = compare(base, cur, Thresholds(max_cv=0.5), paired=True)
    assert unpaired.p_slower > 0.05 and paired.p_slower == pytest.approx(1 / 2 ** 10)
    assert paired.p_faster == pytest.approx(1.0)
    latency = compare(1000 / base, 1000 / cur, Thresholds(max_cv=0.5), higher_is_better=False,
                      paired=True)
    assert latency.p_slower == pytest.approx(1 / 2 ** 10)  # longer times are slower
