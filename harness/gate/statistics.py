"""Regression-gate statistics: one pure verdict from two samples of per-trial figures.

The statistic is the speed ratio of medians (current ÷ baseline for rates, baseline ÷ current
for latencies, so below 1 always means slower), with a seeded percentile-bootstrap interval,
and a one-sided rank test. Two settings change the interval and the test, not the statistic:

- paired (`tokbench ab`): trial i of A and trial i of B ran side by side in one ABBA block, so
  the bootstrap resamples pairs and the test is the Wilcoxon signed-rank test on each pair's
  log speed ratio. Drift that slows both arms alike (heat, a neighbour's job) then stays out of
  both, instead of widening the interval and blunting an unpaired test.
- unpaired (`tokbench gate` against stored runs): the Mann-Whitney U test.
- run-to-run drift (`tokbench gate`): a stored baseline ran in another job, and job-to-job
  drift of the medians is larger than a run's own trial noise (measured here: 3–6% on a
  shared 2-core VM). Its half-width, q·σ·√(1 + 1/k) for σ the spread of k baseline runs'
  medians, is added in quadrature (in log space) to the bootstrap interval's; σ is measured
  when the baseline holds ≥ MIN_HISTORY runs, and `run_to_run_cv` is assumed otherwise.

Rules, in order:

1. INCONCLUSIVE when either arm has fewer than `min_trials` trials, or when either arm's robust
   CV (1.4826·MAD / median: the stddev a normal sample with that MAD would have, relative to
   the median; outliers barely move it) exceeds `max_cv`.
2. The effective threshold is max(fail, noise floor); the noise floor is the larger robust CV
   of the two arms (one typical trial-to-trial deviation) or, against a stored baseline, the
   run-to-run drift σ when that is larger. A change smaller than that is never called, however
   many trials make it "significant".
3. REGRESSION when the whole interval is below 1 − threshold and the test says "slower"
   (p < alpha); INCONCLUSIVE when the interval straddles 1 − threshold (or the test disagrees),
   or reaches below 1 − fail without being wholly below 1 − threshold (a change within the
   noise floor); IMPROVED when the whole interval is above 1 + threshold and the test says
   "faster";
   PASS otherwise, with a warning when the median ratio is below 1 − warn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

REGRESSION, IMPROVED, PASS, INCONCLUSIVE = "REGRESSION", "IMPROVED", "PASS", "INCONCLUSIVE"
# No statistics: a failed case; a case with no baseline case; runs whose fingerprints differ.
ERROR, NO_BASELINE, NOT_COMPARABLE = "ERROR", "NO BASELINE", "NOT COMPARABLE"

#: One cell of the statistic: a robust, resampling-based interval needs a few thousand draws.
N_RESAMPLES = 10_000


@dataclass(frozen=True)
class Metric:
    """A gated figure, computed per trial from one stored phase sample."""

    key: str
    phase: str
    title: str
    unit: str
    higher_is_better: bool

    def value(self, n_tokens: int, duration_ns: int) -> float:
        return n_tokens / (duration_ns / 1e9) if self.higher_is_better else duration_ns / 1e6


#: Gated metrics, by the trial phase they come from. The serving latencies apply to trials that
#: store per-request phases under these names (a serving backend); they are skipped when absent.
METRICS: dict[str, Metric] = {m.key: m for m in (
    Metric("prefill", "pp", "prefill tok/s", "tok/s", True),
    Metric("decode", "tg", "decode tok/s", "tok/s", True),
    # llama-bench's pg test (imported): prompt and generated tokens over one timing of both
    Metric("combined", "pg", "pp+tg tok/s", "tok/s", True),
    Metric("ttft", "ttft", "TTFT", "ms", False),
    Metric("tpot", "tpot", "TPOT", "ms", False),
    Metric("itl", "itl", "ITL", "ms", False),
    Metric("e2el", "e2el", "E2EL", "ms", False),
)}


@dataclass(frozen=True)
class Thresholds:
    """Limits for one case × metric (fractions: 0.05 is 5%)."""

    fail: float = 0.05
    warn: float = 0.02
    max_cv: float = 0.10
    min_trials: int = 6
    alpha: float = 0.05
    confidence: float = 0.95
    #: Run-to-run CV of a case's median, assumed against a stored baseline of fewer than
    #: MIN_HISTORY runs (measured job to job on a quiet shared 2-core VM: 3–4% decode, 4–6% prefill).
    run_to_run_cv: float = 0.04

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


#: Baseline runs needed to measure run-to-run drift instead of assuming `run_to_run_cv`.
MIN_HISTORY = 3


@dataclass(frozen=True)
class Drift:
    """Run-to-run drift of one case × metric's median, for a baseline stored by other jobs."""

    cv: float  # σ of log(run median), ≈ relative standard deviation
    runs: int  # baseline runs pooled into the baseline sample
    measured: bool  # False: Thresholds.run_to_run_cv, assumed

    @classmethod
    def from_medians(cls, medians: Sequence[float], thresholds: Thresholds) -> Drift:
        """σ from the baseline runs' own medians when there are MIN_HISTORY or more."""
        logs = np.log(np.asarray(medians, dtype=float))
        if logs.size >= MIN_HISTORY:
            return cls(float(np.std(logs, ddof=1)), int(logs.size), True)
        return cls(thresholds.run_to_run_cv, max(int(logs.size), 1), False)

    def half_width(self, confidence: float) -> float:
        """Log-space half-width of a prediction interval for one new run's median."""
        from scipy import stats as sps  # scipy loads in about a second: only when judging

        tail = (1 + confidence) / 2
        q = sps.t.ppf(tail, self.runs - 1) if self.measured else sps.norm.ppf(tail)
        return float(q * self.cv * math.sqrt(1 + 1 / self.runs))

    def describe(self) -> str:
        if self.measured:
            return f"run-to-run drift {self.cv:.1%} measured over {self.runs} baseline runs"
        return (f"run-to-run drift {self.cv:.1%} assumed (run_to_run_cv; {self.runs} baseline "
                f"run{'s' if self.runs > 1 else ''}, give ≥ {MIN_HISTORY} to measure it)")


