"""The streaming load client for Ollama's native API (`POST /api/generate`, `POST /api/chat`).

Why not only Ollama's OpenAI-compatible `/v1`: the native API's last line carries the server's
own account of the request (`prompt_eval_duration`, `eval_duration`, `load_duration`,
`total_duration`, in nanoseconds, and the token counts), so a record holds both what the client
saw (TTFT, E2EL from perf_counter_ns) and what the server spent in prompt evaluation and
decoding; the difference is HTTP, queueing and scheduling overhead.

Wire format (Ollama's docs/api.md, docs/api/streaming.mdx and docs/api/errors.mdx; field names
and json tags from api/types.go): the reply is NDJSON (`application/x-ndjson`), one object per
line. Generate lines carry the text in `response` (and `thinking` for thinking models); chat
lines in `message.content` (and `message.thinking`). The last line has `"done": true`,
`done_reason` ("stop", "length"…) and the metrics. The metrics are `omitempty` in Ollama's Go
structs, so a zero value is absent: a missing `prompt_eval_count` leaves `prompt_tokens` None
rather than a guess. Since Ollama 0.30 `prompt_eval_count` counts cached prompt tokens too,
while `prompt_eval_duration` covers only the tokens evaluated. An error before any output
comes as an HTTP status with `{"error": "..."}`; one after output has started comes as a line
`{"error": "..."}` under the 200 already sent, and the stream ends there.

The request: `raw: true` on /api/generate (no chat template, so the prompt's token count is what
was sent; raw replies carry no `context`), `options.num_predict` = the workload's max_tokens
(Ollama has no ignore_eos: a reply may stop early, with done_reason "stop", and its
output_tokens say so). `ep.extra_body` is merged into the body (e.g. `keep_alive`, `think`), its
`options` into the options, num_predict excepted.

Tested against transcripts of the documented wire format only (tests/fixtures/ollama/), not a
live Ollama.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from backends.openai_client import Endpoint, Prompt, StreamError

_loads = json.JSONDecoder().decode

#: The final line's durations (ns) and counts, as server_timings keys.
_TIMINGS = (("prompt_eval_duration", "prompt_ms"), ("eval_duration", "decode_ms"),
            ("load_duration", "load_ms"), ("total_duration", "total_ms"))
_COUNTS = (("prompt_eval_count", "prompt_n"), ("eval_count", "decode_n"))


def ollama_root(base_url: str) -> str:
    """The server root of Ollama's native API, from an OpenAI-style base URL (…/v1) or the root."""
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def ollama_url(ep: Endpoint) -> str:
    return ollama_root(ep.base_url) + ("/api/chat" if ep.chat else "/api/generate")


def ollama_body(ep: Endpoint, p: Prompt) -> dict[str, Any]:
    """The request body; sampling is left at the server's (the model's) defaults."""
    if not isinstance(p.prompt, str):
        raise StreamError("Ollama's native API takes text prompts, not token ids")
    extra = dict(ep.extra_body)
    options = {**(extra.pop("options", None) or {}), "num_predict": p.max_tokens}
    body: dict[str, Any] = {"model": ep.model}
    if ep.chat:
        body["messages"] = p.messages or [{"role": "user", "content": p.prompt}]
    else:
        body["prompt"] = p.prompt
        body["raw"] = True
    body.update(extra)
    body["stream"] = True
    body["options"] = options
    return body


def _content(line: dict[str, Any], chat: bool) -> str:
    """The generated text (answer and thinking) a line carries, "" when none."""
    if chat:
        message = line.get("message") or {}
        return (message.get("content") or "") + (message.get("thinking") or "")
    return (line.get("response") or "") + (line.get("thinking") or "")


def server_timings(final: dict[str, Any]) -> dict[str, Any]:
    """The server's account of a request from its last line; keys it lacks are left out."""
    out: dict[str, Any] = {"source": "ollama"}
    for key, name in _TIMINGS:
        if final.get(key) is not None:
            out[name] = final[key] / 1e6
    for key, name in _COUNTS:
        if final.get(key) is not None:
            out[name] = int(final[key])
    if final.get("done_reason"):
        out["done_reason"] = final["done_reason"]
    return out


