"""The streaming load client: OpenAI-compatible requests over SSE on asyncio and aiohttp.

One request: POST, then read `data:` lines as they arrive. Each chunk's arrival is stamped
with perf_counter_ns before it is parsed; a chunk counts as content only when it carries
generated text (`choices[0].text`, or `delta.content` / `delta.reasoning_content` in chat),
so a role-only or empty chunk never sets TTFT. The usage chunk (`stream_options.include_usage`)
gives the token counts; a server that sends none has its output counted by the model's
tokenizer, and the record says so. SSE comments (`: keepalive`) are skipped; a data line that
is not JSON fails that request ("malformed SSE"), not the run.

Loads: closed loop (N workers, each starting a request as its last ends) or open loop (arrival
times drawn up front from the seed: exponential gaps for Poisson, gamma gaps of shape
`burstiness`, or even spacing; an optional cap on requests in flight). A load ends after its
request count, or at its duration, when requests still in flight are cancelled and recorded as
"cancelled". The client measures its own CPU time and event-loop lag, so a run can say when
the client, not the server, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

#: Event-loop lag (oversleep of a 10 ms tick) above which timestamps may be late by that much,
#: and client CPU (share of its one core) above which the client is called the bottleneck.
LAG_WARN_MS = 5.0
CPU_WARN = 0.9


@dataclass
class Prompt:
    """One request's input: text or token ids, and the lengths the workload asked for."""

    prompt: str | list[int]
    prompt_tokens: int | None  # as the tokenizer counts it (None: a later turn, with history)
    max_tokens: int
    messages: list[dict[str, str]] | None = None  # chat history of a later turn, this prompt last

    def after(self, history: list[tuple[str, str]], chat: bool) -> Prompt:
        """This prompt as the next turn of a conversation: the history (each earlier prompt and
        the reply to it) comes first, as a chat client resends it."""
        if not isinstance(self.prompt, str):
            raise StreamError("a multi-turn load needs text prompts: give --tokenizer")
        if chat:
            messages = [m for user, reply in history
                        for m in ({"role": "user", "content": user},
                                  {"role": "assistant", "content": reply})]
            return Prompt(self.prompt, None, self.max_tokens,
                          [*messages, {"role": "user", "content": self.prompt}])
        return Prompt("".join(u + r for u, r in history) + self.prompt, None, self.max_tokens)


@dataclass
class Endpoint:
    """Where and how to send requests."""

    base_url: str  # …/v1
    model: str
    chat: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # Authorization, never stored
    extra_body: dict[str, Any] = field(default_factory=dict)  # ignore_eos, min_tokens…
    count_tokens: Callable[[str], int] | None = None  # tokenizer, for servers without usage
    read_timeout_s: float = 600.0
    defer_count: bool = False  # a client process without the tokenizer: its parent counts
    #: how one request is sent: None is stream_request (OpenAI SSE on /v1); a backend with its
    #: own wire format gives its module-level function (picklable, for client processes)
    send: Callable[[Any, Endpoint, Prompt, dict[str, Any]], Awaitable[None]] | None = None

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ("/chat/completions" if self.chat else "/completions")

    def body(self, p: Prompt) -> dict[str, Any]:
        # Sampling is left at the server's defaults, as `vllm bench serve` leaves it.
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.chat:
            body["messages"] = p.messages or [{"role": "user", "content": p.prompt}]
        else:
            body["prompt"] = p.prompt
        body.update(self.extra_body)
        if "min_tokens" in body:
            body["min_tokens"] = p.max_tokens
        return body


_SSE_FIELDS = (b"event", b"id", b"retry")
_loads = json.JSONDecoder().decode  # str in, no encoding sniffing per chunk


class StreamError(Exception):
    """A request failed: HTTP status and body, a broken stream or malformed SSE."""


def _content(first: dict[str, Any], chat: bool) -> str | None:
    """The generated text a chunk's first choice carries, or None when it carries no generated
    token. A chunk with empty text still carries one when the stream is not ending (vLLM sends
    "" for a token whose bytes are an incomplete UTF-8 character); the role-only opening chunk
    of a chat and the closing chunk (empty, with a finish_reason) do not."""
    if chat:
        delta = first.get("delta") or {}
        text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
        if text:
            return text
        pending = "content" in delta and "role" not in delta and first.get("finish_reason") is None
        return "" if pending else None
    text = first.get("text")
    if text:
        return text
    return "" if text is not None and first.get("finish_reason") is None else None


