"""The sequential A/B gate: `tokbench ab` adds ABBA blocks until the verdict is decided or a time or
trial budget runs out, and the false-alarm rate holds however often it looks.

The observation. Trial i of A and trial i of B give a pair log speed ratio (log(B/A) for rates,
log(A/B) for latencies: below 0 is slower). One ABBA unit (A B B A, each letter `block` trials)
holds 2·block pairs, half with A first and half with B first; its mean is one observation x_j.
Drift shared by the arms cancels in a pair, a linear trend within the unit cancels between its
halves, and so does an order effect (measured on this project's 2-core VM over 276 A/A jobs:
prefill ran 1.2% faster in whichever arm went second; decode showed none). Under A/A the two
arms are exchangeable, so x_j is symmetric about 0; under a change it is symmetric about μ, the
mean log speed ratio, as long as the change shifts the trial figures rather than reshaping them
(a difference of i.i.d. noise terms is symmetric even when the noise itself is skewed).

The bound. To test a value m, unit j enters as y_j = clip((x_j − m)/c_j, ±1), with c_j = CLIP_AT
robust scales of the units before it: an odd transform fixed before x_j is seen, so y_j is still
conditionally symmetric about 0 when μ = m, while one wild unit cannot swamp the rest and the
statistic does not depend on the noise's scale. For such y, exp(λS − λ²V/2) with S = Σy_j,
V = Σy_j² is a supermartingale for every λ (de la Peña 1999); mixing λ over a half-normal of
precision RHO gives a closed form, and Ville's inequality makes the set of m it does not reject a
confidence sequence (Howard, Ramdas, McAuliffe & Sekhon 2021, the self-normalized case): it holds
at every sample size at once, so stopping whenever it decides keeps the error rates. It needs no
variance, range or Gaussian tail, only symmetry, unlike a normal mixture with a plugged-in σ
(not valid) or a fixed-range betting or empirical-Bernstein bound (whose width has a floor of
range·log(1/α)/n: a range wide enough for a rare 50% outlier needed ~46 units for 10% even on a
quiet machine, in simulation). Each side (upper bound, lower bound) is one-sided at α/2,
α = 1 − confidence, and the bounds are running intersections. Ratios beyond e^±RANGE (2.7×) are not
searched. The first BURN_IN units only give the first scale, and self-normalization has a minimum:
at α = 0.05 nothing is decided before 13 units (26 trials per arm at --block 1), whatever the
noise.

The verdict (thresholds as in statistics.compare; threshold = fail):
- REGRESSION when the upper bound is below log(1 − threshold): P(this ever happens while the
  true slowdown is below the threshold) ≤ α/2 per case × metric, A/A included;
- PASS when the lower bound is above log(1 − threshold) (IMPROVED above log(1 + threshold)):
  the slowdown is bounded below the threshold, with the same guarantee;
- INCONCLUSIVE while neither holds.
No noise floor from the trials' CV raises the threshold here, unlike the fixed-n test: the
floor kept a 10-trial bootstrap interval from calling a change that the trial noise could have
made, and the sequence's width already carries that noise at every n (at CV 10% a 10% slowdown
would otherwise never clear a 10% floor). What the floor cannot see, a systematic A/A offset
between two workers of one build, `fail` covers: measured 0.6–0.7% job to job on the VM above,
well under the 5% default. The max_cv rule does not apply either: noisy runners are what the
sequential test is for.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.common.errors import TokbenchError
from harness.gate.statistics import (
    IMPROVED,
    INCONCLUSIVE,
    PASS,
    REGRESSION,
    Comparison,
    Thresholds,
    robust_cv,
)

if TYPE_CHECKING:
    from harness.gate.config import GateConfig
    from harness.gate.matching import GateReport

#: Precision of the mixture over λ, in the scaled units (|y| ≤ 1): about the V (≈ 0.2 per unit)
#: of the 30–80 units that deciding takes at CV 10%, divided by 2·log(2/α) + its log (Howard et al.).
RHO = 1.0
#: Log speed ratios searched: ±1 (0.37× to 2.7×).
RANGE = 1.0
#: Grid step of the bounds (log ratio); the threshold lines are added to the grid.
STEP = 0.001
#: Units enter scaled by, and clipped at, CLIP_AT robust scales of the units before them; the
#: first BURN_IN units only give that scale. MIN_SCALE (log ratio) floors the scale.
CLIP_AT, BURN_IN, MIN_SCALE = 2.5, 3, 0.002
DEFAULT_BUDGET_S = 300.0
DEFAULT_MAX_TRIALS = 400  # per arm: a cap for fast cases (about 10 minutes of pp64+tg16 trials)
NOTE = "sequential ABBA"  # prefix of the case note that marks a sequential run's cases


def parse_duration(text: str) -> float:
    """Seconds from `300`, `300s`, `5m`, `1.5h`."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text)
    if not found or float(found.group(1)) <= 0:
        raise TokbenchError(f"--budget {text!r}: give a time such as 5m, 300s or 1.5h")
    return float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]


