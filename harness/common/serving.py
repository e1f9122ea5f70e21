"""Serving metrics from per-request records, defined as `vllm bench serve` defines them.

- TTFT: request sent → first chunk that carries generated text (a role-only or empty chunk
  does not count); E2EL: request sent → last chunk;
- TPOT: (E2EL − TTFT) ÷ (output tokens − 1), per request with more than one output token;
- ITL: gaps between successive content chunks, pooled over requests (a server that sends
  several tokens in one chunk shows one long gap, not several short ones);
- output tok/s = Σ output tokens ÷ wall time; total tok/s adds prompt tokens; requests/s counts
  completed requests; error rate = failed ÷ (completed + failed) (requests cancelled at the end
  of a timed load are neither);
- goodput: completed requests that meet every SLO ÷ wall time, and their share of all
  completed + failed requests.

Tokens come from the server's usage or the model's tokenizer (the record says which), never
from counting chunks. Percentiles carry a distribution-free interval from order statistics
(binomial coverage, exact at every n, treating requests as independent draws); where the
sample is too small for a bound to exist the bound is missing (NaN), not invented. ITL gaps
within one request are not independent, so ITL gets no interval.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from harness.common.stats import quantile_interval

PERCENTILES = (50, 90, 95, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft", "tpot", "e2el")
_SLO_ITEM = re.compile(r"^(?P<key>[a-z0-9]+)\s*=\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>ms|s)?$")


def parse_slo(text: str | None) -> dict[str, float]:
    """`ttft=500ms,tpot=50ms` → {"ttft": 500.0, "tpot": 50.0} (milliseconds). Raises ValueError
    with a one-line message naming the bad item."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        m = _SLO_ITEM.match(item.strip().lower())
        if not m or m["key"] not in SLO_METRICS:
            raise ValueError(f"bad SLO {item.strip()!r}: write METRIC=VALUE[ms|s] with METRIC one of "
                             f"{', '.join(SLO_METRICS)}, e.g. ttft=500ms,tpot=50ms")
        out[m["key"]] = float(m["value"]) * (1000 if m["unit"] == "s" else 1)
    return out


def request_latencies(record: dict[str, Any]) -> dict[str, Any]:
    """TTFT, TPOT, E2EL (ms) and the ITL gaps (ms) of one completed request; None where undefined."""
    ttft = record.get("ttft_ns")
    e2el = record.get("e2el_ns")
    out_tokens = record.get("output_tokens")
    chunks = record.get("chunk_ns") or []
    tpot = None
    if ttft is not None and e2el is not None and out_tokens and out_tokens > 1:
        tpot = (e2el - ttft) / (out_tokens - 1) / 1e6
    return {
        "ttft": ttft / 1e6 if ttft is not None else None,
        "e2el": e2el / 1e6 if e2el is not None else None,
        "tpot": tpot,
        "itl": [(b - a) / 1e6 for a, b in itertools.pairwise(chunks)],
    }


def metric_samples(records: Iterable[dict[str, Any]], metric: str) -> list[float]:
    """One value per completed request (ITL: every gap), in record order."""
    values: list[float] = []
    for r in records:
        if r.get("status") != "ok":
            continue
        v = request_latencies(r)[metric]
        if metric == "itl":
            values += v
        elif v is not None:
            values.append(v)
    return values


def distribution(values: Sequence[float], confidence: float = 0.95, intervals: bool = True
                 ) -> dict[str, float]:
    """Mean, p50/p90/p95/p99, each with its interval (mean: normal approximation, n ≥ 30)."""
    x = np.asarray(values, dtype=float)
    out: dict[str, float] = {"n": int(x.size)}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if intervals and x.size >= 30:
        half = 1.959964 * float(x.std(ddof=1)) / math.sqrt(x.size)
        out["mean_low"], out["mean_high"] = out["mean"] - half, out["mean"] + half
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(x, p))
        if intervals:
            out[f"p{p}_low"], out[f"p{p}_high"] = quantile_interval(x, p / 100, confidence)
    return out


def meets_slo(record: dict[str, Any], slo: dict[str, float]) -> bool:
    if record.get("status") != "ok":
        return False
    lat = request_latencies(record)
    return all(lat[k] is not None and lat[k] <= limit for k, limit in slo.items())


