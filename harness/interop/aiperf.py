"""AIPerf exports (`aiperf profile`): the per-request records (`profile_export.jsonl`, or PREFIX.jsonl)
and the aggregate statistics (`profile_export_aiperf.json`, or PREFIX.json).

The per-request JSONL keeps, for every request: its wall-clock send and end (`request_start_ns`,
`request_end_ns`, UNIX ns), TTFT, every gap between content chunks (`inter_chunk_latency`, ms),
the request latency to the last content chunk, the token counts both from the server's usage and
from AIPerf's own tokenizer, the X-Request-ID it sent, and the error. From these the arrival of
every content chunk is rebuilt exactly (TTFT, then each gap added: AIPerf computes them from the
same timestamps), so every serving metric is recomputed, as for tokbench's own cases. The JSONL
names neither the model, nor the load, nor AIPerf's version: they are read from the aggregate JSON
AIPerf wrote beside it in the same run, where it is there (and holds as many requests), else listed
as unknown (`tokbench import --model` states the model).

The aggregate JSON keeps only statistics (mean and percentiles per metric, with units), the
configuration and the command line: imported as an aggregates-only case. Its names differ from
tokbench's: AIPerf's `inter_token_latency` is (latency − TTFT) ÷ (output tokens − 1), which
tokbench (as vLLM) calls TPOT, and its `inter_chunk_latency` is what tokbench calls ITL; its token
counts and throughputs use its own tokenizer unless run with --use-server-token-count.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from harness.interop import documents
from harness.interop.documents import FormatError, Source
from harness.interop.formats import Format
from harness.interop.guidellm import length_span, one_line
from harness.interop.serving import load_name, serving_load

TOOL = "aiperf"
BACKEND = "openai"
_TOKBENCH = re.compile(rb'"format"\s*:\s*"tokbench-run"')
_VERSION = re.compile(rb'"aiperf_version"\s*:')
_SUMMARY = re.compile(rb'"(request_throughput|request_count|request_latency|time_to_first_token)"\s*:\s*\{')
_ENDPOINTS = {"completions": "completions", "chat": "chat"}
_ARRIVALS = {"poisson": "poisson", "constant": "constant", "gamma": "gamma"}
#: AIPerf statistic → tokbench's (harness.common.serving.distribution) name.
_STATS = {"avg": "mean", "p50": "p50", "p90": "p90", "p95": "p95", "p99": "p99", "min": "min", "max": "max"}
#: tokbench latency → the AIPerf metric that measures it (ms).
_LATENCIES = {"ttft": "time_to_first_token", "tpot": "inter_token_latency", "itl": "inter_chunk_latency",
              "e2el": "request_latency"}


def _value(metrics: dict[str, Any], tag: str) -> Any:
    entry = metrics.get(tag)
    return entry.get("value") if isinstance(entry, dict) else None


def _ms_ns(value: Any) -> int | None:
    """AIPerf's milliseconds (its integer ns divided by 1e6) back to ns."""
    return round(value * 1e6) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _stat(entry: Any, key: str = "avg") -> Any:
    return entry.get(key) if isinstance(entry, dict) else None