@dataclass(frozen=True)
class Plan:
    """A sequential `ab` run: its time budget (all case pairs together) and trial cap per arm."""

    budget_s: float = DEFAULT_BUDGET_S
    max_trials: int = DEFAULT_MAX_TRIALS
    block: int = 1

    @property
    def unit(self) -> int:
        """Trials per arm in one ABBA unit."""
        return 2 * self.block

    def note(self, trials: int, reason: str) -> str:
        """The case note that records how the case stopped (parsed back by `from_note`)."""
        return (f"{NOTE} (block {self.block}, budget {self.budget_s:g} s, at most {self.max_trials} "
                f"trials per arm): stopped after {trials} trials per arm: {reason}")

    @classmethod
    def from_note(cls, notes: Sequence[str] | None) -> tuple[Plan, str] | None:
        for note in notes or ():
            found = re.match(rf"{NOTE} \(block (\d+), budget ([\d.e+]+) s, at most (\d+) trials per arm\): "
                             r"stopped after \d+ trials per arm: (.*)", note)
            if found:
                plan = cls(float(found.group(2)), int(found.group(3)), int(found.group(1)))
                return plan, found.group(4)
        return None


def units(baseline: Sequence[float], current: Sequence[float], higher_is_better: bool = True,
          block: int = 1) -> np.ndarray:
    """Per ABBA unit, the mean pair log speed ratio (below 0: current slower); a last, incomplete
    unit is left out."""
    base, cur = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if base.size != cur.size:
        raise ValueError(f"paired samples need equal lengths (baseline {base.size}, current {cur.size})")
    speed = np.log(cur / base) if higher_is_better else np.log(base / cur)
    size = 2 * block
    n = speed.size // size
    return speed[: n * size].reshape(n, size).mean(axis=1)


