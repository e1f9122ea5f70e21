"""GuideLLM benchmark reports (JSON): `guidellm benchmark --output-path FILE.json` (0.3) and
`guidellm run --output kind=json,path=FILE.json` (0.8, report schema version 2).

One file is one GuideLLM invocation, imported as one run; each of its benchmarks (one per
concurrency or rate of the profile) is one serving case, as tokbench stores its own: the load,
one request record per request, and one `out` trial (output tokens of the completed requests over
the benchmark's duration) from which throughput is recomputed.

What the two report versions keep, per request: the send time, the first and the last token's
arrival, the end of the response, the prompt and output token counts, the status and the error.
Neither keeps the arrival of every token or chunk (GuideLLM's own per-token timings are
interpolated from the first and last), so `chunk_ns` is left empty and ITL cannot be recomputed:
the case's notes carry GuideLLM's own mean ITL instead. E2EL is taken to the last token, as
tokbench and `vllm bench serve` define it (GuideLLM's request latency runs to the end of the
response). 0.8 names its version, the client's platform and its whole configuration; 0.3 names
none of them, and where its token counts come from (the server's usage, or its own request's
counts when the server sent none) is not recorded per request.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.interop import documents
from harness.interop.documents import FormatError, Source, ns
from harness.interop.formats import Format
from harness.interop.serving import load_name, serving_load

TOOL = "guidellm"
BACKEND = "openai"  # tokbench's name for an OpenAI-compatible server
_V2 = re.compile(rb'"guidellm_version"\s*:')
_V1 = re.compile(rb'"type_"\s*:\s*"generative_benchmark"')
_TOKBENCH = re.compile(rb'"format"\s*:\s*"tokbench-run"')
_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat",
              "text_completions": "completions", "chat_completions": "chat"}
_STATUS = {"successful": "ok", "errored": "error", "incomplete": "cancelled"}


def length_span(mean: Any, stdev: Any, lo: Any, hi: Any, seen: list[int]
                ) -> tuple[tuple[int, int], str | None]:
    """(low, high) lengths of a synthetic length distribution, and a note where it is not one fixed
    length: its stated bounds, else the lengths the file shows."""
    if isinstance(mean, (int, float)) and not stdev and not lo and not hi:
        return (int(mean), int(mean)), None
    low = int(lo) if isinstance(lo, (int, float)) else (min(seen) if seen else None)
    high = int(hi) if isinstance(hi, (int, float)) else (max(seen) if seen else None)
    if low is None or high is None:
        if isinstance(mean, (int, float)):
            return (int(mean), int(mean)), f"mean {mean:g}, spread not stated"
        return (0, 0), "lengths not stated"
    if low == high and not stdev:
        return (low, high), None
    bounds = "stated bounds" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else "as seen"
    dist = f"normal, mean {mean:g}, stdev {stdev:g}" if stdev and isinstance(mean, (int, float)) else "varied"
    return (low, high), f"{dist}; range {low}-{high} ({bounds}), not uniform as tokbench draws"


_HTTPX_HINT = re.compile(r"(\\n|\s)+For more information check: [^\s\"']+")


def one_line(text: Any, limit: int = 300) -> str | None:
    """An error as one line, without httpx's 'For more information check: URL' hint."""
    if text is None:
        return None
    line = " ".join(_HTTPX_HINT.sub("", str(text)).split())
    return line[:limit] + ("…" if len(line) > limit else "")


# -- reading ---------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(value: Any, index: int) -> Any:
    """A constraint's count, which 0.8 writes as one value or one per benchmark."""
    if isinstance(value, list):
        return value[index] if index < len(value) else (value[-1] if value else None)
    return value