async def stream_ollama(session: Any, ep: Endpoint, p: Prompt, record: dict[str, Any]) -> None:
    """Send one streamed request to Ollama's native API on an aiohttp session and fill `record`
    as it goes, as openai_client.stream_request does, plus `server_timings`. Raises StreamError
    on failure. `prompt_tokens` is the server's prompt_eval_count, None where it sent none."""
    import aiohttp  # imported when used: workers of other backends never need it

    body = ollama_body(ep, p)
    request_id = record["request_id"] = str(uuid.uuid4())
    headers = {**ep.headers, "X-Request-Id": request_id}
    t0 = time.perf_counter_ns()
    record["started_at"] = time.time()
    record["_t0"] = t0
    chunks: list[int] = record.setdefault("chunk_ns", [])
    text: list[str] = []
    final: dict[str, Any] | None = None

    def take(line: bytes, now: int, last: bool = False) -> None:
        nonlocal final
        line = line.strip()
        if not line:
            return
        try:
            obj = _loads(line.decode())
        except ValueError:
            if last:  # what came after the last newline: a line cut off with the connection
                raise StreamError(f"the stream broke off mid-line after {len(chunks)} chunks") from None
            raise StreamError(f"malformed NDJSON: {line[:80].decode(errors='replace')!r}") from None
        if type(obj) is not dict:
            raise StreamError(f"malformed NDJSON: a line is {type(obj).__name__}, not an object")
        if obj.get("error"):
            raise StreamError(f"server error in stream: {str(obj['error'])[:200]}")
        piece = _content(obj, ep.chat)
        if piece:
            chunks.append(now)
            text.append(piece)
        if obj.get("done") is True:
            final = obj

    try:
        async with session.post(ollama_url(ep), json=body, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300].replace("\n", " ")
                raise StreamError(f"HTTP {resp.status}: {text or resp.reason}")
            pending = b""  # an incomplete line carried to the next read
            now = 0
            async for data in resp.content.iter_any():
                now = time.perf_counter_ns() - t0
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    take(line, now)
            take(pending, now, last=True)  # a last line without its newline
    except aiohttp.ClientError as exc:
        raise StreamError(f"{type(exc).__name__}: {exc}") from None
    except asyncio.TimeoutError:
        raise StreamError(f"no data for {ep.read_timeout_s:g} s (read timeout)") from None
    if final is None:
        raise StreamError(f"the stream broke off after {len(chunks)} chunks (no line with "
                          '"done": true)')
    if not chunks:
        raise StreamError("the stream ended without generated content")
    record["ttft_ns"], record["e2el_ns"] = chunks[0], chunks[-1]
    record["_text"] = "".join(text)  # the reply: a conversation's next turn carries it
    record["server_timings"] = server_timings(final)
    if final.get("eval_count") is None:
        raise StreamError("the last line has no eval_count (output tokens)")
    record["output_tokens"] = int(final["eval_count"])
    count = final.get("prompt_eval_count")
    record["prompt_tokens"] = int(count) if count is not None else None
    record["counted_by"] = "usage"


async def ollama_models(session: Any, root: str) -> list[str]:
    """The names of the models an Ollama server holds (`GET /api/tags`), for a load-time check.
    `root` may be the server root or an OpenAI-style …/v1 base URL. Raises StreamError."""
    import aiohttp

    try:
        async with session.get(ollama_root(root) + "/api/tags") as resp:
            text = await resp.text()
            if resp.status != 200:
                raise StreamError(f"HTTP {resp.status}: {text[:300].replace(chr(10), ' ') or resp.reason}")
    except aiohttp.ClientError as exc:
        raise StreamError(f"{type(exc).__name__}: {exc}") from None
    try:
        models = _loads(text)["models"]
        return [m["name"] for m in models or []]
    except (ValueError, KeyError, TypeError):
        raise StreamError(f"not an Ollama /api/tags reply: {text[:80]!r}") from None
