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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Event-loop lag (oversleep of a 10 ms tick) above which timestamps may be late by that much,
#: and client CPU (share of its one core) above which the client is called the bottleneck.
LAG_WARN_MS = 5.0
CPU_WARN = 0.9


@dataclass
class Prompt:
    """One request's input: text or token ids, and the lengths the workload asked for."""

    prompt: str | list[int]
    prompt_tokens: int  # as the tokenizer counts it (what the server should report)
    max_tokens: int


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

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ("/chat/completions" if self.chat else "/completions")

    def body(self, p: Prompt) -> dict[str, Any]:
        # Sampling is left at the server's defaults, as `vllm bench serve` leaves it.
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}}
        if self.chat:
            body["messages"] = [{"role": "user", "content": p.prompt}]
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


async def stream_request(session: Any, ep: Endpoint, p: Prompt, record: dict[str, Any]) -> None:
    """Send one streamed request on an aiohttp session and fill `record` as it goes (so a
    cancelled request keeps what had arrived). Raises StreamError on failure."""
    import aiohttp  # imported when used: workers of other backends never need it

    request_id = record["request_id"] = str(uuid.uuid4())  # servers log it: records join logs
    headers = {**ep.headers, "X-Request-Id": request_id}
    t0 = time.perf_counter_ns()
    record["started_at"] = time.time()
    record["_t0"] = t0
    chunks: list[int] = record.setdefault("chunk_ns", [])
    text: list[str] = []
    usage: dict[str, Any] | None = None
    ended = False  # [DONE] or a finish_reason: a stream cut by a dying server has neither
    try:
        async with session.post(ep.url, json=ep.body(p), headers=headers) as resp:
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
                    if chunk.get("usage"):  # its own chunk (choices: []), or on the last one
                        usage = chunk["usage"]
                    elif not choices and chunk.get("error"):
                        raise StreamError(f"server error in stream: {str(chunk['error'])[:200]}")
    except aiohttp.ClientError as exc:
        raise StreamError(f"{type(exc).__name__}: {exc}") from None
    except asyncio.TimeoutError:
        raise StreamError(f"no data for {ep.read_timeout_s:g} s (read timeout)") from None
    if not ended:
        raise StreamError(f"the stream broke off after {len(chunks)} chunks (no [DONE], no "
                          "finish_reason)")
    if not chunks:
        raise StreamError("the stream ended without generated content")
    record["ttft_ns"], record["e2el_ns"] = chunks[0], chunks[-1]
    if usage and usage.get("completion_tokens") is not None:
        record["output_tokens"] = int(usage["completion_tokens"])
        record["prompt_tokens"] = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        record["cached_tokens"] = details.get("cached_tokens")
        record["counted_by"] = "usage"
    elif ep.count_tokens is not None:
        record["output_tokens"] = ep.count_tokens("".join(text))
        record["prompt_tokens"] = p.prompt_tokens
        record["counted_by"] = "tokenizer"
    else:
        raise StreamError("the server sent no usage and no tokenizer is known to count the "
                          "output: give --tokenizer")


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    wall_ns: int
    cpu_s: float
    lag_ms: list[float]
    loop: str = "asyncio"

    def client(self) -> dict[str, Any]:
        """The client's own load: CPU share of one core, and event-loop lag."""
        wall_s = self.wall_ns / 1e9
        lags = sorted(self.lag_ms)
        p99 = lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)] if lags else 0.0
        cpu = self.cpu_s / wall_s if wall_s > 0 else 0.0
        return {"loop": self.loop, "cpu_s": round(self.cpu_s, 4), "wall_s": round(wall_s, 4),
                "cpu_share": round(cpu, 4),
                "loop_lag_p99_ms": round(p99, 3), "client_bound": cpu > CPU_WARN,
                "late_timestamps": p99 > LAG_WARN_MS}


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

    async def one(i: int) -> None:
        record: dict[str, Any] = {"request": i, "status": "running",
                                  "prompt_expected": None, "output_expected": None}
        records.append(record)
        p = prompt(i)
        record["prompt_expected"], record["output_expected"] = p.prompt_tokens, p.max_tokens
        try:
            await stream_request(session, ep, p, record)
            record["status"] = "ok"
        except StreamError as exc:
            record["status"], record["error"] = "error", str(exc)
        except asyncio.CancelledError:
            record["status"], record["error"] = "cancelled", "in flight when the load's duration ended"
            raise

    gc.collect()
    gc.freeze()  # what exists now (prompts, tokenizer) is never scanned again during the load
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        monitor = asyncio.create_task(_lag_monitor(lags))
        tasks: list[asyncio.Task[None]] = []
        next_index = 0
        if load.get("concurrency"):
            async def worker() -> None:
                nonlocal next_index
                while next_index < limit and time.perf_counter_ns() < deadline:
                    i = next_index
                    next_index += 1
                    await one(i)

            tasks = [asyncio.create_task(worker()) for _ in range(min(load["concurrency"], limit))]
        else:
            gate = asyncio.Semaphore(in_flight) if in_flight else None

            async def gated(i: int) -> None:
                if gate is None:
                    await one(i)
                    return
                async with gate:
                    if time.perf_counter_ns() < deadline:
                        await one(i)

            gaps = arrival_gaps(load["rate"], load.get("arrival", "poisson"),
                                load.get("burstiness", 1.0), seed)
            start = time.perf_counter()
            at = 0.0
            for i, gap in zip(range(limit), gaps, strict=False):
                at += gap
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter_ns() >= deadline:
                    break
                tasks.append(asyncio.create_task(gated(i)))
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
        if r["status"] == "running":  # never sent: its gate opened after the deadline
            r["status"], r["error"] = "cancelled", "not sent before the load's duration ended"
    records.sort(key=lambda r: r["request"])
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return LoadResult(records, wall, cpu, lags, "uvloop" if loop == "uvloop" else "asyncio")