class _Request:
    """One request as both report versions give it: times in UNIX seconds."""

    def __init__(self, status: str, start: float | None, first: float | None, last: float | None,
                 prompt_tokens: int | None, output_tokens: int | None, counted_by: str | None,
                 error: str | None, client_process: int | None, output_expected: int | None = None,
                 cached_tokens: int | None = None, turn: int | None = None):
        self.status, self.start, self.first, self.last = status, start, first, last
        self.prompt_tokens, self.output_tokens, self.counted_by = prompt_tokens, output_tokens, counted_by
        self.error, self.client_process, self.output_expected = error, client_process, output_expected
        self.cached_tokens, self.turn = cached_tokens, turn


def _v2_request(status: str, r: dict[str, Any]) -> _Request:
    info = r["info"]
    t = info["timings"]
    out_metrics = r.get("output_metrics") or {}
    usage = out_metrics.get("total_tokens") is not None  # else GuideLLM counted stream iterations
    expected = None
    if isinstance(r.get("request_args"), str):
        try:
            body = json.loads(r["request_args"]).get("body") or {}
        except (json.JSONDecodeError, AttributeError):
            body = {}
        expected = body.get("max_tokens") or body.get("max_completion_tokens")
    ok = status == "ok"
    return _Request(
        status, _num(t.get("request_start")) or _num(r.get("request_start_time")),
        _num(t.get("first_token_iteration")), _num(t.get("last_token_iteration")),
        r.get("prompt_tokens"), r.get("output_tokens") if ok and usage else None,
        "usage" if ok and usage else None, one_line(info.get("error")) if status == "error" else None,
        info.get("scheduler_process_id"), expected if isinstance(expected, int) else None,
        r.get("cached_tokens"), info.get("turn_index"))


def _v1_request(status: str, r: dict[str, Any]) -> _Request:
    info = r.get("scheduler_info") or {}
    ok = status == "ok"
    return _Request(
        status, _num(r.get("start_time")) or _num(info.get("request_start")), _num(r.get("first_token_time")),
        _num(r.get("last_token_time")), r.get("prompt_tokens"), r.get("output_tokens") if ok else None,
        None, one_line(r.get("error")) if status == "error" else None, info.get("process_id"))


def _requests(path: Path, where: str, groups: Any, parse: Callable[[str, dict[str, Any]], _Request]
              ) -> list[_Request]:
    if not isinstance(groups, dict) or not any(isinstance(groups.get(g), list) for g in _STATUS):
        raise FormatError(path, f"{where}.requests", "the per-request records (successful, errored, "
                          "incomplete); a report saved with sampling 0 keeps none, and has nothing to import")
    out = []
    for group, status in _STATUS.items():
        for j, r in enumerate(groups.get(group) or []):
            try:
                req = parse(status, r)
            except (KeyError, TypeError, AttributeError) as exc:
                key = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                raise FormatError(path, f"{where}.requests.{group}[{j}]", f"a GuideLLM request record "
                                  f"({key})") from None
            if req.start is None and status == "ok":
                raise FormatError(path, f"{where}.requests.{group}[{j}]", "the request's start time")
            if status == "ok" and (req.first is None or req.last is None):
                raise FormatError(path, f"{where}.requests.{group}[{j}]", "first and last token times of "
                                  "a completed request (a streamed benchmark)")
            out.append(req)
    out.sort(key=lambda q: q.start or 0.0)
    return out


def _records(reqs: list[_Request], t0: float, turns: int) -> list[dict[str, Any]]:
    out = []
    for i, q in enumerate(reqs):
        start = q.start or t0
        rec: dict[str, Any] = {
            "trial": 0, "request": i, "request_id": None, "started_at": start, "start_ns": ns(start - t0),
            "status": q.status, "error": q.error,
            "ttft_ns": ns(q.first - start) if q.first is not None else None,
            "e2el_ns": ns(q.last - start) if q.last is not None else None,
            "chunk_ns": None, "prompt_tokens": q.prompt_tokens, "prompt_expected": None,
            "output_tokens": q.output_tokens, "output_expected": q.output_expected,
            "cached_tokens": q.cached_tokens, "counted_by": q.counted_by,
            "client_process": q.client_process,
        }
        if turns > 1:
            rec["turn"] = q.turn
        out.append(rec)
    return out


