"""Sweeps and SLO capacity: the rules that judge a load level from its request records, shared by
the runner that chooses the next level and the reports that state the answer afterwards (so a
stored search is re-judged exactly as it was run).

- A level meets the SLO when the chosen percentile (p99 by default) of every SLO metric is within
  its limit; a failed request counts as a violation of every limit.
- It meets it *surely* when the one-sided order-statistic upper bound of that percentile is
  within the limit, and fails surely when the lower bound is above it. This is MLPerf LoadGen's
  early-stopping idea: with n requests of which h are over the limit, the percentile is proven
  within it only if h violations would be unlikely (≤ 1 − confidence) were the true share of
  violations 1 − q. Below `min_requests(q, confidence)` requests no level can pass surely.
- The capacity is the highest level that meets the SLO, given that every tested level below it
  does too; its interval runs from the highest level below which everything passed surely to
  just under the lowest level that failed surely.
- A sweep is saturated when a doubling adds less than 10% output tok/s over the best lower load
  while median TTFT grows by half or more: requests are queueing, not being served faster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.common.serving import metric_samples, summarize
from harness.common.stats import quantile_interval

SATURATION_GAIN = 0.10  # less output tok/s growth than this over the best lower load …
SATURATION_TTFT = 1.5  # … while median TTFT grows at least this much: saturated


def min_requests(q: float, confidence: float) -> int:
    """The fewest requests for which an order-statistic bound can prove the q-quantile within a
    limit (all of them within it): q^n ≤ 1 − confidence (p99 at 95%: 299)."""
    return math.ceil(math.log(1 - confidence) / math.log(q))


@dataclass
class Judgement:
    """One load level, all its records pooled."""

    level: float
    n: int
    meets: bool  # the sample percentile of every metric is within its limit
    sure: str | None  # "pass" | "fail" when the order-statistic bound decides, else None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # estimate, low, high, limit

    def describe(self, percentile: float) -> str:
        parts = [f"p{percentile:g} {m} {v['estimate']:.1f} ms [{v['low']:.1f}, {v['high']:.1f}] vs "
                 f"{v['limit']:g}" for m, v in self.metrics.items()]
        sure = {"pass": "meets surely", "fail": "fails surely", None: "undecided"}[self.sure]
        return f"{sure} at n={self.n}: " + "; ".join(parts)


def judge(records: Sequence[dict[str, Any]], slo: dict[str, float], percentile: float,
          confidence: float) -> tuple[bool, str | None, dict[str, dict[str, float]]]:
    """(meets, sure, per-metric estimate/bounds) for one level's pooled records."""
    q = percentile / 100
    judged = [r for r in records if r.get("status") in ("ok", "error")]
    failed = sum(1 for r in judged if r["status"] == "error")
    metrics: dict[str, dict[str, float]] = {}
    meets, sure_pass, sure_fail = True, True, False
    for metric, limit in slo.items():
        values = sorted(metric_samples(judged, metric) + [math.inf] * failed)
        if not values:
            return False, None, metrics
        estimate = float(values[min(len(values) - 1, math.ceil(q * len(values)) - 1)])
        # one-sided bounds at `confidence` each: the two-sided interval with both tails 1 − confidence
        low, high = quantile_interval(values, q, 2 * confidence - 1)
        metrics[metric] = {"estimate": estimate, "low": low, "high": high, "limit": limit}
        meets &= estimate <= limit
        sure_pass &= not math.isnan(high) and high <= limit
        sure_fail |= not math.isnan(low) and low > limit
    sure = "fail" if sure_fail else "pass" if sure_pass else None
    return meets, sure, metrics


@dataclass
class Point:
    """A stored case of a search: its level and its records (every trial)."""

    level: float
    records: list[dict[str, Any]]
    wall_s: float
    step: int = 0


def pool(points: Sequence[Point]) -> dict[float, list[Point]]:
    out: dict[float, list[Point]] = {}
    for p in sorted(points, key=lambda p: (p.level, p.step)):
        out.setdefault(p.level, []).append(p)
    return out


def judgements(points: Sequence[Point], slo: dict[str, float], percentile: float,
               confidence: float) -> list[Judgement]:
    out = []
    for level, same in pool(points).items():
        records = [r for p in same for r in p.records]
        meets, sure, metrics = judge(records, slo, percentile, confidence)
        out.append(Judgement(level, sum(r.get("status") in ("ok", "error") for r in records),
                             meets, sure, metrics))
    return out