def summarize(records: Sequence[dict[str, Any]], wall_s: float, slo: dict[str, float] | None = None
              ) -> dict[str, Any]:
    """Everything a serving case reports, from its request records and its timed wall time."""
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") == "error"]
    cancelled = [r for r in records if r.get("status") == "cancelled"]
    out_tokens = sum(r.get("output_tokens") or 0 for r in ok)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in ok)
    judged = len(ok) + len(failed)

    def rate(n: float) -> float:
        return n / wall_s if wall_s > 0 else math.nan

    out: dict[str, Any] = {
        "requests": len(records), "completed": len(ok), "failed": len(failed),
        "cancelled": len(cancelled), "wall_s": wall_s,
        "error_rate": len(failed) / judged if judged else math.nan,
        "request_rate": rate(len(ok)), "output_tps": rate(out_tokens),
        "total_tps": rate(out_tokens + in_tokens), "output_tokens": out_tokens,
        "prompt_tokens": in_tokens,
        "cached_tokens": sum(r.get("cached_tokens") or 0 for r in ok),
        "cached_reported": any(r.get("cached_tokens") is not None for r in ok),
        "counted_by": sorted({r.get("counted_by") for r in ok if r.get("counted_by")}),
        "short": sum(1 for r in ok if (r.get("output_tokens") or 0) < (r.get("output_expected") or 0)),
        "prompt_mismatch": sum(1 for r in ok if r.get("prompt_tokens") is not None
                               and r.get("prompt_expected") is not None
                               and r.get("prompt_tokens") != r.get("prompt_expected")),
        "client_processes": len({r.get("client_process") or 0 for r in records}) if records else 0,
        "errors": _error_counts(failed),
    }
    for metric in LATENCIES:
        out[metric] = distribution(metric_samples(ok, metric), intervals=metric != "itl")
    if any(r.get("turn") is not None for r in ok):
        out["turns"] = turn_summary(ok)
    timed = [r for r in ok if r.get("server_timings")]
    if timed:
        out["server"] = server_overhead(timed)
    if slo:
        good = sum(1 for r in ok if meets_slo(r, slo))
        out["goodput"] = {"slo": slo, "met": good, "share": good / judged if judged else math.nan,
                          "rate": rate(good)}
    return out


def _error_counts(failed: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in failed:
        key = str(r.get("error") or "unknown")[:160]
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def turn_summary(ok: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per turn of a multi-turn load: requests, median TTFT with its interval, and the prompt
    tokens the server says it served from its prefix cache (None where it does not say)."""
    out = []
    for turn in sorted({r["turn"] for r in ok if r.get("turn") is not None}):
        mine = [r for r in ok if r.get("turn") == turn]
        ttft = [r["ttft_ns"] / 1e6 for r in mine if r.get("ttft_ns") is not None]
        stated = [r for r in mine if r.get("cached_tokens") is not None]
        prompt = [r["prompt_tokens"] for r in mine if r.get("prompt_tokens") is not None]
        low, high = quantile_interval(ttft, 0.5)
        out.append({
            "turn": turn, "n": len(mine), "ttft_p50": _median(ttft), "ttft_p50_low": low,
            "ttft_p50_high": high, "prompt_tokens_p50": _median(prompt),
            "cached_tokens_p50": _median([r["cached_tokens"] for r in stated]) if stated else None,
            "cache_hit_share": (sum(r["cached_tokens"] for r in stated)
                                / max(1, sum(r.get("prompt_tokens") or 0 for r in stated))
                                if stated else None),
        })
    return out


def server_overhead(timed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The server's own account beside the client's: its prompt and decode times, and what the
    client saw on top (HTTP, queueing, streaming): TTFT − prompt time, E2EL − (prompt + decode)."""
    prompt = [r["server_timings"]["prompt_ms"] for r in timed if "prompt_ms" in r["server_timings"]]
    decode = [r["server_timings"]["decode_ms"] for r in timed if "decode_ms" in r["server_timings"]]
    ttft_over = [r["ttft_ns"] / 1e6 - r["server_timings"]["prompt_ms"] for r in timed
                 if "prompt_ms" in r["server_timings"]]
    e2el_over = [r["e2el_ns"] / 1e6 - r["server_timings"]["prompt_ms"] - r["server_timings"]["decode_ms"]
                 for r in timed if {"prompt_ms", "decode_ms"} <= r["server_timings"].keys()]
    return {"source": sorted({r["server_timings"].get("source", "?") for r in timed}),
            "n": len(timed), "prompt_ms_p50": _median(prompt), "decode_ms_p50": _median(decode),
            "ttft_overhead_ms_p50": _median(ttft_over), "e2el_overhead_ms_p50": _median(e2el_over),
            "load_ms_max": max((r["server_timings"].get("load_ms") or 0.0 for r in timed), default=0.0)}