def _strategy_load(path: Path, where: str, strategy: Any) -> dict[str, Any]:
    """concurrency / rate / arrival of a GuideLLM scheduling strategy."""
    kind = strategy.get("type_") if isinstance(strategy, dict) else None
    if kind == "synchronous":
        return {"concurrency": 1}
    if kind == "concurrent" and isinstance(strategy.get("streams"), int):
        return {"concurrency": strategy["streams"]}
    if kind == "throughput" and isinstance(strategy.get("max_concurrency"), int):
        return {"concurrency": strategy["max_concurrency"]}
    if kind in ("constant", "poisson") and _num(strategy.get("rate")):
        return {"rate": float(strategy["rate"]), "arrival": kind}
    raise FormatError(path, f"{where}.strategy", "a strategy tokbench can name (synchronous, concurrent, "
                      f"throughput, constant or poisson with its streams or rate); found {kind!r}")


def _case(path: Path, where: str, *, model: str, target: str | None, version: str | None,
          strategy: Any, endpoint: str, reqs: list[_Request], start: float, duration_s: float,
          data: dict[str, Any] | None, requests: int | None, duration_limit: float | None,
          warmup: int | None, turns: int, notes: list[str], rate_cap: int | None = None) -> dict[str, Any]:
    load_kind = _strategy_load(path, where, strategy)
    ok = [q for q in reqs if q.status == "ok"]
    data = data or {}
    in_span, in_note = length_span(data.get("prompt_tokens"), data.get("prompt_tokens_stdev"),
                                   data.get("prompt_tokens_min"), data.get("prompt_tokens_max"),
                                   [q.prompt_tokens for q in reqs if isinstance(q.prompt_tokens, int)])
    out_seen = [q.output_expected or q.output_tokens for q in reqs]
    out_span, out_note = length_span(data.get("output_tokens"), data.get("output_tokens_stdev"),
                                     data.get("output_tokens_min"), data.get("output_tokens_max"),
                                     [n for n in out_seen if isinstance(n, int)])
    notes = list(notes)
    if not data:
        notes.append("prompt and output lengths as the requests show them (the data is not synthetic)")
    if in_note:
        notes.append(f"prompt lengths: {in_note}")
    if out_note:
        notes.append(f"output lengths: {out_note}")
    fixed_out = out_span[0] if out_span[0] == out_span[1] and data.get("output_tokens") else None
    load = serving_load(**load_kind, max_concurrency=rate_cap, input_len=in_span, output_len=out_span,
                        requests=requests, duration_s=duration_limit, warmup=warmup, endpoint=endpoint,
                        turns=turns)
    records = _records(reqs, start, turns)
    if fixed_out:
        for rec in records:
            rec["output_expected"] = rec["output_expected"] or fixed_out
    if data.get("prompt_tokens") and in_span[0] == in_span[1]:
        for rec in records:
            rec["prompt_expected"] = in_span[0]
    notes.append("GuideLLM keeps the first and the last token's arrival, not every chunk's: ITL is not "
                 "recomputed; tokbench's TPOT is what GuideLLM calls inter-token latency (its TPOT "
                 "divides the whole request latency by the output tokens)")
    uncounted = [q for q in ok if q.output_tokens is None]
    if uncounted:
        notes.append(f"{len(uncounted)} completed requests have no output token count: the server sent "
                     "no usage, and GuideLLM counted stream chunks, which tokbench does not take as tokens")
    out_tokens = sum(q.output_tokens or 0 for q in ok)
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise FormatError(path, f"{where}.duration", "a positive benchmark duration in seconds")
    engine = {"engine": TOOL, "engine_version": version,
              "client": f"{TOOL} {version or '(version not stated)'}", "target": target}
    return documents.case(
        backend=BACKEND, model=model, workload=load_name(load), n_prompt=in_span[1], n_gen=out_span[1],
        params={"url": target} if target else {}, load=load, requests=records,
        trials=[documents.trial(0, "out", out_tokens, ns(duration_s), start)], notes=notes,
        engine=engine, started_at=start, finished_at=start + duration_s)


