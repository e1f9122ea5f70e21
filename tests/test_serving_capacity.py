"""Sweeps, SLO capacity searches, multi-turn conversations and several client processes, against
real servers that tokbench starts (llama-cpp-python's server on gemma; llama.cpp's own
llama-server where scripts/build-llama-tools has built it; mlx-lm's server on a tiny model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.common import capacity as rules
from results.frames import searches, serving_frame
from results.store import Store

pytestmark = pytest.mark.engine

LLAMA_SERVER = Path(__file__).resolve().parent.parent / ".tools" / "bin" / "llama-server"


def _run(store: Path, *args: str, command: str = "run") -> int:
    return main(["--store", str(store), command, "--no-bandwidth", *args])


def _last(store: Path) -> tuple[Store, str]:
    db = Store(store, create=False)
    return db, db.resolve_run("last")


def test_sweep_steps_are_cases_and_stop_by_the_rule(store_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep doubles the streams until throughput stops growing while TTFT climbs (llama_cpp's
    server decodes one request at a time, so it saturates at once) or its maximum; each step is
    an ordinary case, so `compare` matches two sweeps point by point."""
    for _ in range(2):
        assert _run(store_path, "--backend", "llama.cpp-server", "-t", "2",
                    "-w", "sweep:in16:out4:n8:max4") == 0
    out = capsys.readouterr().out
    db, run = _last(store_path)
    (found,) = searches(db, run)
    steps = found["steps"]
    levels = [d["level"] for d in steps["sweep"]]
    assert levels == [1, 2, 4][:len(levels)] and len(levels) >= 2
    assert list(steps["workload"]) == [f"c{lv:g}:in16:out4:n8" for lv in levels]
    assert [d["step"] for d in steps["sweep"]] == list(range(len(levels)))
    # the stored reason is the rule applied to the stored steps
    points = [{"name": f"c{lv:g}", "level": lv, "output_tps": tps, "ttft_p50": ttft}
              for lv, tps, ttft in zip(levels, steps["output_tps"], steps["ttft_p50"], strict=True)]
    stop = found["stop"]
    if stop.startswith("saturated"):
        assert rules.saturation(points) == stop
        assert all(rules.saturation(points[:k]) is None for k in range(1, len(points)))
    else:
        assert stop == "reached max4 without saturating" and levels[-1] == 4
    assert f"sweep: {stop}" in " ".join(out.split())
    assert main(["--store", str(store_path), "compare", "last~1", "last"]) == 0
    shown = capsys.readouterr().out
    assert "c1:in16:out4:n8" in shown and "c2:in16:out4:n8" in shown