class _StaleConnection(Exception):
    """The request could not be written on a kept-alive connection the server had closed."""


async def stream_request(session: Any, ep: Endpoint, p: Prompt, record: dict[str, Any]) -> None:
    """Send one streamed request on an aiohttp session and fill `record` as it goes (so a
    cancelled request keeps what had arrived). Raises StreamError on failure.

    A server may close a kept-alive connection right after a stream ends (llama.cpp's
    llama-server does); a request written onto it never reached the server, so it is sent once
    more on a new connection of its own (the pool may hold more closed ones), its clock restarted."""
    try:
        await _stream_once(session, ep, p, record)
    except _StaleConnection:
        import aiohttp

        record["chunk_ns"] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=session.timeout) as fresh:
            await _stream_once(fresh, ep, p, record, retry=True)


async def _stream_once(session: Any, ep: Endpoint, p: Prompt, record: dict[str, Any],
                       retry: bool = False) -> None:
    import aiohttp  # imported when used: workers of other backends never need it

    request_id = record["request_id"] = str(uuid.uuid4())  # servers log it: records join logs
    headers = {**ep.headers, "X-Request-Id": request_id}
    answered = False  # response headers arrived: the server has the request
    t0 = time.perf_counter_ns()
    record["started_at"] = time.time()
    record["_t0"] = t0
    chunks: list[int] = record.setdefault("chunk_ns", [])
    text: list[str] = []
    usage: dict[str, Any] | None = None
    ended = False  # [DONE] or a finish_reason: a stream cut by a dying server has neither
    try:
        async with session.post(ep.url, json=ep.body(p), headers=headers) as resp:
            answered = True
            if resp.status != 200:
                body = (await resp.text())[:300].replace("\n", " ")
                raise StreamError(f"HTTP {resp.status}: {body or resp.reason}")
            pending = b""  # an incomplete line carried to the next read
            async for data in resp.content.iter_any():
                now = time.perf_counter_ns() - t0
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        line = line.strip()
                        if not line or line[:1] == b":" or line.split(b":", 1)[0] in _SSE_FIELDS:
                            continue  # separator, comment (keep-alive), or an SSE field we ignore
                        raise StreamError(f"malformed SSE: {line[:80].decode(errors='replace')!r}")
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        ended = True
                        continue
                    try:
                        chunk = _loads(payload.decode())
                    except ValueError:
                        raise StreamError("malformed SSE: data is not JSON: "
                                          f"{payload[:80].decode(errors='replace')!r}") from None
                    if type(chunk) is not dict:
                        raise StreamError(f"malformed SSE: data is {type(chunk).__name__}, not an object")
                    choices = chunk.get("choices")
                    if choices:
                        piece = _content(choices[0], ep.chat)
                        if piece is not None:
                            chunks.append(now)
                            text.append(piece)
                        if choices[0].get("finish_reason"):
                            ended = True
                    if chunk.get("timings"):  # llama-server's own account, on the last chunk
                        record["server_timings"] = server_timings(chunk["timings"])
                    if chunk.get("usage"):  # its own chunk (choices: []), or on the last one
                        usage = chunk["usage"]
                    elif not choices and chunk.get("error"):
                        raise StreamError(f"server error in stream: {str(chunk['error'])[:200]}")
    except aiohttp.ClientError as exc:
        stale = isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError))
        if stale and not answered and not retry:
            raise _StaleConnection from None
        raise StreamError(f"{type(exc).__name__}: {exc}") from None
    except asyncio.TimeoutError:
        raise StreamError(f"no data for {ep.read_timeout_s:g} s (read timeout)") from None
    if not ended:
        raise StreamError(f"the stream broke off after {len(chunks)} chunks (no [DONE], no "
                          "finish_reason)")
    if not chunks:
        raise StreamError("the stream ended without generated content")
    record["ttft_ns"], record["e2el_ns"] = chunks[0], chunks[-1]
    record["_text"] = "".join(text)  # the reply: a conversation's next turn carries it
    cached = (record.get("server_timings") or {}).get("cache_n")
    if usage and usage.get("completion_tokens") is not None:
        record["output_tokens"] = int(usage["completion_tokens"])
        record["prompt_tokens"] = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        record["cached_tokens"] = details.get("cached_tokens", cached)
        record["counted_by"] = "usage"
    elif ep.count_tokens is not None:
        record["output_tokens"] = ep.count_tokens(record["_text"])
        record["prompt_tokens"] = p.prompt_tokens
        if p.prompt_tokens is None and p.messages is None and isinstance(p.prompt, str):
            record["prompt_tokens"] = ep.count_tokens(p.prompt)  # a later completions turn
        record["cached_tokens"] = cached
        record["counted_by"] = "tokenizer"
    elif ep.defer_count:
        record["prompt_tokens"], record["cached_tokens"] = p.prompt_tokens, cached
        if p.prompt_tokens is None and p.messages is None and isinstance(p.prompt, str):
            record["_prompt"] = p.prompt  # a later completions turn: counted with the reply
        record["counted_by"] = "deferred"
    else:
        raise StreamError("the server sent no usage and no tokenizer is known to count the "
                          "output: give --tokenizer")