def _v2_cases(path: Path, doc: dict[str, Any], source: Source) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    meta = doc["metadata"]
    spec = ((doc.get("config") or {}).get("spec")) or {}
    version = meta.get("guidellm_version")
    data_specs = spec.get("data") or []
    data = data_specs[0] if len(data_specs) == 1 and isinstance(data_specs[0], dict) \
        and data_specs[0].get("kind") == "synthetic_text" else None
    turns = int((data or {}).get("turns") or 1)
    profile = spec.get("profile") or {}
    cases = []
    for i, bench in enumerate(doc["benchmarks"]):
        where = f"benchmarks[{i}]"
        if not isinstance(bench, dict) or not isinstance(bench.get("config"), dict):
            raise FormatError(path, where, "a GuideLLM benchmark with its config")
        config = bench["config"]
        backend = config.get("backend") or spec.get("backend") or {}
        fmt = backend.get("request_format", "/v1/chat/completions")
        if fmt not in _ENDPOINTS:
            raise FormatError(path, f"{where}.config.backend.request_format", "a text-generation endpoint "
                              f"(/v1/completions or /v1/chat/completions); found {fmt!r}")
        constraints = config.get("constraints") or {}
        limits = {name: _count((c.get("args") or {}).get(key), int(c.get("current_index") or 0))
                  for name, key in (("max_requests", "count"), ("max_duration", "seconds"))
                  if isinstance(c := constraints.get(name), dict)}
        warm = config.get("warmup") or {}
        notes = []
        if warm.get("value") or warm.get("percent"):
            notes.append(f"GuideLLM excluded a warm-up from its figures ({json.dumps(warm)}); the file "
                         "keeps only the measured requests")
        rate_cap = profile.get("max_concurrency") if isinstance(profile.get("max_concurrency"), int) else None
        reqs = _requests(path, where, bench.get("requests"), _v2_request)
        start = _num(bench.get("start_time"))
        end = _num(bench.get("end_time"))
        if start is None or end is None:
            raise FormatError(path, f"{where}.start_time", "the benchmark's start and end times")
        cases.append(_case(
            path, where, model=str(backend.get("model") or documents.MODEL_NOT_STATED),
            target=backend.get("target"), version=version, strategy=config.get("strategy"),
            endpoint=_ENDPOINTS[fmt], reqs=reqs, start=start, duration_s=end - start, data=data,
            requests=limits.get("max_requests"), duration_limit=limits.get("max_duration"),
            warmup=None if (warm.get("value") or warm.get("percent")) else 0, turns=turns, notes=notes,
            rate_cap=rate_cap))
    source.version = version
    source.machine = {k: meta[k] for k in ("platform", "python_version") if meta.get(k)}
    labels = ((doc.get("config") or {}).get("metadata") or {}).get("labels")
    if labels:
        source.machine["labels"] = labels
    source.unknown += ["the server's machine (GuideLLM records only its own client's platform)",
                       "the command line (the file keeps the configuration it resolved)",
                       "each token's arrival time (only the first and the last token's)"]
    return cases, {"engines": {BACKEND: {"engine": TOOL, "engine_version": version}}} if version else {}


def _v1_data(text: Any) -> dict[str, Any] | None:
    """0.3's --data as written: key=value pairs or a JSON object of a synthetic config, else a dataset."""
    if isinstance(text, dict):
        return text if "prompt_tokens" in text else None
    if not isinstance(text, str):
        return None
    try:
        parsed = json.loads(text)
        return parsed if isinstance(parsed, dict) and "prompt_tokens" in parsed else None
    except json.JSONDecodeError:
        pass
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            return None
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out if "prompt_tokens" in out else None