def _log_evidence(s: np.ndarray, v: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """log of the one-sided mixture martingales: (evidence that μ is below the tested value,
    evidence that it is above), from S and V of x − tested value."""
    from scipy.special import log_ndtr

    common = math.log(2) + 0.5 * np.log(rho / (v + rho)) + s * s / (2 * (v + rho))
    z = s / np.sqrt(v + rho)
    return common + log_ndtr(-z), common + log_ndtr(z)


def _scale(x: np.ndarray) -> np.ndarray:
    """Predictable clip half-widths per unit: CLIP_AT × the robust scale (1.4826·MAD) of the units
    before it; nan for the first BURN_IN units, which only give the first scale (and a unit-free
    floor keeps identical units from a zero scale). x has shape (batch, n)."""
    out = np.full(x.shape, np.nan)
    for t in range(BURN_IN, x.shape[1]):
        past = x[:, :t]
        mad = np.median(np.abs(past - np.median(past, axis=1, keepdims=True)), axis=1)
        out[:, t] = CLIP_AT * np.maximum(1.4826 * mad, MIN_SCALE)
    return out


def bounds(x: np.ndarray, alpha: float, rho: float = RHO, step: float = STEP,
           extra: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Running lower and upper bounds of μ after each unit (each side one-sided at α/2): the
    smallest and largest values of a grid over ±RANGE (plus `extra` values, such as threshold
    lines) that the sequence has not rejected. Tested against a value m, unit t enters as
    clip((x_t − m) / c_t, ±1), c_t from the units before it (`_scale`): an odd transform fixed
    before x_t is seen, so the symmetry about m that the bound needs survives it, while one wild
    unit no longer swells V, and the statistic no longer depends on the noise's scale (RHO is in
    these units). x has shape (batch, n) or (n,); a side whose every value is rejected reads
    RANGE + step beyond the grid; nothing is rejected during the burn-in."""
    x = np.asarray(x, dtype=float)
    flat = x.reshape(-1, x.shape[-1])
    scale = _scale(flat)
    grid = np.union1d(np.arange(-RANGE, RANGE + step / 2, step), np.asarray(extra, dtype=float))
    crit = math.log(2 / alpha)
    s = np.zeros((flat.shape[0], grid.size))
    v = np.zeros((flat.shape[0], grid.size))
    lower = np.full(flat.shape, -RANGE - step)
    upper = np.full(flat.shape, RANGE + step)
    low, high = np.full(flat.shape[0], -np.inf), np.full(flat.shape[0], np.inf)
    for t in range(BURN_IN, flat.shape[1]):  # one unit at a time: (batch, grid) arrays
        y = np.clip((flat[:, t:t + 1] - grid) / scale[:, t:t + 1], -1.0, 1.0)
        s += y
        v += y * y
        below, above = _log_evidence(s, v, rho)
        keep_up, keep_low = below < crit, above < crit
        up = np.where(keep_up.any(1), grid[::-1][np.argmax(keep_up[:, ::-1], axis=1)], -RANGE - step)
        lo = np.where(keep_low.any(1), grid[np.argmax(keep_low, axis=1)], RANGE + step)
        high, low = np.minimum(high, up), np.maximum(low, lo)
        upper[:, t], lower[:, t] = high, low
    return lower.reshape(x.shape), upper.reshape(x.shape)


def decisions(x: np.ndarray, thresholds: Thresholds, rho: float = RHO, step: float = STEP) -> np.ndarray:
    """The verdict code after each unit: 0 undecided, −1 REGRESSION, +1 PASS, +2 IMPROVED, from the
    running bounds (so a decided verdict stays). x has shape (batch, n) or (n,)."""
    th = thresholds
    lines = (math.log(1 - th.fail), math.log(1 + th.fail))
    lower, upper = bounds(x, 1 - th.confidence, rho, step, lines)
    code = np.where(upper < lines[0], -1, np.where(lower > lines[1], 2, np.where(lower > lines[0], 1, 0)))
    n = np.arange(1, code.shape[-1] + 1)
    return np.where(n >= min_units(th), code, 0)


def min_units(thresholds: Thresholds) -> int:
    """Units before any verdict: enough for min_trials per arm at --block 1 (3 for the default 6)."""
    return max(1, -(-thresholds.min_trials // 2))


_VERDICTS = {-1: REGRESSION, 0: INCONCLUSIVE, 1: PASS, 2: IMPROVED}


def compare_sequential(baseline: Sequence[float], current: Sequence[float],
                       thresholds: Thresholds | None = None, higher_is_better: bool = True,
                       block: int = 1) -> Comparison:
    """The verdict of a sequential `ab` case × metric after all its units (the same at the unit
    where the run stopped: a decided verdict stays). `ratio` is exp(mean x), the interval the
    confidence sequence's bounds; p-values are not computed (nan)."""
    th = thresholds or Thresholds()
    base, cur = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    x = units(base, cur, higher_is_better, block)
    n, nan = int(base.size), math.nan
    med_b = float(np.median(base)) if n else nan
    med_c = float(np.median(cur)) if n else nan
    ratio = low = high = nan
    code = 0
    if x.size:
        ratio = math.exp(float(x.mean()))
        lines = (math.log(1 - th.fail), math.log(1 + th.fail))
        lower, upper = bounds(x, 1 - th.confidence, extra=lines)
        low, high = math.exp(float(lower[-1])), math.exp(float(upper[-1]))
        code = int(decisions(x, th)[-1])
    verdict = _VERDICTS[code]
    line = 1 - th.fail
    shown = f"[{low:.3f}, {high:.3f}]"
    warn = False
    if x.size < min_units(th):
        reason = f"too few ABBA units ({x.size}; need {min_units(th)})"
    elif verdict == REGRESSION:
        reason = f"{1 - ratio:.1%} slower: sequence {shown} is below {line:.3f} (threshold {th.fail:.1%})"
    elif verdict == IMPROVED:
        reason = f"{ratio - 1:.1%} faster: sequence {shown} is above {1 + th.fail:.3f}"
    elif verdict == PASS:
        warn = ratio < 1 - th.warn
        note = f"; mean {1 - ratio:.1%} slower (warn at {th.warn:.1%})" if warn else ""
        reason = f"sequence {shown} is above −{th.fail:.1%}{note}"
    else:
        reason = f"sequence {shown} straddles the −{th.fail:.1%} threshold"
    reason += f"; {x.size} ABBA units, {n} trials per arm"
    return Comparison(verdict, reason, n, n, med_b, med_c, robust_cv(base), robust_cv(cur), ratio, low, high,
                      nan, nan, 0.0, th.fail, warn, th, paired=True)


# -- a live run's stopping rule, and the report ---------------------------------------------------
def case_comparisons(a_case: dict[str, Any], b_case: dict[str, Any], config: GateConfig,
                     block: int) -> dict[str, Comparison]:
    """Each metric of a case pair (stored-case dicts with their trials), judged sequentially."""
    from harness.gate.matching import case_label, case_metrics, metric_trials

    label = case_label(a_case, b_case)
    out = {}
    for metric in case_metrics(b_case):
        a, b = dict(metric_trials(a_case, metric)), dict(metric_trials(b_case, metric))
        common = sorted(set(a) & set(b))  # trial i of A with trial i of B
        out[metric.key] = compare_sequential([a[i] for i in common], [b[i] for i in common],
                                             config.thresholds(label, metric.key), metric.higher_is_better,
                                             block)
    return out


def stop_reason(comparisons: dict[str, Comparison]) -> str | None:
    """Why a case pair may stop now, or None: every metric decided, or one a REGRESSION (the gate
    fails whatever the rest would become)."""
    if not comparisons:
        return "nothing to judge"
    regressed = [key for key, c in comparisons.items() if c.verdict == REGRESSION]
    if regressed:
        rest = [key for key, c in comparisons.items() if c.verdict == INCONCLUSIVE]
        left = f"; {', '.join(rest)} left undecided" if rest else ""
        return f"decided: {', '.join(regressed)} REGRESSION{left}"
    if all(c.verdict != INCONCLUSIVE for c in comparisons.values()):
        return "decided: " + ", ".join(f"{k} {c.verdict}" for k, c in comparisons.items())
    return None


def apply(report: GateReport, run: dict[str, Any], config: GateConfig, today: dt.date | None = None) -> None:
    """Re-judge, with the sequential test, the entries of the case pairs of `run` (an `ab` run
    document) that ran sequentially (their B case carries the stop note); fixed-n pairs keep
    their verdicts."""
    from harness.gate.matching import case_label

    today = today or dt.date.today()
    a_cases = [c for c in run["cases"] if c.get("arm") == "A"]
    b_cases = [c for c in run["cases"] if c.get("arm") == "B"]
    stopped = {}
    for a, b in zip(a_cases, b_cases, strict=False):
        found = Plan.from_note(b.get("notes"))
        if found:
            stopped[case_label(a, b)] = found
    for entry in report.entries:
        found = stopped.get(entry.case)
        if found is None or entry.comparison is None or not entry.comparison.paired:
            continue  # an ERROR entry, or a lost trial that left the arms unpaired: as judged
        plan, why = found
        result = compare_sequential(entry.baseline, entry.current, entry.thresholds,
                                    entry.metric.higher_is_better, plan.block)
        result = replace(result, reason=f"{result.reason}; stopped: {why}", sequential={
            "trials": result.n_current, "stopped": why, "budget_s": plan.budget_s,
            "max_trials": plan.max_trials, "block": plan.block})
        entry.verdict, entry.reason, entry.comparison = result.verdict, result.reason, result
        entry.accepted, entry.expired = (config.acceptance(entry.case, entry.metric.key, today)
                                         if result.verdict == REGRESSION else (None, None))
        if entry.expired:
            warning = (f"accepted regression for {entry.case} {entry.metric.key} expired on "
                       f"{entry.expired.expires.isoformat()} ({entry.expired.reason}); "
                       "it fails the gate again")
            if warning not in report.warnings:
                report.warnings.append(warning)