@dataclass
class Capacity:
    level: float | None  # None: not even the lowest level tested meets the SLO
    low: float  # everything up to here met the SLO surely (0: nothing did)
    high: float  # below the lowest level that failed surely (inf: none did)
    reached_max: bool
    judgements: list[Judgement]
    goodput: dict[str, Any] | None = None  # at the capacity level, all its records pooled
    output_tps: float | None = None


def capacity(points: Sequence[Point], slo: dict[str, float], percentile: float, confidence: float,
             by: str, max_level: float) -> Capacity:
    """The answer a search's points give (see the module docstring)."""
    js = judgements(points, slo, percentile, confidence)
    best = None
    for j in js:
        if not j.meets:
            break
        best = j.level
    low = 0.0
    for j in js:
        if j.sure != "pass":
            break
        low = j.level
    fails = [j.level for j in js if j.sure == "fail"]
    high = math.inf
    if fails:
        high = fails[0] - 1 if by == "concurrency" else fails[0]
    cap = Capacity(best, low, high, best is not None and best >= max_level, js)
    if best is not None:
        same = pool(points)[best]
        records = [r for p in same for r in p.records]
        summary = summarize(records, sum(p.wall_s for p in same), slo)
        cap.goodput, cap.output_tps = summary["goodput"], summary["output_tps"]
    return cap


def describe(cap: Capacity, by: str, percentile: float, slo: dict[str, float]) -> str:
    """The answer in one line: level, interval, goodput there."""
    unit = "streams" if by == "concurrency" else "requests/s"
    limits = ", ".join(f"{k} ≤ {v:g} ms" for k, v in slo.items())
    if cap.level is None:
        first = cap.judgements[0] if cap.judgements else None
        where = f" at {first.level:g} {unit}, {first.describe(percentile)}" if first else ""
        return f"no load tested meets p{percentile:g} {limits}{where}"
    high = "∞ (no level tested failed surely)" if math.isinf(cap.high) else f"{cap.high:g}"
    if cap.level == 1 and by == "concurrency":
        unit = "stream"
    text = (f"the highest load meeting p{percentile:g} {limits} is {cap.level:g} {unit} "
            f"(interval [{cap.low:g}, {high}])")
    if cap.goodput:
        text += (f"; there goodput {cap.goodput['rate']:.2f} req/s ({cap.goodput['share']:.0%} of "
                 f"requests met every SLO), output {cap.output_tps:.1f} tok/s")
    if cap.reached_max:
        text += "; the search stopped at its maximum level, so the capacity may be higher"
    return text


def next_capacity_level(js: Sequence[Judgement], counts: dict[float, int], by: str, start: float,
                        max_level: float, repeats: int, tolerance: float = 0.1) -> float | None:
    """The next level to measure: double until a level misses the SLO, bisect down to adjacent
    levels (concurrency) or within `tolerance` (rate), then repeat both sides of the boundary
    `repeats` more times while either is undecided. None when done."""
    if not js:
        return start
    lo = None
    for j in js:
        if not j.meets:
            break
        lo = j.level
    above = [j.level for j in js if not j.meets and (lo is None or j.level > lo)]
    hi = min(above) if above else None
    if lo is None:  # the lowest level misses: repeat it in case that was noise, then stop
        undecided = js[0].sure is None
        return js[0].level if undecided and counts[js[0].level] <= repeats else None
    if hi is None:
        if lo >= max_level:
            return None
        return min(lo * 2, max_level)
    close = hi - lo <= 1 if by == "concurrency" else hi / lo <= 1 + tolerance
    if not close:
        mid = (lo + hi) // 2 if by == "concurrency" else math.sqrt(lo * hi)
        return float(mid)
    for level in (lo, hi):
        j = next(j for j in js if j.level == level)
        if j.sure is None and counts[level] <= repeats:
            return level
    return None


def saturation(points: Sequence[dict[str, float]]) -> str | None:
    """Why a sweep is saturated at its last point, or None. Each point: level, output_tps,
    ttft_p50, in order of load."""
    if len(points) < 2:
        return None
    last, prev = points[-1], points[-2]
    best = max(points[:-1], key=lambda p: p["output_tps"])
    gain = last["output_tps"] / best["output_tps"] - 1 if best["output_tps"] > 0 else math.inf
    ttft = last["ttft_p50"] / prev["ttft_p50"] if prev["ttft_p50"] > 0 else math.inf
    if gain < SATURATION_GAIN and ttft >= SATURATION_TTFT:
        return (f"saturated at {last['name']}: output tok/s {last['output_tps']:.1f}, {gain:+.0%} "
                f"against the best lower load ({best['name']}, {best['output_tps']:.1f}), while p50 "
                f"TTFT grew {ttft:.1f}× (from {prev['ttft_p50']:.1f} to {last['ttft_p50']:.1f} ms)")
    return None
