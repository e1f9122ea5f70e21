"""The rules of sweeps and SLO capacity searches (harness.common.capacity): the LoadGen-style bound
holds its stated coverage, verdicts follow the bound, the search doubles then bisects then repeats,
and the answer and its interval are what the measured levels support."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from harness.common import capacity as rules


def _records(ttft_ms: np.ndarray, failed: int = 0) -> list[dict]:
    ok = [{"status": "ok", "ttft_ns": int(t * 1e6), "e2el_ns": int(t * 1e6) + 10_000_000,
           "output_tokens": 2, "chunk_ns": []} for t in ttft_ms]
    return ok + [{"status": "error"} for _ in range(failed)]


def test_min_requests_is_loadgens_count() -> None:
    # p99 at 95% needs 299 requests all within the limit (0.99^299 < 0.05 < 0.99^298)
    assert rules.min_requests(0.99, 0.95) == 299
    assert rules.min_requests(0.90, 0.95) == 29
    assert 0.99 ** 299 <= 0.05 < 0.99 ** 298


@pytest.mark.parametrize("n", [60, 299, 500])
def test_upper_bound_covers_the_true_p99(n: int) -> None:
    """The bound a verdict trusts is above the true percentile ≥ 95% of the time, on a skewed
    (lognormal) latency distribution, at sizes where it exists."""
    rng = np.random.default_rng(7)
    true_p99 = math.exp(1.0 * 2.3263479)  # lognormal(0, 1)
    covered = trials = 0
    for _ in range(2000):
        _, _, metrics = rules.judge(_records(np.exp(rng.normal(0, 1, n))), {"ttft": 1e9}, 99, 0.95)
        high = metrics["ttft"]["high"]
        if math.isnan(high):
            continue
        trials += 1
        covered += high >= true_p99
    if n < 299:
        assert trials == 0  # too few requests: no bound, so no level can pass surely
    else:
        assert covered / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)


def test_verdicts() -> None:
    fast = _records(np.full(300, 100.0))
    assert rules.judge(fast, {"ttft": 200}, 99, 0.95)[:2] == (True, "pass")
    # the same latencies from 50 requests meet the SLO but cannot prove it
    assert rules.judge(fast[:50], {"ttft": 200}, 99, 0.95)[:2] == (True, None)
    # 5% of requests over the limit: p99 is surely over it
    mixed = _records(np.r_[np.full(285, 100.0), np.full(15, 900.0)])
    assert rules.judge(mixed, {"ttft": 200}, 99, 0.95)[:2] == (False, "fail")
    # failed requests count as violations of every limit
    assert rules.judge(_records(np.full(285, 100.0), failed=15), {"ttft": 200}, 99, 0.95)[:2] == \
        (False, "fail")


def _server(level: float, n: int, rng: np.random.Generator) -> list[dict]:
    """A server whose p99 TTFT is about 60 ms per stream: the 500 ms SLO holds up to 8 streams."""
    return _records(rng.uniform(0, 60 * level / 0.99, n) if level != 8 else rng.uniform(0, 470, n))


def test_search_doubles_bisects_repeats_and_answers() -> None:
    rng = np.random.default_rng(1)
    slo, points, order = {"ttft": 500.0}, [], []
    while True:
        js = rules.judgements(points, slo, 99, 0.95)
        level = rules.next_capacity_level(js, Counter(p.level for p in points), "concurrency", 1,
                                          1024, repeats=2)
        if level is None:
            break
        order.append(level)
        points.append(rules.Point(level, _server(level, 400, rng), 10.0, len(points)))
        assert len(order) < 30
    # doubling until 16 misses, then bisection between 8 and 16 down to adjacent levels
    assert order[:5] == [1, 2, 4, 8, 16]
    assert set(order[5:]) <= {12, 10, 9, 8, 11, 13, 14, 15}
    cap = rules.capacity(points, slo, 99, 0.95, "concurrency", 1024)
    assert cap.level == 8 and cap.low <= 8 <= cap.high and not cap.reached_max
    assert cap.goodput is not None and cap.goodput["share"] > 0.95
    assert "is 8 streams (interval [" in rules.describe(cap, "concurrency", 99, slo)


def test_undecided_boundary_is_repeated_and_pooled() -> None:
    slo = {"ttft": 100.0}
    # 60 requests per step can never prove a p99: every meeting level stays undecided
    points = [rules.Point(1, _records(np.full(60, 50.0)), 1.0, 0),
              rules.Point(2, _records(np.full(60, 500.0)), 1.0, 1)]
    js = rules.judgements(points, slo, 99, 0.95)
    assert [j.sure for j in js] == [None, "fail"]
    counts = Counter(p.level for p in points)
    assert rules.next_capacity_level(js, counts, "concurrency", 1, 64, repeats=2) == 1
    points.append(rules.Point(1, _records(np.full(60, 50.0)), 1.0, 2))
    js = rules.judgements(points, slo, 99, 0.95)
    assert js[0].n == 120  # the repeat is pooled with the first measurement
    counts = Counter(p.level for p in points)
    assert rules.next_capacity_level(js, counts, "concurrency", 1, 64, repeats=2) == 1
    points.append(rules.Point(1, _records(np.full(60, 50.0)), 1.0, 3))
    js = rules.judgements(points, slo, 99, 0.95)
    assert js[0].sure is None  # 180 requests, all within: still fewer than the 299 a proof needs
    counts = Counter(p.level for p in points)
    assert rules.next_capacity_level(js, counts, "concurrency", 1, 64, repeats=2) is None
    cap = rules.capacity(points, slo, 99, 0.95, "concurrency", 64)
    # the answer is 1 stream, but only "at most 1" is proven: the interval says so
    assert (cap.level, cap.low, cap.high) == (1, 0.0, 1)
    assert "interval [0, 1]" in rules.describe(cap, "concurrency", 99, slo)


def test_nothing_meets_and_max_reached() -> None:
    slo = {"ttft": 10.0}
    slow = [rules.Point(1, _records(np.full(300, 50.0)), 1.0, 0)]
    js = rules.judgements(slow, slo, 99, 0.95)
    assert rules.next_capacity_level(js, Counter({1: 1}), "concurrency", 1, 64, 2) is None
    cap = rules.capacity(slow, slo, 99, 0.95, "concurrency", 64)
    assert cap.level is None and "no load tested meets" in rules.describe(cap, "concurrency", 99, slo)
    fast = [rules.Point(lv, _records(np.full(300, 1.0)), 1.0, i) for i, lv in enumerate((1, 2, 4))]
    js = rules.judgements(fast, slo, 99, 0.95)
    assert rules.next_capacity_level(js, Counter({1: 1, 2: 1, 4: 1}), "concurrency", 1, 4, 2) is None
    cap = rules.capacity(fast, slo, 99, 0.95, "concurrency", 4)
    assert cap.reached_max and math.isinf(cap.high) and "may be higher" in \
        rules.describe(cap, "concurrency", 99, slo)


def test_rate_search_bisects_geometrically() -> None:
    js = [rules.Judgement(4, 300, True, "pass"), rules.Judgement(8, 300, False, "fail")]
    level = rules.next_capacity_level(js, Counter({4: 1, 8: 1}), "rate", 1, 64, 2)
    assert level == pytest.approx(math.sqrt(32))


def test_saturation_rule() -> None:
    def step(name: str, tps: float, ttft: float) -> dict:
        return {"name": name, "level": 0, "output_tps": tps, "ttft_p50": ttft}

    growing = [step("c1", 10, 50), step("c2", 19, 55), step("c4", 35, 70)]
    assert rules.saturation(growing) is None
    flat = [*growing, step("c8", 36, 140)]  # +3% while TTFT doubled: queueing
    reason = rules.saturation(flat)
    assert reason and reason.startswith("saturated at c8") and "2.0×" in reason
    # more throughput, even with longer TTFT, is not saturation; nor is flat throughput at flat TTFT
    assert rules.saturation([*growing, step("c8", 45, 140)]) is None
    assert rules.saturation([*growing, step("c8", 35, 75)]) is None
