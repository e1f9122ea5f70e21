"""Serving metrics from request records, their intervals, SLOs, arrival processes and the
client's reading of SSE chunks; no server needed."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from backends.openai_client import _content, arrival_gaps
from harness.common.serving import (
    distribution,
    metric_samples,
    parse_slo,
    request_latencies,
    summarize,
)
from harness.common.stats import quantile_interval

MS = 1_000_000


def _record(ttft_ms: float, gaps_ms: list[float], out: int, status: str = "ok", **extra: object) -> dict:
    chunks = [int(ttft_ms * MS)]
    for gap in gaps_ms:
        chunks.append(chunks[-1] + int(gap * MS))
    return {"status": status, "ttft_ns": chunks[0], "e2el_ns": chunks[-1], "chunk_ns": chunks,
            "output_tokens": out, "prompt_tokens": 32, "prompt_expected": 32, "output_expected": out,
            "counted_by": "usage", **extra}


def test_latencies_follow_vllm_bench_serve_definitions() -> None:
    # 100 ms to the first chunk, then 3 chunks 20 ms apart; the server says 7 tokens (chunks
    # carried several): TPOT divides by tokens, ITL is chunk gaps
    lat = request_latencies(_record(100, [20, 20, 20], out=7))
    assert lat["ttft"] == pytest.approx(100) and lat["e2el"] == pytest.approx(160)
    assert lat["tpot"] == pytest.approx(60 / 6)
    assert lat["itl"] == pytest.approx([20, 20, 20])
    assert request_latencies(_record(50, [], out=1))["tpot"] is None  # undefined for one token


def test_summary_counts_rates_goodput_and_errors() -> None:
    records = [_record(100, [10] * 7, out=8), _record(300, [10] * 7, out=8),
               _record(100, [80] * 7, out=8), {"status": "error", "error": "HTTP 500: boom"},
               {"status": "cancelled"}]
    s = summarize(records, wall_s=2.0, slo=parse_slo("ttft=200ms,tpot=50ms"))
    assert (s["completed"], s["failed"], s["cancelled"]) == (3, 1, 1)
    assert s["error_rate"] == pytest.approx(1 / 4)  # cancelled requests are not errors
    assert s["output_tps"] == pytest.approx(24 / 2) and s["request_rate"] == pytest.approx(1.5)
    assert s["total_tps"] == pytest.approx((24 + 96) / 2)
    # only the first request meets both SLOs (the second is slow to start, the third to decode)
    assert s["goodput"]["met"] == 1 and s["goodput"]["share"] == pytest.approx(1 / 4)
    assert s["goodput"]["rate"] == pytest.approx(0.5)
    assert s["errors"] == {"HTTP 500: boom": 1}
    assert s["ttft"]["p50"] == pytest.approx(100) and s["ttft"]["n"] == 3
    assert len(metric_samples(records, "itl")) == 21


def test_short_outputs_and_prompt_mismatches_are_counted() -> None:
    s = summarize([_record(10, [5], out=2, output_expected=8), _record(10, [5], out=2, prompt_tokens=31)],
                  wall_s=1.0)
    assert s["short"] == 1 and s["prompt_mismatch"] == 1


@pytest.mark.parametrize(("n", "q"), [(10, 0.5), (40, 0.9), (1000, 0.99)])
def test_percentile_interval_covers_at_its_level(n: int, q: float) -> None:
    """Distribution-free: on skewed data the interval holds the true percentile ≥ 95% of the time."""
    rng = np.random.default_rng(1)
    true = -math.log(1 - q)  # exponential(1) quantile
    hits = trials = 0
    for _ in range(400):
        low, high = quantile_interval(rng.exponential(size=n), q)
        assert not (math.isnan(low) or math.isnan(high))
        hits += low <= true <= high
        trials += 1
    assert hits / trials >= 0.93  # 0.95 nominal; 400 draws leave ±2% of sampling noise


def test_percentile_bound_is_missing_where_the_sample_cannot_give_it() -> None:
    low, high = quantile_interval(np.arange(100.0), 0.99)  # p99 of 100: no upper order statistic
    assert math.isnan(high) and low < 99
    d = distribution(list(range(20)))
    assert math.isnan(d["p99_high"]) and "mean_low" not in d  # mean interval from n ≥ 30 only


def test_slo_syntax() -> None:
    assert parse_slo("ttft=500ms, tpot=50ms,e2el=2s") == {"ttft": 500.0, "tpot": 50.0, "e2el": 2000.0}
    for bad in ("ttft", "speed=5ms", "ttft=fast"):
        with pytest.raises(ValueError, match="ttft=500ms,tpot=50ms"):
            parse_slo(bad)


def _take(gen: object, n: int) -> list[float]:
    return [next(gen) for _ in range(n)]  # type: ignore[call-overload]


def test_arrival_processes() -> None:
    poisson = _take(arrival_gaps(8.0, "poisson", 1.0, seed=3), 20_000)
    assert poisson[0] == 0 and poisson == _take(arrival_gaps(8.0, "poisson", 1.0, seed=3), 20_000)
    assert statistics.mean(poisson[1:]) == pytest.approx(1 / 8, rel=0.03)
    assert statistics.stdev(poisson[1:]) / statistics.mean(poisson[1:]) == pytest.approx(1.0, rel=0.05)
    assert set(_take(arrival_gaps(4.0, "constant", 1.0, seed=3), 10)[1:]) == {0.25}
    bursty = _take(arrival_gaps(8.0, "gamma", 0.25, seed=3), 20_000)[1:]
    assert statistics.mean(bursty) == pytest.approx(1 / 8, rel=0.05)  # same rate …
    assert statistics.stdev(bursty) / statistics.mean(bursty) == pytest.approx(2.0, rel=0.1)  # … burstier


def test_which_chunks_carry_a_token() -> None:
    assert _content({"delta": {"role": "assistant", "content": ""}}, chat=True) is None
    assert _content({"delta": {"content": "hi"}}, chat=True) == "hi"
    assert _content({"delta": {}, "finish_reason": "stop"}, chat=True) is None
    # vLLM sends "" for a token whose bytes end mid-character: still a token
    assert _content({"text": "", "finish_reason": None}, chat=False) == ""
    assert _content({"text": "", "finish_reason": "length"}, chat=False) is None


def test_request_records_survive_export_and_import_and_feed_the_gate(tmp_path: Path) -> None:
    from harness.gate.matching import case_metrics, metric_values
    from harness.gate.statistics import METRICS
    from results.export import read_document, run_document, store_document, write_json
    from results.frames import serving_frame
    from results.store import Store

    store = Store(tmp_path / "a.db")
    store.add_run(run_id="r1", started_at=1.0, status="complete", command="x")
    case_id = store.add_case(run_id="r1", case_index=0, backend="openai", model="m", workload="c2:in32:out8",
                             n_prompt=32, n_gen=8, n_depth=0, params={}, repetitions=1, status="ok",
                             load={"concurrency": 2, "slo": {"ttft": 150.0}})
    records = [_record(100, [10] * 7, out=8, request=0, start_ns=0),
               _record(200, [12] * 7, out=8, request=1, start_ns=5),
               {"request": 2, "status": "error", "error": "HTTP 500: x", "start_ns": 9}]
    store.add_trial(case_id, 0, [{"phase": "out", "n_tokens": 16, "duration_ns": 2 * 10**9}], 1.0, records)
    path = tmp_path / "run.json"
    path.write_text(write_json(store, "r1"))
    other = Store(tmp_path / "b.db")
    store_document(other, read_document(path))
    doc = run_document(other, "r1")
    (case,) = doc["cases"]
    assert [r["status"] for r in case["requests"]] == ["ok", "ok", "error"]
    assert case["requests"][1]["chunk_ns"] == records[1]["chunk_ns"]
    frame = serving_frame(other, "r1")
    assert frame.loc[0, "completed"] == 2 and frame.loc[0, "output_tps"] == pytest.approx(8.0)
    assert frame.loc[0, "goodput_met"] == 1  # judged by the SLO stored with the run
    assert [m.key for m in case_metrics(case)] == ["ttft", "tpot", "itl", "e2el"]
    assert metric_values(case, METRICS["ttft"]) == pytest.approx([100, 200])
    assert metric_values(case, METRICS["itl"]) == pytest.approx([10, 12])  # each request's mean gap