def test_capacity_search_answers_with_an_interval(store_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`tokbench capacity` as written in the issue, on a server whose TTFT grows with every
    queued request: doubling, then bisection to adjacent levels; the answer printed is the one
    the stored requests give, every level up to it meets the SLO and the next one misses."""
    assert _run(store_path, "--backend", "llama.cpp-server", "-t", "2", "-w", "c1:in16:out4:n12") == 0
    db, run = _last(store_path)
    e2el = float(serving_frame(db, run)["e2el_p50"].iloc[0])
    slo = f"ttft={2.5 * e2el:.0f}ms"  # about two requests ahead in the queue
    assert _run(store_path, "--backend", "llama.cpp-server", "-t", "2", "-w", "in16:out4",
                "--slo", slo, "--percentile", "90", "--requests", "30", "--max", "8",
                command="capacity") == 0
    out = " ".join(capsys.readouterr().out.split())
    db, run = _last(store_path)
    (found,) = searches(db, run)
    docs = list(found["steps"]["sweep"])
    assert docs[0]["level"] == 1 and docs[0]["percentile"] == 90 and docs[0]["slo"]["ttft"] > 0
    assert all(n >= 30 for n in found["steps"]["requests"])  # ≥ 29: a p90 bound exists
    cap = found["capacity"]
    js = {j.level: j for j in cap.judgements}
    if cap.level is not None:
        assert all(js[lv].meets for lv in js if lv <= cap.level)
        if not cap.reached_max:
            assert not js[cap.level + 1].meets  # bisection ends on adjacent levels
        assert cap.low <= cap.level <= cap.high
        assert cap.goodput is not None and 0 < cap.goodput["share"] <= 1
    # doubling until the first miss
    first_miss = next((i for i, d in enumerate(docs) if not js[d["level"]].meets), len(docs))
    assert [d["level"] for d in docs[:first_miss + 1]] == [2 ** i for i in range(first_miss + 1)][:len(docs)]
    assert found["answer"] == docs[-1]["stop"]  # re-judged from the store, the same answer
    assert f"capacity: {found['answer']}" in out


def test_multi_turn_history_and_client_processes(store_path: Path, gemma_path: Path) -> None:
    """Conversations of 3 turns, each prompt carrying the history; the streams spread over two
    client processes whose raw records are merged."""
    assert _run(store_path, "--backend", "llama.cpp-server", "-t", "2",
                "-w", "c2:in24:out6:turns3:n12", "--client-procs", "2") == 0
    db, run = _last(store_path)
    (case,) = db.cases(run)
    records = db.requests(run)
    assert [r["request"] for r in records] == list(range(12))
    assert all(r["status"] == "ok" for r in records)
    assert {(r["conversation"], r["turn"]) for r in records} == {(c, t) for c in range(4) for t in range(3)}
    # each turn resends the history: its prompt holds the earlier prompts and replies
    by_conv: dict[int, list[dict]] = {}
    for r in records:
        by_conv.setdefault(r["conversation"], []).append(r)
    for turns in by_conv.values():
        turns.sort(key=lambda r: r["turn"])
        prompt = [r["prompt_tokens"] for r in turns]
        assert prompt[0] == 24 and prompt[1] > 24 + 20 and prompt[2] > prompt[1] + 20
        starts = [r["start_ns"] for r in turns]
        ends = [r["start_ns"] + r["e2el_ns"] for r in turns]
        assert all(starts[k + 1] >= ends[k] for k in range(2))  # a turn waits for the reply
        assert len({r["client_process"] for r in turns}) == 1  # a conversation stays in one process
    assert {r["client_process"] for r in records} == {0, 1}
    assert case["client"][0]["processes"] == 2 and len(case["client"][0]["per_process"]) == 2
    # the two processes start together on the one clock: their first sends are close
    firsts = [min(r["start_ns"] for r in records if r["client_process"] == k) for k in (0, 1)]
    assert abs(firsts[0] - firsts[1]) < 0.5e9
    (summary,) = serving_frame(db, run)["turns"]
    assert [t["turn"] for t in summary] == [0, 1, 2]
    assert all(t["cached_tokens_p50"] is None for t in summary)  # llama_cpp.server does not say


@pytest.mark.skipif(not LLAMA_SERVER.exists(), reason="llama-server not built: scripts/build-llama-tools")
def test_llama_server_timings_and_prefix_cache(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's own llama-server states its prompt and decode times and the prompt tokens it
    took from its cache; tokbench stores them beside the client's times and reports the
    difference, and a conversation's later turns hit the cache."""
    assert _run(store_path, "--backend", "llama.cpp-server", "--server-binary", str(LLAMA_SERVER),
                "-np", "2", "-t", "2", "-w", "c2:in32:out8:turns3:n12") == 0
    out = " ".join(capsys.readouterr().out.split())
    db, run = _last(store_path)
    records = db.requests(run)
    assert all(r["status"] == "ok" for r in records)
    for r in records:
        t = r["server_timings"]
        assert t["source"] == "llama-server" and t["prompt_ms"] > 0 and t["decode_ms"] > 0
        assert t["decode_n"] == r["output_tokens"] == 8
        assert r["ttft_ns"] / 1e6 > t["prompt_ms"]  # the client cannot see the first token sooner
        assert r["cached_tokens"] == t["cache_n"]
    later = [r for r in records if r["turn"] > 0]
    assert sum(r["cached_tokens"] > 32 for r in later) >= len(later) // 2  # the history was reused
    assert "the server's own timings (llama-server, 12 requests)" in out
    (summary,) = serving_frame(db, run)["turns"]
    assert summary[0]["cache_hit_share"] < summary[2]["cache_hit_share"]
    assert not math.isnan(serving_frame(db, run)["server"].iloc[0]["ttft_overhead_ms_p50"])
