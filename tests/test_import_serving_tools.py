"""Importing GuideLLM benchmark reports (0.8 and 0.3 layouts) and AIPerf exports (per-request JSONL,
aggregate JSON) as serving runs.

The fixtures are real outputs of the tools run against a vLLM CPU server on a tiny model
(tests/fixtures/imports/guidellm/*/SOURCE.md and aiperf/*/SOURCE.md say how each was made). Every
expected value below is read from the raw file, so a parser that drops or bends a field fails."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from harness.common import serving
from harness.common.errors import TokbenchError
from harness.execution.workloads import ServingLoad
from harness.interop import aiperf, documents, formats, guidellm
from harness.interop.documents import FormatError
from results import export
from results.export import run_document
from results.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
GL08 = FIXTURES / "guidellm" / "0.8.1" / "benchmarks.json"
GL03 = FIXTURES / "guidellm" / "0.3.1" / "benchmarks.json"
AP_C = FIXTURES / "aiperf" / "0.13.0-concurrency"
AP_R = FIXTURES / "aiperf" / "0.13.0-rate-errors"
JSONL, AGG = "profile_export.jsonl", "profile_export_aiperf.json"
OURS = [GL08, GL03, AP_C / JSONL, AP_C / AGG, AP_R / JSONL, AP_R / AGG]
NAMES = {"benchmarks.json": "GuideLLM benchmark JSON", JSONL: "AIPerf per-request JSONL",
         AGG: "AIPerf aggregate JSON"}  # by file name


def _one_run(path: Path) -> dict:
    fmt, docs = formats.read(path)
    assert fmt.name == NAMES[path.name] and len(docs) == 1
    return docs[0]


def _docs(store_path: Path) -> list[dict]:
    db = Store(store_path, create=False)
    try:
        return [run_document(db, r["run_id"]) for r in db.runs()]
    finally:
        db.close()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite_json(src: Path, dest: Path, change: Callable[[Any], Any]) -> Path:
    doc = json.loads(src.read_text())
    change(doc)
    dest.write_text(json.dumps(doc))
    return dest


def _m(row: dict, tag: str) -> Any:
    return row["metrics"][tag]["value"]


# -- GuideLLM 0.8 ------------------------------------------------------------------------------------
def test_guidellm_08_one_case_per_benchmark_with_every_request() -> None:
    raw = json.loads(GL08.read_text())
    doc = _one_run(GL08)
    source = doc["run"]["source"]
    assert source["tool"] == "guidellm"
    assert source["version"] == raw["metadata"]["guidellm_version"] == "0.8.1"
    assert source["samples"] is True and source["machine"]["platform"] == raw["metadata"]["platform"]
    assert any("server's machine" in u for u in source["unknown"])
    assert doc["run"]["fingerprint"]["hard"]["engines"]["openai"] == {"engine": "guidellm",
                                                                     "engine_version": "0.8.1"}
    backend = raw["config"]["spec"]["backend"]
    assert [c["workload"] for c in doc["cases"]] == ["c1:in20-48:out16:n8", "c2:in20-48:out16:n8"]
    for case, bench in zip(doc["cases"], raw["benchmarks"], strict=True):
        groups = bench["requests"]
        streams = bench["config"]["strategy"]["streams"]
        assert case["backend"] == "openai" and case["model"] == backend["model"] == "/tmp/tiny-llama-g"
        assert case["params"] == {"url": backend["target"]}
        load = case["load"]
        assert load["concurrency"] == streams and load["rate"] is None and load["requests"] == 8
        assert load["input_len"] == [20, 48] and load["output_len"] == [16, 16]
        assert load["endpoint"] == "completions" and load["warmup"] == 0 and load["turns"] == 1
        # the workload is named as tokbench names the same load
        assert case["workload"] == ServingLoad(input_len=(20, 48), output_len=(16, 16), concurrency=streams,
                                               requests=8).name
        assert (case["n_prompt"], case["n_gen"]) == (48, 16)
        statuses = [r["status"] for r in case["requests"]]
        totals = bench["metrics"]["request_totals"]
        assert statuses.count("ok") == len(groups["successful"]) == totals["successful"]
        assert statuses.count("error") == len(groups["errored"]) > 0
        assert statuses.count("cancelled") == len(groups["incomplete"])
        assert [r["request"] for r in case["requests"]] == list(range(len(statuses)))
        assert all(r["chunk_ns"] is None for r in case["requests"])  # GuideLLM keeps no chunk times
        by_start = {r["started_at"]: r for r in case["requests"]}
        for g in groups["successful"]:
            t = g["info"]["timings"]
            rec = by_start[t["request_start"]]
            assert rec["status"] == "ok" and rec["error"] is None
            assert rec["ttft_ns"] == pytest.approx(g["time_to_first_token_ms"] * 1e6, abs=2)
            assert rec["e2el_ns"] == round((t["last_token_iteration"] - t["request_start"]) * 1e9)
            assert rec["prompt_tokens"] == g["prompt_tokens"] and rec["output_tokens"] == g["output_tokens"]
            assert rec["counted_by"] == "usage" and rec["output_expected"] == 16
            assert rec["client_process"] == g["info"]["scheduler_process_id"]
            assert rec["start_ns"] == round((t["request_start"] - bench["start_time"]) * 1e9)
            # GuideLLM's "inter-token latency" is tokbench's TPOT, request by request
            tpot = serving.request_latencies(rec)["tpot"]
            if g["inter_token_latency_ms"] is None:  # one output token
                assert tpot is None and g["output_tokens"] == 1
            else:
                assert tpot == pytest.approx(g["inter_token_latency_ms"], rel=1e-6)
        for g in groups["errored"]:
            rec = by_start[g["info"]["timings"]["request_start"]]
            assert rec["status"] == "error" and "400 Bad Request" in rec["error"] and "\n" not in rec["error"]
            assert rec["ttft_ns"] is None and rec["output_tokens"] is None
            assert rec["prompt_tokens"] == g["prompt_tokens"]
        (trial,) = case["trials"]
        assert trial["phase"] == "out" and trial["duration_ns"] == round(bench["duration"] * 1e9)
        assert trial["n_tokens"] == sum(g["output_tokens"] for g in groups["successful"])
        summary = serving.summarize(case["requests"], trial["duration_ns"] / 1e9)
        m = bench["metrics"]
        assert summary["ttft"]["mean"] == pytest.approx(m["time_to_first_token_ms"]["successful"]["mean"])
        assert summary["output_tps"] == pytest.approx(m["output_tokens_per_second"]["successful"]["mean"])
        assert summary["itl"]["n"] == 0
        assert any("GuideLLM calls inter-token latency" in n for n in case["notes"])
        assert any("normal, mean 34, stdev 8" in n for n in case["notes"])


# -- GuideLLM 0.3 ------------------------------------------------------------------------------------
def test_guidellm_03_rate_load_errors_and_what_it_does_not_say() -> None:
    raw = json.loads(GL03.read_text())
    (bench,) = raw["benchmarks"]
    doc = _one_run(GL03)
    source = doc["run"]["source"]
    assert source["version"] is None and source["samples"] is True and source["machine"] == {}
    assert any("GuideLLM version" in u for u in source["unknown"])
    assert "engines" in doc["run"]["fingerprint"]["unknown"]
    (case,) = doc["cases"]
    assert case["model"] == bench["worker"]["backend_model"] and case["params"]["url"] == "http://127.0.0.1:8302"
    load = case["load"]
    assert load["rate"] == bench["args"]["strategy"]["rate"] == 8.0 and load["arrival"] == "constant"
    assert load["concurrency"] is None and load["requests"] == bench["args"]["max_number"] == 10
    assert case["workload"] == "r8:const:in20-48:out16:n10" == ServingLoad(
        input_len=(20, 48), output_len=(16, 16), rate=8.0, arrival="constant", requests=10).name
    groups = bench["requests"]
    recs = case["requests"]
    assert len(recs) == bench["request_totals"]["total"] == 10
    assert [r["status"] for r in recs].count("error") == len(groups["errored"]) == 3
    by_start = {r["started_at"]: r for r in recs}
    for g in groups["successful"]:
        rec = by_start[g["start_time"]]
        assert rec["ttft_ns"] == round((g["first_token_time"] - g["start_time"]) * 1e9)
        assert rec["e2el_ns"] == round((g["last_token_time"] - g["start_time"]) * 1e9)
        assert rec["output_tokens"] == g["output_tokens"] and rec["prompt_tokens"] == g["prompt_tokens"]
        assert rec["counted_by"] is None  # 0.3 does not say whether usage or its own count
        assert rec["client_process"] == g["scheduler_info"]["process_id"]
    one = groups["successful"][1]
    assert by_start[one["start_time"]]["ttft_ns"] == pytest.approx(one["time_to_first_token_ms"] * 1e6, abs=2)
    for g in groups["errored"]:
        rec = by_start[g["start_time"]]
        assert rec["status"] == "error" and rec["error"].startswith("Client error '400 Bad Request'")
        assert rec["output_tokens"] is None and rec["e2el_ns"] is None
    (trial,) = case["trials"]
    assert trial["duration_ns"] == round(bench["duration"] * 1e9)
    assert trial["n_tokens"] == sum(g["output_tokens"] for g in groups["successful"])
    summary = serving.summarize(recs, trial["duration_ns"] / 1e9)
    ttft = bench["metrics"]["time_to_first_token_ms"]["successful"]
    assert summary["ttft"]["mean"] == pytest.approx(ttft["mean"])
    assert summary["short"] == sum(g["output_tokens"] < 16 for g in groups["successful"]) > 0


# -- AIPerf per-request JSONL ---------------------------------------------------------------------------
def test_aiperf_jsonl_rebuilds_every_chunk_and_reads_its_run_beside_it() -> None:
    rows = _jsonl(AP_C / JSONL)
    agg = json.loads((AP_C / AGG).read_text())
    doc = _one_run(AP_C / JSONL)
    source = doc["run"]["source"]
    assert source["version"] == agg["aiperf_version"] == "0.13.0" and source["samples"] is True
    assert source["command"] == agg["run_info"]["cli_command"] == doc["run"]["command"]
    (case,) = doc["cases"]
    assert case["model"] == "/tmp/tiny-llama-g" and case["params"] == {"url": "http://127.0.0.1:8302"}
    assert case["load"]["concurrency"] == agg["input_config"]["phases"][0]["concurrency"] == 2
    assert case["load"]["requests"] == 10 and case["load"]["warmup"] == 0
    assert case["workload"] == "c2:in32:out16:n10" == ServingLoad(
        input_len=(32, 32), output_len=(16, 16), concurrency=2, requests=10).name
    recs = case["requests"]
    assert len(recs) == len(rows) == 10 and all(r["status"] == "ok" for r in recs)
    by_id = {r["request_id"]: r for r in recs}
    t0 = min(row["metadata"]["request_start_ns"] for row in rows)
    for row in rows:
        rec = by_id[row["metadata"]["x_request_id"]]
        gaps = _m(row, "inter_chunk_latency")
        assert rec["ttft_ns"] == round(_m(row, "time_to_first_token") * 1e6)
        assert rec["e2el_ns"] == round(_m(row, "request_latency") * 1e6)
        assert len(rec["chunk_ns"]) == len(gaps) + 1 and rec["chunk_ns"][0] == rec["ttft_ns"]
        assert rec["chunk_ns"][-1] == rec["e2el_ns"]  # the gaps add up to the latency, to the ns
        steps = [b - a for a, b in itertools.pairwise(rec["chunk_ns"])]
        assert steps == [round(g * 1e6) for g in gaps]
        assert rec["output_tokens"] == _m(row, "usage_completion_tokens") == 16
        assert rec["prompt_tokens"] == _m(row, "usage_prompt_tokens") == 32
        assert rec["counted_by"] == "usage" and rec["output_expected"] == 16 and rec["prompt_expected"] == 32
        assert rec["started_at"] == row["metadata"]["request_start_ns"] / 1e9
        assert rec["start_ns"] == row["metadata"]["request_start_ns"] - t0
    (trial,) = case["trials"]
    assert trial["duration_ns"] == max(r["metadata"]["request_end_ns"] for r in rows) - t0
    assert trial["n_tokens"] == sum(_m(r, "usage_completion_tokens") for r in rows)
    # every latency AIPerf summarised is recomputed from the records, to its own figures
    summary = serving.summarize(recs, trial["duration_ns"] / 1e9)
    for mine, theirs in (("ttft", "time_to_first_token"), ("itl", "inter_chunk_latency"),
                         ("e2el", "request_latency")):
        assert summary[mine]["n"] == agg[theirs]["count"]
        assert summary[mine]["mean"] == pytest.approx(agg[theirs]["avg"], rel=1e-9)
        assert summary[mine]["p50"] == pytest.approx(agg[theirs]["p50"], rel=1e-9)
    assert summary["wall_s"] == pytest.approx(agg["benchmark_duration"]["avg"], rel=1e-6)


def test_aiperf_jsonl_rate_load_and_failures() -> None:
    rows = _jsonl(AP_R / JSONL)
    doc = _one_run(AP_R / JSONL)
    (case,) = doc["cases"]
    load = case["load"]
    assert load["rate"] == 8.0 and load["arrival"] == "poisson" and load["concurrency"] is None
    assert case["workload"].startswith("r8:in") and case["workload"].endswith(":out16:n10")
    by_id = {r["request_id"]: r for r in case["requests"]}
    failed = [row for row in rows if "error" in row]
    assert len(failed) == 5 and sum(r["status"] == "error" for r in case["requests"]) == 5
    for row in failed:
        rec = by_id[row["metadata"]["x_request_id"]]
        assert rec["status"] == "error" and "\n" not in rec["error"]
        assert rec["ttft_ns"] is None and rec["chunk_ns"] is None and rec["output_tokens"] is None
        assert rec["prompt_tokens"] == _m(row, "error_isl")
        err = row["error"]
        if err.get("code") == 400:
            assert rec["error"].startswith("400 Bad Request: ")
        else:
            assert rec["error"].startswith(f"{err['type']}: ")
    short = [row for row in rows if "error" not in row and _m(row, "usage_completion_tokens") < 16]
    assert short and serving.summarize(case["requests"], 1.0)["short"] == len(short)


def test_aiperf_jsonl_alone_lists_what_it_does_not_say(tmp_path: Path) -> None:
    shutil.copy(AP_C / JSONL, tmp_path / JSONL)
    doc = _one_run(tmp_path / JSONL)
    source = doc["run"]["source"]
    assert source["version"] is None and "model" in source["unknown"]
    (case,) = doc["cases"]
    assert case["model"] == documents.MODEL_NOT_STATED and case["load"]["concurrency"] is None
    assert case["workload"] == "load-not-stated:in32:out16"
    assert len(case["requests"]) == 10 and all(r["chunk_ns"] for r in case["requests"])


def test_aiperf_jsonl_ignores_an_aggregate_of_another_run(tmp_path: Path) -> None:
    shutil.copy(AP_C / JSONL, tmp_path / JSONL)
    shutil.copy(AP_R / AGG, tmp_path / AGG)  # also 10 requests, five minutes later
    (case,) = _one_run(tmp_path / JSONL)["cases"]
    assert case["model"] == documents.MODEL_NOT_STATED
    assert any("another run's" in n for n in case["notes"])


# -- AIPerf aggregate JSON --------------------------------------------------------------------------------
@pytest.mark.parametrize("where", [AP_C, AP_R])
def test_aiperf_aggregate_is_aggregates_only(where: Path) -> None:
    agg = json.loads((where / AGG).read_text())
    doc = _one_run(where / AGG)
    source = doc["run"]["source"]
    assert source["samples"] is False and source["version"] == "0.13.0"
    assert source["command"] == agg["run_info"]["cli_command"]
    (case,) = doc["cases"]
    assert case["trials"] == [] and case["requests"] == []
    aggregate = case["aggregate"]
    for tag in ("time_to_first_token", "inter_token_latency", "inter_chunk_latency", "request_latency",
                "output_token_throughput", "request_throughput", "benchmark_duration",
                "usage_completion_tokens"):
        assert aggregate[tag] == agg[tag]  # the tool's own statistics, with their units
    assert aggregate["error_summary"] == agg["error_summary"]
    s = aggregate["serving"]  # the same figures under tokbench's names
    assert s["ttft"]["p99"] == agg["time_to_first_token"]["p99"]
    assert s["e2el"]["mean"] == agg["request_latency"]["avg"]
    assert s["tpot"]["p50"] == agg["inter_token_latency"]["p50"]  # AIPerf's ITL is tokbench's TPOT
    assert s["itl"]["n"] == agg["inter_chunk_latency"]["count"]
    assert s["completed"] == agg["request_count"]["avg"] and s["wall_s"] == agg["benchmark_duration"]["avg"]
    assert s["failed"] == (agg.get("error_request_count") or {}).get("avg", 0)
    assert s["counted_by"] == ["tokenizer"]
    assert aggregate["tps_mean"] == agg["output_token_throughput"]["avg"]  # the summary table's t/s
    assert case["started_at"] == documents.parse_time(agg["start_time"])
    # the same load as the records beside it, under the same name
    (twin,) = _one_run(where / JSONL)["cases"]
    assert case["load"] == twin["load"] and case["workload"] == twin["workload"]


def test_requests_in_flight_at_the_end_are_cancelled(tmp_path: Path) -> None:
    def move(doc: dict) -> None:
        groups = doc["benchmarks"][0]["requests"]
        groups["incomplete"].append(groups["successful"].pop(0))

    (case, _) = _one_run(_rewrite_json(GL08, tmp_path / "benchmarks.json", move))["cases"]
    assert [r["status"] for r in case["requests"]].count("cancelled") == 1
    rows = _jsonl(AP_C / JSONL)
    rows[4]["metadata"]["was_cancelled"] = True
    (tmp_path / JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(AP_C / AGG, tmp_path / AGG)
    (case,) = _one_run(tmp_path / JSONL)["cases"]
    rec = next(r for r in case["requests"] if r["request_id"] == rows[4]["metadata"]["x_request_id"])
    assert rec["status"] == "cancelled" and rec["output_tokens"] is None
    assert case["model"] == "/tmp/tiny-llama-g"  # the aggregate beside it still counts it


# -- detection and bad input ---------------------------------------------------------------------------
def test_each_format_claims_only_its_own_files(tmp_path: Path) -> None:
    for path in OURS:
        fmt, _ = formats.detect(path.resolve())
        assert fmt.name == NAMES[path.name], path
    mine = guidellm.FORMATS + aiperf.FORMATS
    others = [p for p in FIXTURES.rglob("*") if p.is_file() and p not in OURS and p.suffix != ".md"]
    vllm = tmp_path / "vllm-result.json"  # `vllm bench serve --save-result`'s keys
    vllm.write_text(json.dumps({"date": "20261203-154000", "backend": "vllm", "model_id": "m",
                                "num_prompts": 10, "request_throughput": 12.5, "output_throughput": 200.0,
                                "mean_ttft_ms": 30.0, "ttfts": [0.03], "itls": [[0.01]], "errors": [""]}))
    server_metrics = tmp_path / "server_metrics_export.json"  # AIPerf's other JSON beside the two
    server_metrics.write_text(json.dumps({"schema_version": "1.1", "aiperf_version": "0.13.0",
                                          "benchmark_id": "x", "summary": {"endpoints_configured": []}}))
    for path in [*others, vllm, server_metrics]:
        head = path.read_bytes()[: formats.HEAD_BYTES]
        assert not any(f.sniff(path, head) for f in mine), path
    # a tokbench export of an imported GuideLLM run is tokbench's, not GuideLLM's
    tokbench = tmp_path / "run.json"
    tokbench.write_text(json.dumps({"format": export.FORMAT, **_one_run(GL08)}, indent=1))
    assert not any(f.sniff(tokbench, tokbench.read_bytes()[: formats.HEAD_BYTES]) for f in mine)
    for f in mine:  # never raises, whatever the bytes
        assert f.sniff(tmp_path / "x", b"\xff\xfe\x00{") is False


@pytest.mark.parametrize("path", OURS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_truncated_files_give_one_line(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    bad = tmp_path / path.name
    bad.write_text(text[: len(text) * 2 // 3])
    with pytest.raises(FormatError) as err:
        formats.read(bad)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and message.startswith(str(bad)) and "line" in message


@pytest.mark.parametrize(("src", "change", "where"), [
    (GL08, lambda d: d["benchmarks"][1]["requests"]["successful"][2].pop("info"),
     "benchmarks[1].requests.successful[2]: a GuideLLM request record (missing 'info')"),
    (GL08, lambda d: d["benchmarks"][0]["config"].update(strategy={"type_": "replay"}),
     "benchmarks[0].strategy"),
    (GL08, lambda d: d["benchmarks"][0]["config"]["backend"].update(request_format="/v1/embeddings"),
     "benchmarks[0].config.backend.request_format"),
    (GL08, lambda d: d["benchmarks"][0].update(requests={}), "benchmarks[0].requests"),
    (GL03, lambda d: d["benchmarks"][0].pop("worker"), "benchmarks[0]: a GuideLLM 0.3 benchmark"),
    (GL03, lambda d: d["benchmarks"][0]["requests"]["successful"][0].update(first_token_time=None),
     "benchmarks[0].requests.successful[0]: first and last token times"),
    (GL08, lambda d: d.update(benchmarks=[]), "benchmarks: a non-empty list"),
    (AP_C / AGG, lambda d: d.pop("input_config"), "input_config"),
    (AP_C / AGG, lambda d: d["input_config"]["endpoint"].update(type="embeddings"),
     "input_config.endpoint.type"),
])
def test_malformed_json_names_the_key(src: Path, change: Callable[[Any], Any], where: str, tmp_path: Path
                                      ) -> None:
    bad = _rewrite_json(src, tmp_path / src.name, change)
    with pytest.raises(FormatError) as err:
        formats.read(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: {where}") and len(message.splitlines()) == 1


def test_malformed_jsonl_names_the_line_and_key(tmp_path: Path) -> None:
    rows = _jsonl(AP_C / JSONL)
    del rows[2]["metadata"]["request_start_ns"]
    bad = tmp_path / JSONL
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(FormatError, match=r"\.jsonl: line 3 metadata\.request_start_ns: an int"):
        formats.read(bad)
    bad.write_text((AP_C / JSONL).read_text() + '["not a record"]\n')
    with pytest.raises(FormatError, match=r": line 11: a JSON object \(AIPerf request record\)"):
        formats.read(bad)


def test_foreign_json_is_no_format(tmp_path: Path) -> None:
    foreign = tmp_path / "benchmarks.json"
    foreign.write_text('{"benchmarks": [{"name": "something else"}]}')
    with pytest.raises(TokbenchError, match=r"no format tokbench imports.*GuideLLM benchmark JSON.*AIPerf"):
        formats.read(foreign)


# -- through the CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", OURS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_cli_import_show_report(path: Path, store_path: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    assert main(["--store", str(store_path), "import", str(path)]) == 0
    out = capsys.readouterr().out
    assert NAMES[path.name] in out and "imported run import-" in out
    (doc,) = _docs(store_path)
    expected = _one_run(path)
    assert [c["workload"] for c in doc["cases"]] == [c["workload"] for c in expected["cases"]]
    assert [len(c.get("requests") or []) for c in doc["cases"]] == [len(c["requests"])
                                                                    for c in expected["cases"]]
    assert [c.get("aggregate") for c in doc["cases"]] == [c["aggregate"] for c in expected["cases"]]
    assert [c["load"] for c in doc["cases"]] == [c["load"] for c in expected["cases"]]
    stored = [r for c in doc["cases"] for r in c.get("requests") or []]
    first = [r for c in expected["cases"] for r in c["requests"]]
    for key in ("status", "ttft_ns", "e2el_ns", "chunk_ns", "output_tokens", "prompt_tokens", "request_id",
                "counted_by", "error"):
        assert [r[key] for r in stored] == [r[key] for r in first], key
    assert doc["run"]["source"]["samples"] is (path.name != AGG)
    run_id = doc["run"]["run_id"]
    assert main(["--store", str(store_path), "show", run_id]) == 0
    shown = capsys.readouterr().out
    assert "imported from" in shown and NAMES[path.name] in shown
    assert all(c["workload"] in shown for c in doc["cases"])
    report = tmp_path / "report.md"
    assert main(["--store", str(store_path), "report", run_id, "-o", str(report)]) == 0
    assert all(c["workload"] in report.read_text() for c in doc["cases"])
    assert main(["--store", str(store_path), "import", str(path)]) == 0
    assert "already in the store; skipped" in capsys.readouterr().out
    assert len(_docs(store_path)) == 1


def test_cli_serving_table_of_an_import(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = json.loads(GL08.read_text())
    assert main(["--store", str(store_path), "import", str(GL08)]) == 0
    capsys.readouterr()
    assert main(["--store", str(store_path), "show", _docs(store_path)[0]["run"]["run_id"]]) == 0
    out = capsys.readouterr().out
    for bench in raw["benchmarks"]:
        totals = bench["metrics"]["request_totals"]
        assert f"{totals['successful']}/{totals['total']}" in out  # completed / sent, errors kept


def test_cli_aggregate_only_import_shows_the_tools_figures(store_path: Path, capsys: pytest.CaptureFixture
                                                           ) -> None:
    """An aggregates-only serving case shows AIPerf's own TTFT and E2EL (it has no records to
    recompute them from), and is refused as a gate baseline."""
    agg = json.loads((AP_C / AGG).read_text())
    assert main(["--store", str(store_path), "import", str(AP_C / AGG)]) == 0
    assert "aggregates only" in capsys.readouterr().out
    run_id = _docs(store_path)[0]["run"]["run_id"]
    assert main(["--store", str(store_path), "show", run_id]) == 0
    out = capsys.readouterr().out
    assert f"{agg['time_to_first_token']['p50']:.1f}" in out and f"{agg['request_latency']['p50']:.1f}" in out
    assert main(["--store", str(store_path), "import", str(AP_C / JSONL)]) == 0  # with its records
    current = next(d for d in _docs(store_path) if d["run"]["source"]["samples"])["run"]["run_id"]
    capsys.readouterr()
    assert main(["--store", str(store_path), "gate", "--baseline", run_id, "--current", current]) == 4
    assert "keeps only aggregates" in capsys.readouterr().out


def test_cli_import_states_the_model_of_a_lone_jsonl(store_path: Path, tmp_path: Path) -> None:
    shutil.copy(AP_R / JSONL, tmp_path / JSONL)
    assert main(["--store", str(store_path), "import", str(tmp_path / JSONL), "--model", "tiny-llama"]) == 0
    (doc,) = _docs(store_path)
    assert doc["cases"][0]["model"] == "tiny-llama" and "model" not in doc["run"]["source"]["unknown"]
    assert len(doc["cases"][0]["requests"]) == 10


def test_cli_compare_guidellm_with_aiperf(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Runs of two tools compare: the engines are not refused (said in a warning), and every case of
    either run is listed, matched or not (these fixtures ran different loads, so none match)."""
    assert main(["--store", str(store_path), "import", str(GL08), str(AP_C / JSONL)]) == 0
    gl, ap = sorted((d for d in _docs(store_path)), key=lambda d: d["run"]["source"]["tool"] != "guidellm")
    capsys.readouterr()
    assert main(["--store", str(store_path), "compare", gl["run"]["run_id"], ap["run"]["run_id"],
                 "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "across tools: guidellm" in captured.out + captured.err
    rows = list(csv.DictReader(captured.out[captured.out.index("case,"):].splitlines()))
    cases = {r["case"] for r in rows}
    assert {c["workload"] for c in gl["cases"] + ap["cases"]} <= {w for c in cases for w in c.split()}
    assert {r["status"] for r in rows} == {"only in A", "only in B"}