#: llama-server's `timings` keys → the stored names (ms, and token counts).
_TIMINGS = {"prompt_ms": "prompt_ms", "predicted_ms": "decode_ms", "prompt_n": "prompt_n",
            "predicted_n": "decode_n", "cache_n": "cache_n"}


def server_timings(timings: dict[str, Any]) -> dict[str, Any]:
    """llama-server's per-request `timings`, under the names every server's timings are stored
    by (Ollama's durations map to the same)."""
    out: dict[str, Any] = {"source": "llama-server"}
    out.update({name: timings[key] for key, name in _TIMINGS.items() if timings.get(key) is not None})
    return out


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    wall_ns: int
    cpu_s: float
    lag_ms: list[float]
    loop: str = "asyncio"
    started_ns: int = 0  # perf_counter_ns at the start (one clock for every process here)
    processes: list[dict[str, Any]] | None = None  # each client process's own figures
    requested_processes: int = 1

    def client(self) -> dict[str, Any]:
        """The client's own load: CPU share of one core, and event-loop lag. With several client
        processes: their number, each one's figures, and the busiest one's share (one saturated
        process is enough to make the client the bottleneck)."""
        wall_s = self.wall_ns / 1e9
        lags = sorted(self.lag_ms)
        p99 = lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0
        cpu = self.cpu_s / wall_s if wall_s > 0 else 0.0
        if self.processes:
            cpu = max(p["cpu_share"] for p in self.processes)
        out = {"loop": self.loop, "cpu_s": round(self.cpu_s, 4), "wall_s": round(wall_s, 4),
               "cpu_share": round(cpu, 4),
               "loop_lag_p99_ms": round(p99, 3), "client_bound": cpu > CPU_WARN,
               "late_timestamps": p99 > LAG_WARN_MS, "processes": len(self.processes or [1])}
        if self.processes:
            out["per_process"] = self.processes
        return out


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (it wakes on socket data with less delay
    than asyncio's own loop), else on asyncio's. TOKBENCH_ASYNCIO=1 forces asyncio's loop."""
    import os

    if os.environ.get("TOKBENCH_ASYNCIO") != "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def arrival_gaps(rate: float, arrival: str, burstiness: float, seed: int) -> Iterator[float]:
    """Seconds between successive request sends of an open loop (the first at 0), endless."""
    rng = random.Random(seed)
    yield 0.0
    while True:
        if arrival == "constant":
            yield 1 / rate
        elif arrival == "gamma":
            yield rng.gammavariate(burstiness, 1 / (rate * burstiness))
        else:
            yield rng.expovariate(rate)


async def _lag_monitor(out: list[float], tick_s: float = 0.01) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(tick_s)
        out.append(max(0.0, (time.perf_counter() - t - tick_s) * 1e3))


async def run_load(ep: Endpoint, load: dict[str, Any], prompts: Callable[[int], Prompt], seed: int,
                   n_requests: int | None = None) -> LoadResult:
    """Run one pass of a load: `n_requests` (else the load's count) or until its duration."""
    count = n_requests if n_requests is not None else load.get("requests")
    duration = None if n_requests is not None else load.get("duration_s")
    limit = count if count is not None else 10**9  # a duration-only load: bounded by time
    in_flight = load.get("concurrency") or load.get("max_concurrency") or 0
    # Prompts are made before the clock starts (a 512-token text prompt takes ~50 ms to make and
    # check, which would stall the event loop mid-load); a duration-bound load gets an estimate.
    if count is not None:
        ready = [prompts(i) for i in range(count)]
    else:
        expected = (load.get("rate") or 0) * (duration or 0) * 1.5 + 64
        ready = [prompts(i) for i in range(min(int(expected) if load.get("rate") else 2048, 20_000))]

    def prompt(i: int) -> Prompt:
        return ready[i] if i < len(ready) else prompts(i)

    import aiohttp

    records: list[dict[str, Any]] = []
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=in_flight or 0, ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=ep.read_timeout_s)
    cpu0, t0 = time.process_time(), time.perf_counter_ns()
    deadline = t0 + duration * 1e9 if duration else math.inf

    turns = int(load.get("turns") or 1)
    send = ep.send or stream_request

    async def one(i: int, history: list[tuple[str, str]]) -> bool:
        """Request i; True when it completed (a conversation goes on only after a reply)."""
        record: dict[str, Any] = {"request": i, "status": "running",
                                  "prompt_expected": None, "output_expected": None}
        records.append(record)
        p = prompt(i)
        if turns > 1:
            record["conversation"], record["turn"] = divmod(i, turns)
        try:
            sent = p.after(history, ep.chat) if history else p
            record["prompt_expected"], record["output_expected"] = sent.prompt_tokens, p.max_tokens
            await send(session, ep, sent, record)
            record["status"] = "ok"
        except StreamError as exc:
            record["status"], record["error"] = "error", str(exc)
        except asyncio.CancelledError:
            record["status"], record["error"] = "cancelled", "in flight when the load's duration ended"
            raise
        if record["status"] == "ok" and turns > 1:
            history.append((p.prompt if isinstance(p.prompt, str) else "", record["_text"]))
        return record["status"] == "ok"

    async def conversation(c: int) -> None:
        """Conversation c: its turns in order, each sent when the previous reply has ended (one
        request when the load has no turns)."""
        history: list[tuple[str, str]] = []
        for i in range(c * turns, min((c + 1) * turns, limit)):
            if time.perf_counter_ns() >= deadline or not await one(i, history):
                return

    n_conversations = math.ceil(limit / turns)
    gc.collect()
    gc.freeze()  # what exists now (prompts, tokenizer) is never scanned again during the load
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        monitor = asyncio.create_task(_lag_monitor(lags))
        tasks: list[asyncio.Task[None]] = []
        next_conversation = 0
        if load.get("concurrency"):
            async def worker() -> None:
                nonlocal next_conversation
                while next_conversation < n_conversations and time.perf_counter_ns() < deadline:
                    c = next_conversation
                    next_conversation += 1
                    await conversation(c)

            tasks = [asyncio.create_task(worker())
                     for _ in range(min(load["concurrency"], n_conversations))]
        else:
            gate = asyncio.Semaphore(in_flight) if in_flight else None

            async def gated(c: int) -> None:
                if gate is None:
                    await conversation(c)
                    return
                async with gate:
                    if time.perf_counter_ns() < deadline:
                        await conversation(c)

            gaps = arrival_gaps(load["rate"], load.get("arrival", "poisson"),
                                load.get("burstiness", 1.0), seed)
            start = time.perf_counter()
            at = 0.0
            for c, gap in zip(range(n_conversations), gaps, strict=False):
                at += gap
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter_ns() >= deadline:
                    break
                tasks.append(asyncio.create_task(gated(c)))
        remaining = (deadline - time.perf_counter_ns()) / 1e9 if duration else None
        done, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # a bug in the client itself
        monitor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await monitor
    wall = time.perf_counter_ns() - t0
    cpu = time.process_time() - cpu0
    gc.unfreeze()
    for r in records:
        r["start_ns"] = r.pop("_t0", t0) - t0
        if not ep.defer_count:
            r.pop("_text", None)
            r.pop("_prompt", None)
        if r["status"] == "running":  # never sent: its gate opened after the deadline
            r["status"], r["error"] = "cancelled", "not sent before the load's duration ended"
    records.sort(key=lambda r: r["request"])
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return LoadResult(records, wall, cpu, lags, "uvloop" if loop == "uvloop" else "asyncio", t0)