# -- the run's configuration (aggregate JSON) --------------------------------------------------------
def _phases(config: dict[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """The profiling phases, and the warm-up requests AIPerf sent before them (0 if none)."""
    phases = [p for p in config.get("phases") or [] if isinstance(p, dict)]
    warm = [p for p in phases if p.get("kind") == "warmup"]
    warmup = sum(_int(p.get("requests")) or 0 for p in warm) if warm else 0
    if any(_int(p.get("requests")) is None for p in warm):
        warmup = None
    return [p for p in phases if p.get("kind", "profiling") == "profiling"], warmup


def _load_kind(phase: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    if not phase:
        return {}, ["the load's concurrency or rate"]
    kind = phase.get("type")
    if kind == "concurrency" and _int(phase.get("concurrency")):
        return {"concurrency": _int(phase["concurrency"])}, []
    if kind in _ARRIVALS and isinstance(phase.get("rate"), (int, float)):
        out: dict[str, Any] = {"rate": float(phase["rate"]), "arrival": _ARRIVALS[kind]}
        if kind == "gamma":
            out["burstiness"] = float(phase.get("smoothness") or 1.0)
        if _int(phase.get("concurrency")):
            out["max_concurrency"] = _int(phase["concurrency"])
        return out, []
    return {}, [f"the load: AIPerf's {kind!r} phase has no concurrency or rate tokbench can name"]


def _lengths(config: dict[str, Any], seen_in: list[int], seen_out: list[int]
             ) -> tuple[tuple[int, int], tuple[int, int], list[str]]:
    datasets = [d for d in config.get("datasets") or [] if isinstance(d, dict)]
    prompts = (datasets[0].get("prompts") or {}) if len(datasets) == 1 else {}
    isl, osl = prompts.get("isl") or {}, prompts.get("osl") or {}
    notes = []
    if datasets and not prompts:
        notes.append("prompt and output lengths as the requests show them (the data is not synthetic)")
    in_span, in_note = length_span(isl.get("mean"), isl.get("stddev"), None, None, seen_in)
    out_span, out_note = length_span(osl.get("mean"), osl.get("stddev"), None, None, seen_out)
    if in_note:
        notes.append(f"prompt lengths: {in_note}")
    if out_note:
        notes.append(f"output lengths: {out_note}")
    return in_span, out_span, notes


def _model(config: dict[str, Any]) -> str | None:
    items = ((config.get("models") or {}).get("items")) or []
    names = [str(m.get("name")) for m in items if isinstance(m, dict) and m.get("name")]
    return ",".join(names) or None


def _endpoint(path: Path, config: dict[str, Any]) -> tuple[str, str | None, bool | None]:
    endpoint = config.get("endpoint") or {}
    kind = endpoint.get("type", "chat")
    if kind not in _ENDPOINTS:
        raise FormatError(path, "input_config.endpoint.type", "a text-generation endpoint (completions or "
                          f"chat); found {kind!r}")
    urls = endpoint.get("urls") or []
    return _ENDPOINTS[kind], (str(urls[0]) if urls else None), endpoint.get("streaming")


def _engine(version: str | None, target: str | None) -> dict[str, Any]:
    return {"engine": TOOL, "engine_version": version,
            "client": f"{TOOL} {version or '(version not stated)'}", "target": target}


def _hard(version: str | None) -> dict[str, Any]:
    return {"engines": {BACKEND: {"engine": TOOL, "engine_version": version}}} if version else {}


# -- per-request JSONL -------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, row in documents.jsonl_objects(path, "AIPerf request record"):
        meta = row.get("metadata")
        if not isinstance(meta, dict) or not isinstance(row.get("metrics"), dict):
            raise FormatError(path, f"line {n}", "an AIPerf request record with metadata and metrics")
        for key in ("request_start_ns", "request_end_ns"):
            if not isinstance(meta.get(key), int):
                raise FormatError(path, f"line {n} metadata.{key}", "an integer (UNIX time, ns)")
        rows.append(row)
    return rows


def _same_run(doc: dict[str, Any], first_send: float) -> bool:
    """Whether the aggregate's start time is the records' first send, whatever its time zone: AIPerf
    writes it as local time without a zone, so the two may differ by whole quarter hours."""
    start = documents.parse_time(doc.get("start_time"))
    if start is None:
        return True
    offset = first_send - start
    return abs(offset) <= 14 * 3600 + 60 and abs(offset - 900 * round(offset / 900)) <= 60


def _sibling(path: Path, n_records: int, first_send: float) -> tuple[dict[str, Any] | None, str | None]:
    """The aggregate JSON AIPerf wrote beside the JSONL in the same run: as many requests, and its
    start time at the records' first send."""
    names = ["profile_export_aiperf.json"] if path.name == "profile_export.jsonl" else [
        path.with_suffix(".json").name, "profile_export_aiperf.json"]
    for name in names:
        candidate = path.with_name(name)
        if not candidate.is_file():
            continue
        try:
            doc = json.loads(candidate.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None, f"{name} beside it is not readable JSON: not used"
        if not isinstance(doc, dict) or "aiperf_version" not in doc:
            continue
        total = _stat(doc.get("completed_request_count"))
        if total is None:
            total = (_stat(doc.get("request_count")) or 0) + (_stat(doc.get("error_request_count")) or 0)
        if int(total or 0) != n_records or not _same_run(doc, first_send):
            return None, f"{name} beside it is another run's (its request count or start differs): not used"
        return doc, name
    return None, None


def _record(row: dict[str, Any], i: int, t0: int, workers: dict[str, int], conversations: dict[str, int],
            multi_turn: bool, prompt_expected: int | None, output_expected: int | None) -> dict[str, Any]:
    meta, m = row["metadata"], row["metrics"]
    start = meta["request_start_ns"]
    error = row.get("error")
    status = "cancelled" if meta.get("was_cancelled") else ("error" if error else "ok")
    ttft = _ms_ns(_value(m, "time_to_first_token"))
    gaps = _value(m, "inter_chunk_latency")
    chunks = None
    if ttft is not None:
        chunks = [ttft]
        for gap in gaps if isinstance(gaps, list) else []:
            chunks.append(chunks[-1] + (_ms_ns(gap) or 0))
    usage_out = _int(_value(m, "usage_completion_tokens"))
    usage_in = _int(_value(m, "usage_prompt_tokens"))
    if status == "ok":
        out_tokens = usage_out if usage_out is not None else _int(_value(m, "output_sequence_length"))
        counted = "usage" if usage_out is not None else ("tokenizer" if out_tokens is not None else None)
        in_tokens = usage_in if usage_in is not None else _int(_value(m, "input_sequence_length"))
    else:
        out_tokens, counted = None, None
        in_tokens = usage_in if usage_in is not None else _int(
            _value(m, "input_sequence_length") or _value(m, "error_isl"))
    err = None
    if isinstance(error, dict):
        head = " ".join(str(x) for x in (error.get("code"), error.get("type")) if x)
        err = one_line(f"{head}: {error.get('message')}" if head else error.get("message"))
    elif error:
        err = one_line(error)
    worker = str(meta.get("worker_id"))
    rec: dict[str, Any] = {
        "trial": 0, "request": i, "request_id": meta.get("x_request_id"), "started_at": start / 1e9,
        "start_ns": start - t0, "status": status, "error": err, "ttft_ns": ttft,
        "e2el_ns": _ms_ns(_value(m, "request_latency")) if status == "ok" else None,
        "chunk_ns": chunks if status == "ok" else None, "prompt_tokens": in_tokens,
        "prompt_expected": prompt_expected, "output_tokens": out_tokens, "output_expected": output_expected,
        "cached_tokens": _int(_value(m, "usage_prompt_cache_read_tokens")), "counted_by": counted,
        "client_process": workers.setdefault(worker, len(workers)),
    }
    if multi_turn:
        rec["conversation"] = conversations.setdefault(str(meta.get("conversation_id")), len(conversations))
        rec["turn"] = meta.get("turn_index")
    return rec


def _read_jsonl(path: Path, source: Source) -> list[dict[str, Any]]:
    rows = _jsonl(path)
    measured = [r for r in rows if r["metadata"].get("benchmark_phase", "profiling") == "profiling"]
    if not measured:
        raise FormatError(path, "records", "at least one record of a profiling phase (only warm-up found)"
                          if rows else "at least one AIPerf request record")
    first_send = min(r["metadata"]["request_start_ns"] for r in measured) / 1e9
    agg, sibling = _sibling(path, len(measured), first_send)
    config = (agg or {}).get("input_config") or {}
    version = (agg or {}).get("aiperf_version")
    phases, warmup = _phases(config) if agg else ([], None)
    model = _model(config) if agg else None
    endpoint, target, _ = _endpoint(path, config) if agg else ("completions", None, None)
    run_notes = []
    if agg:
        run_notes.append(f"model, load, version and command from {sibling}, which AIPerf wrote beside it")
    elif sibling:
        run_notes.append(sibling)
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in measured:
        meta = r["metadata"]
        groups.setdefault((meta.get("profiling_index"), meta.get("phase_name")), []).append(r)
    warm_rows = len(rows) - len(measured)
    cases = []
    for gi, ((_, phase_name), group) in enumerate(groups.items()):
        phase = next((p for p in phases if p.get("name") == phase_name), None) or (
            phases[gi] if len(phases) == len(groups) else None)
        kind, unknown = _load_kind(phase)
        group.sort(key=lambda r: r["metadata"]["request_start_ns"])
        seen_in = [v for r in group for v in [_int(_value(r["metrics"], "input_sequence_length")
                                                   or _value(r["metrics"], "error_isl"))] if v]
        seen_out = [v for r in group for v in [_int(_value(r["metrics"], "usage_completion_tokens")
                                                    or _value(r["metrics"], "output_sequence_length"))] if v]
        in_span, out_span, notes = _lengths(config, seen_in, seen_out)
        fixed_in = in_span[0] if in_span[0] == in_span[1] and agg else None
        fixed_out = out_span[0] if out_span[0] == out_span[1] and agg else None
        t0 = group[0]["metadata"]["request_start_ns"]
        workers: dict[str, int] = {}
        conversations: dict[str, int] = {}
        multi = any((r["metadata"].get("turn_index") or 0) > 0 for r in group)
        records = [_record(r, i, t0, workers, conversations, multi, fixed_in, fixed_out)
                   for i, r in enumerate(group)]
        end = max(r["metadata"]["request_end_ns"] for r in group)
        ok = [r for r in records if r["status"] == "ok"]
        turns = max((r.get("turn") or 0 for r in records), default=0) + 1
        load = serving_load(**kind, input_len=in_span, output_len=out_span,
                            requests=_int((phase or {}).get("requests")),
                            duration_s=(phase or {}).get("duration"), warmup=warmup, endpoint=endpoint,
                            turns=turns)
        notes = [*run_notes, *notes, *(f"not stated: {u}" for u in unknown)]
        notes.append("wall time from the first request's send to the last response's end, from the records")
        if warm_rows:
            notes.append(f"{warm_rows} warm-up records left out")
        if any(r["counted_by"] == "tokenizer" for r in ok):
            notes.append("output tokens counted with AIPerf's tokenizer: the server sent no usage")
        cases.append(documents.case(
            backend=BACKEND, model=model or documents.MODEL_NOT_STATED, workload=load_name(load),
            n_prompt=in_span[1], n_gen=out_span[1], params={"url": target} if target else {}, load=load,
            requests=records, notes=notes, engine=_engine(version, target),
            trials=[documents.trial(0, "out", sum(r["output_tokens"] or 0 for r in ok), end - t0, t0 / 1e9)],
            started_at=t0 / 1e9, finished_at=end / 1e9))
    source.version = version
    source.command = ((agg or {}).get("run_info") or {}).get("cli_command")
    source.samples = True
    source.unknown += ["the machine (AIPerf records none)"]
    if not agg:
        source.unknown += ["model", "the load's concurrency or rate", "the AIPerf version",
                           "the command line"]
    return [documents.run(source, 0, cases, started_at=min(c["started_at"] for c in cases),
                          finished_at=max(c["finished_at"] for c in cases), hard=_hard(version))]


# -- aggregate JSON -----------------------------------------------------------------------------------
def _serving_summary(doc: dict[str, Any], counted_by: str) -> dict[str, Any]:
    """The tool's figures under tokbench's serving names (harness.common.serving.summarize), ms."""
    completed = _stat(doc.get("request_count"))
    failed = _stat(doc.get("error_request_count")) or 0
    out: dict[str, Any] = {
        "completed": completed, "failed": failed,
        "requests": (completed or 0) + failed if completed is not None else None,
        "wall_s": _stat(doc.get("benchmark_duration")),
        "request_rate": _stat(doc.get("request_throughput")),
        "output_tps": _stat(doc.get("output_token_throughput")),
        "total_tps": _stat(doc.get("total_token_throughput")),
        "error_rate": (_stat(doc.get("request_error_rate")) or 0) / 100
        if doc.get("request_error_rate") is not None else None,
        "counted_by": [counted_by],
    }
    for name, tag in _LATENCIES.items():
        entry = doc.get(tag)
        if isinstance(entry, dict) and entry.get("unit") == "ms":
            out[name] = {mine: entry[theirs] for theirs, mine in _STATS.items() if theirs in entry}
            if "count" in entry:
                out[name]["n"] = entry["count"]
    return out


def _read_json(path: Path, source: Source) -> list[dict[str, Any]]:
    doc = documents.json_document(path, "AIPerf writes one JSON document")
    if not isinstance(doc, dict) or "aiperf_version" not in doc:
        raise FormatError(path, "aiperf_version", "an AIPerf aggregate export (profile_export_aiperf.json)")
    config = doc.get("input_config")
    if not isinstance(config, dict):
        raise FormatError(path, "input_config", "the run's configuration, as AIPerf 0.13 and later write it")
    metrics = {k: v for k, v in doc.items() if isinstance(v, dict) and "unit" in v}
    if not any(k in metrics for k in ("request_count", "request_latency", "time_to_first_token")):
        raise FormatError(path, "request_count", "AIPerf's request statistics (request_count, "
                          "request_latency, time_to_first_token)")
    version = str(doc["aiperf_version"])
    phases, warmup = _phases(config)
    endpoint, target, streaming = _endpoint(path, config)
    kind, unknown = _load_kind(phases[0] if len(phases) == 1 else None)
    if len(phases) > 1:
        unknown = [f"which of its {len(phases)} profiling phases each figure is for (AIPerf aggregates them)"]

    def span(tag: str) -> list[int]:
        lo, hi = (_stat(doc.get(tag), "min"), _stat(doc.get(tag), "max"))
        return [int(v) for v in (lo, hi) if isinstance(v, (int, float))]

    in_span, out_span, notes = _lengths(config, span("input_sequence_length") + span("error_isl"),
                                        span("output_sequence_length"))
    load = serving_load(**kind, input_len=in_span, output_len=out_span,
                        requests=_int(phases[0].get("requests")) if len(phases) == 1 else None,
                        duration_s=phases[0].get("duration") if len(phases) == 1 else None, warmup=warmup,
                        endpoint=endpoint)
    server_counts = "--use-server-token-count" in str((doc.get("run_info") or {}).get("cli_command") or "")
    counted_by = "usage" if server_counts else "tokenizer"
    if not server_counts:
        notes.append("AIPerf's token counts and throughputs use its own tokenizer, not the server's usage")
    if streaming is False:
        notes.append("not streamed: no TTFT or inter-token figures")
    notes += [f"not stated: {u}" for u in unknown]
    aggregate = {**metrics, "error_summary": doc.get("error_summary") or [],
                 "was_cancelled": doc.get("was_cancelled"), "is_complete": doc.get("is_complete"),
                 "serving": _serving_summary(doc, counted_by)}
    if _stat(doc.get("output_token_throughput")) is not None:  # the summary table's t/s (one benchmark)
        aggregate.update(tps_mean=_stat(doc["output_token_throughput"]), n_trials=1)
    started = documents.parse_time(doc.get("start_time"))
    finished = documents.parse_time(doc.get("end_time"))
    case = documents.case(
        backend=BACKEND, model=_model(config) or documents.MODEL_NOT_STATED, workload=load_name(load),
        n_prompt=in_span[1], n_gen=out_span[1], params={"url": target} if target else {}, load=load,
        aggregate=aggregate, notes=notes, engine=_engine(version, target), started_at=started,
        finished_at=finished)
    source.version = version
    source.command = (doc.get("run_info") or {}).get("cli_command")
    source.samples = False
    source.unknown += ["the machine (AIPerf records none)", "per-request records (see profile_export.jsonl)",
                       "the time zone of its start and end times (written without one; read as UTC)"]
    return [documents.run(source, 0, [case], started_at=started, finished_at=finished, hard=_hard(version))]


# -- detection -----------------------------------------------------------------------------------------
def _sniff_jsonl(path: Path, head: bytes) -> bool:
    try:
        first = head.lstrip().split(b"\n", 1)[0]
        return (first[:1] == b"{" and b'"metadata"' in first and b'"request_start_ns"' in first
                and b'"benchmark_phase"' in first and not _TOKBENCH.search(head))
    except Exception:
        return False


def _sniff_json(path: Path, head: bytes) -> bool:
    try:
        return (head.lstrip()[:1] == b"{" and bool(_VERSION.search(head)) and bool(_SUMMARY.search(head))
                and not _TOKBENCH.search(head) and not _sniff_jsonl(path, head))
    except Exception:
        return False


FORMATS = [Format("AIPerf per-request JSONL", TOOL, _sniff_jsonl, _read_jsonl),
           Format("AIPerf aggregate JSON", TOOL, _sniff_json, _read_json)]