def _v1_cases(path: Path, doc: dict[str, Any], source: Source) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cases = []
    for i, bench in enumerate(doc["benchmarks"]):
        where = f"benchmarks[{i}]"
        if not isinstance(bench, dict) or not isinstance(bench.get("args"), dict) \
                or not isinstance(bench.get("worker"), dict):
            raise FormatError(path, where, "a GuideLLM 0.3 benchmark (args, worker, requests)")
        args, worker = bench["args"], bench["worker"]
        data = _v1_data((bench.get("request_loader") or {}).get("data"))
        reqs = _requests(path, where, bench.get("requests"), _v1_request)
        successful = (bench.get("requests") or {}).get("successful") or []
        types = {r.get("request_type") for r in successful if isinstance(r, dict)} or {"text_completions"}
        kind = types.pop() if len(types) == 1 else None
        if kind not in _ENDPOINTS:
            raise FormatError(path, f"{where}.requests", "requests of one type, text_completions or "
                              f"chat_completions; found {sorted(map(str, types | {kind}))}")
        start = _num(bench.get("start_time"))
        duration = _num(bench.get("duration"))
        if start is None or duration is None:
            raise FormatError(path, f"{where}.start_time", "the benchmark's start time and duration")
        strategy = args.get("strategy") or {}
        rate_cap = strategy.get("max_concurrency") if strategy.get("type_") in ("constant", "poisson") \
            and isinstance(strategy.get("max_concurrency"), int) else None
        notes = []
        if args.get("warmup_number") or args.get("warmup_duration"):
            notes.append(f"GuideLLM excluded a warm-up from its figures (warmup_number "
                         f"{args.get('warmup_number')}, warmup_duration {args.get('warmup_duration')})")
        cases.append(_case(
            path, where, model=str(worker.get("backend_model") or documents.MODEL_NOT_STATED),
            target=worker.get("backend_target"), version=None, strategy=strategy,
            endpoint=_ENDPOINTS[kind], reqs=reqs, start=start, duration_s=duration, data=data,
            requests=args.get("max_number"), duration_limit=_num(args.get("max_duration")),
            warmup=args.get("warmup_number") or 0, turns=1, notes=notes, rate_cap=rate_cap))
    source.unknown += ["the GuideLLM version (0.3's report does not state it)",
                       "the machine (0.3's report states no platform)", "the command line",
                       "where each token count comes from (the server's usage, or GuideLLM's own "
                       "request when the server sent none)",
                       "each token's arrival time (only the first and the last token's)"]
    return cases, {}


def _read(path: Path, source: Source) -> list[dict[str, Any]]:
    doc = documents.json_document(path, "GuideLLM writes one JSON report")
    if not isinstance(doc, dict):
        raise FormatError(path, "top level", "a JSON object with the GuideLLM benchmarks")
    benchmarks = doc.get("benchmarks")
    if not isinstance(benchmarks, list) or not benchmarks:
        raise FormatError(path, "benchmarks", "a non-empty list of GuideLLM benchmarks")
    meta = doc.get("metadata")
    if isinstance(meta, dict) and "guidellm_version" in meta:
        cases, hard = _v2_cases(path, doc, source)
    elif isinstance(benchmarks[0], dict) and "args" in benchmarks[0]:
        cases, hard = _v1_cases(path, doc, source)
    else:
        raise FormatError(path, "benchmarks[0]", "a GuideLLM report as 0.3 writes it (args, worker, "
                          "requests) or as 0.8 does (metadata.guidellm_version, config, requests)")
    source.samples = True
    times = [c["started_at"] for c in cases]
    ends = [c["finished_at"] for c in cases]
    return [documents.run(source, 0, cases, started_at=min(times), finished_at=max(ends), hard=hard)]


def _sniff(path: Path, head: bytes) -> bool:
    try:
        return (head.lstrip()[:1] == b"{" and not _TOKBENCH.search(head)
                and bool(_V2.search(head) or _V1.search(head)))
    except Exception:
        return False


FORMATS = [Format("GuideLLM benchmark JSON", TOOL, _sniff, _read)]