# -- several client processes -------------------------------------------------------------------
def _share(total: int, parts: int, k: int) -> int:
    """Part k of `total` split as evenly as integers allow."""
    return total // parts + (1 if k < total % parts else 0)


def _child(conn: Any, ep: Endpoint, load: dict[str, Any], prompts: list[Prompt],
           indices: list[int], seed: int, start_ns: int) -> None:
    """One client process: wait for the common start, run its share, send its records back."""
    try:
        async def go() -> LoadResult:
            delay = (start_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            return await run_load(ep, load, lambda i: prompts[i], seed)

        result = run_async(go())
        turns = int(load.get("turns") or 1)
        for r in result.records:
            r["request"] = indices[r["request"]]
            if turns > 1:
                r["conversation"], r["turn"] = divmod(r["request"], turns)
        conn.send(("ok", result))
    except BaseException as exc:  # the parent names the failure instead of waiting forever
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_load_processes(ep: Endpoint, load: dict[str, Any], prompts: Callable[[int], Prompt],
                       seed: int, processes: int) -> LoadResult:
    """Run a load from several client processes (for loads one process cannot drive; GuideLLM
    does the same): the streams (closed loop) or the rate (open loop: each process a Poisson
    stream of rate/N, whose sum is Poisson at the rate) are split evenly, and whole conversations
    go to one process. All start at one instant of the shared monotonic clock; the raw records
    are merged, stamped with the process that sent them, so every percentile is computed over
    all requests, never from per-process percentiles."""
    import multiprocessing

    count = load.get("requests")
    if count is None:
        raise StreamError("several client processes need a request count (nN), not a duration")
    turns = int(load.get("turns") or 1)
    conversations = math.ceil(count / turns)
    ready = [prompts(i) for i in range(count)]
    count_tokens = ep.count_tokens  # a tokenizer stays in this process: replies are counted here
    child_ep = replace(ep, count_tokens=None, defer_count=count_tokens is not None)
    ctx = multiprocessing.get_context("spawn")
    start_ns = time.perf_counter_ns() + int(2e9)  # the children import aiohttp meanwhile
    jobs = []
    for k in range(processes):
        mine = [i for c in range(k, conversations, processes)
                for i in range(c * turns, min((c + 1) * turns, count))]
        if not mine:
            continue
        share = dict(load, requests=len(mine))
        if load.get("concurrency"):
            share["concurrency"] = max(1, _share(load["concurrency"], processes, k))
        else:
            share["rate"] = load["rate"] / processes
            if load.get("max_concurrency"):
                share["max_concurrency"] = max(1, _share(load["max_concurrency"], processes, k))
        here, there = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(there, child_ep, share, [ready[i] for i in mine], mine,
                                                seed + k, start_ns), daemon=True)
        proc.start()
        there.close()
        jobs.append((k, proc, here))
    results: list[tuple[int, LoadResult]] = []
    errors = []
    for k, proc, here in jobs:
        try:
            status, payload = here.recv()
        except EOFError:
            status, payload = "error", f"client process {k} exited with code {proc.exitcode}"
        proc.join(timeout=30)
        if status == "ok":
            results.append((k, payload))
        else:
            errors.append(payload)
    if errors:
        raise StreamError(f"a client process failed: {errors[0]}")
    return _merge(results, count_tokens, processes)


def _merge(results: list[tuple[int, LoadResult]], count_tokens: Callable[[str], int] | None,
           processes: int) -> LoadResult:
    """One LoadResult from the processes': records on one time base (the earliest start)."""
    t0 = min(r.started_ns for _, r in results)
    records: list[dict[str, Any]] = []
    for k, result in results:
        for r in result.records:
            r["client_process"] = k
            r["start_ns"] = r["start_ns"] + result.started_ns - t0
            text, prompt = r.pop("_text", None), r.pop("_prompt", None)
            if r.get("counted_by") == "deferred" and count_tokens is not None:
                r["output_tokens"] = count_tokens(text or "")
                if prompt is not None:
                    r["prompt_tokens"] = count_tokens(prompt)
                r["counted_by"] = "tokenizer"
            records.append(r)
    records.sort(key=lambda r: r["request"])
    wall = max(r.started_ns + r.wall_ns for _, r in results) - t0
    per_process = [r.client() for _, r in sorted(results, key=lambda kr: kr[0])]
    merged = LoadResult(records, wall, sum(r.cpu_s for _, r in results),
                        [lag for _, r in results for lag in r.lag_ms], results[0][1].loop, t0)
    merged.processes = per_process
    merged.requested_processes = processes
    return merged