@dataclass(frozen=True)
class Comparison:
    """The statistics and verdict of current against baseline for one case × metric."""

    verdict: str
    reason: str
    n_baseline: int
    n_current: int
    median_baseline: float
    median_current: float
    cv_baseline: float  # robust CV
    cv_current: float
    ratio: float  # speed ratio of medians: < 1 is slower
    ci_low: float
    ci_high: float
    p_slower: float  # one-sided rank test (Wilcoxon paired, else Mann-Whitney U): current slower
    p_faster: float
    noise_floor: float
    threshold: float  # max(fail, noise floor)
    warn: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    paired: bool = False  # the interval resampled ABBA pairs
    drift: Drift | None = None  # run-to-run drift widened the interval (a stored baseline)
    #: A sequential `ab` case (harness.gate.sequential): trials taken per arm, why it stopped, and
    #: its budget; the interval is then the confidence sequence's, and p-values are not computed.
    sequential: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def robust_cv(values: Sequence[float]) -> float:
    """1.4826·MAD / median (NaN for fewer than two values)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan
    median = float(np.median(x))
    from scipy import stats as sps

    return float(sps.median_abs_deviation(x, scale="normal")) / median if median else math.nan


def _speed_ratio(higher_is_better: bool) -> Callable[..., np.ndarray]:
    """The statistic, in scipy's vectorized form."""

    def statistic(base: np.ndarray, cur: np.ndarray, axis: int = -1) -> np.ndarray:
        b, c = np.median(base, axis=axis), np.median(cur, axis=axis)
        return c / b if higher_is_better else b / c
    return statistic


def _interval(base: np.ndarray, cur: np.ndarray, higher_is_better: bool, confidence: float,
              seed: int, paired: bool) -> tuple[float, float]:
    if np.ptp(base) == 0 and np.ptp(cur) == 0:
        ratio = float(_speed_ratio(higher_is_better)(base, cur))
        return ratio, ratio
    from scipy import stats as sps

    res = sps.bootstrap(
        (base, cur), _speed_ratio(higher_is_better), paired=paired, vectorized=True,
        confidence_level=confidence, n_resamples=N_RESAMPLES, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _rank_test(base: np.ndarray, cur: np.ndarray, higher_is_better: bool, paired: bool
               ) -> tuple[float, float]:
    """One-sided p-values (current slower, current faster). Paired: Wilcoxon signed-rank on the
    pairs' log speed ratios (exact for small n; pairs that tie are dropped, and all tied is no
    evidence either way). Unpaired: Mann-Whitney U."""
    from scipy import stats as sps

    if paired:
        speed = np.log(cur / base) if higher_is_better else np.log(base / cur)
        if not np.any(speed):
            return 1.0, 1.0
        return (float(sps.wilcoxon(speed, alternative="less").pvalue),
                float(sps.wilcoxon(speed, alternative="greater").pvalue))
    slower, faster = ("less", "greater") if higher_is_better else ("greater", "less")
    return (float(sps.mannwhitneyu(cur, base, alternative=slower).pvalue),
            float(sps.mannwhitneyu(cur, base, alternative=faster).pvalue))


def _widen(ratio: float, low: float, high: float, extra: float) -> tuple[float, float]:
    """Each side of the interval and `extra` (log-space half-widths) added in quadrature."""
    r = math.log(ratio)
    below, above = r - math.log(low), math.log(high) - r
    return math.exp(r - math.hypot(below, extra)), math.exp(r + math.hypot(above, extra))


def compare(baseline: Sequence[float], current: Sequence[float], thresholds: Thresholds | None = None,
            higher_is_better: bool = True, seed: int = 0, paired: bool = False,
            drift: Drift | None = None) -> Comparison:
    """The verdict for one case × metric; the same inputs always give the same verdict.

    `paired`: baseline[i] and current[i] ran side by side (equal lengths required). `drift`: the
    baseline ran in other jobs; its run-to-run drift widens the interval and raises the floor."""

    th = thresholds or Thresholds()
    base = np.asarray(baseline, dtype=float)
    cur = np.asarray(current, dtype=float)
    nan = math.nan
    n_b, n_c = int(base.size), int(cur.size)
    med_b = float(np.median(base)) if n_b else nan
    med_c = float(np.median(cur)) if n_c else nan
    cv_b, cv_c = robust_cv(base), robust_cv(cur)
    if paired and n_b != n_c:
        raise ValueError(f"paired samples need equal lengths (baseline {n_b}, current {n_c})")
    ratio = ci_low = ci_high = p_slower = p_faster = nan
    if n_b and n_c:
        ratio = float(_speed_ratio(higher_is_better)(base, cur))
    if n_b >= 2 and n_c >= 2:
        ci_low, ci_high = _interval(base, cur, higher_is_better, th.confidence, seed, paired)
        if drift is not None and ratio > 0:
            ci_low, ci_high = _widen(ratio, ci_low, ci_high, drift.half_width(th.confidence))
        p_slower, p_faster = _rank_test(base, cur, higher_is_better, paired)
    floor = max(cv_b, cv_c) if not (math.isnan(cv_b) or math.isnan(cv_c)) else nan
    if drift is not None and not math.isnan(floor):
        floor = max(floor, drift.cv)
    threshold = max(th.fail, floor) if not math.isnan(floor) else th.fail

    def verdict(v: str, reason: str, warn: bool = False) -> Comparison:
        if drift is not None:
            reason = f"{reason}; {drift.describe()}"
        return Comparison(v, reason, n_b, n_c, med_b, med_c, cv_b, cv_c, ratio, ci_low, ci_high,
                          p_slower, p_faster, floor, threshold, warn, th, paired, drift)

    if min(n_b, n_c) < th.min_trials:
        return verdict(INCONCLUSIVE, f"too few trials ({n_b} baseline, {n_c} current; "
                                     f"need {th.min_trials} each)")
    noisy = max(cv_b, cv_c)
    if math.isnan(noisy) or noisy > th.max_cv:
        which = "baseline" if cv_b >= cv_c else "current"
        return verdict(INCONCLUSIVE, f"too noisy: {which} robust CV {noisy:.1%} > {th.max_cv:.1%}")
    low_line, high_line = 1 - threshold, 1 + threshold
    test = "Wilcoxon" if paired else "U"
    shown = f"[{ci_low:.3f}, {ci_high:.3f}]"
    if ci_high < low_line:
        if p_slower < th.alpha:
            return verdict(REGRESSION, f"{1 - ratio:.1%} slower: interval {shown} is below "
                                       f"{low_line:.3f} (threshold {threshold:.1%}), {test} "
                                       f"p={p_slower:.2g}")
        return verdict(INCONCLUSIVE, f"interval {shown} is below {low_line:.3f} but the {test} test "
                                     f"disagrees (p={p_slower:.2g} ≥ {th.alpha:g})")
    if ci_low < low_line:
        return verdict(INCONCLUSIVE, f"interval {shown} straddles the −{threshold:.1%} threshold")
    if ci_low < 1 - th.fail:
        return verdict(INCONCLUSIVE, f"interval {shown} reaches below −{th.fail:.1%} but not beyond "
                                     f"the noise floor (−{threshold:.1%})")
    if ci_low > high_line and p_faster < th.alpha:
        return verdict(IMPROVED, f"{ratio - 1:.1%} faster: interval {shown} is above {high_line:.3f}")
    warn = ratio < 1 - th.warn
    note = f"; median {1 - ratio:.1%} slower (warn at {th.warn:.1%})" if warn else ""
    return verdict(PASS, f"interval {shown} within −{threshold:.1%}{note}", warn)


def compare_history(runs: Sequence[Sequence[float]], current: Sequence[float],
                    thresholds: Thresholds | None = None, higher_is_better: bool = True) -> Comparison:
    """The current run's samples against stored baseline runs (oldest first): their trials
    pooled, their medians' spread the run-to-run drift."""
    th = thresholds or Thresholds()
    drift = Drift.from_medians([float(np.median(r)) for r in runs if len(r)], th)
    return compare([v for r in runs for v in r], current, th, higher_is_better, drift=drift)
