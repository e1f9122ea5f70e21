"""A fake OpenAI-compatible streaming server, for benchmarking a LOAD CLIENT only.

Benchmark-only code: it never runs a model and must never back a correctness test. It answers
/v1/completions and /v1/chat/completions on a fixed, known schedule so that what a client such as
`vllm bench serve` measures can be compared with what the server did:

    python benchmarks/serving_stub.py --port 8123 [--host 127.0.0.1] [--ttft-ms 20] [--itl-ms 5] \
        [--model stub] [--record /tmp/stub/server.jsonl]

Behaviour, per request (arrival = the moment the handler starts, before the body is read):
- the output is always exactly `max_tokens` tokens (`max_completion_tokens` wins on chat; default
  16); EOS is ignored by design, so `ignore_eos` and friends change nothing;
- streamed: headers at once, then ONE token per SSE event (and per HTTP chunk), the k-th (k = 0,
  1, ...) written at arrival + ttft + k*itl on an absolute schedule (a loop timer set for that
  instant, so lateness does not accumulate; when the loop runs late, every token then due goes out
  in one write). Chat sends its role-only delta chunk in the same write as the first content
  chunk. After the last content chunk, in the same write: a chunk with empty text and
  `finish_reason: "length"`, then, if `stream_options.include_usage`, a usage chunk
  (`choices: []`), then `data: [DONE]`;
- not streamed: one JSON body with `usage`, sent at arrival + ttft + (max_tokens - 1)*itl;
- prompt_tokens = len(prompt) for a list of token ids, otherwise the number of whitespace-separated
  words (of all message contents, on chat): it is not a tokenizer count.

GET /v1/models lists the one model; GET /health answers 200. Anything else is a 404.

--record FILE: on shutdown (SIGINT/SIGTERM) writes one JSON line per request: `id` (the
x-request-id header, or a counter), `path`, `stream`, `prompt_tokens`, `max_tokens`, `arrival`
(time.time()), `sent` (time.time() just after each content chunk was handed to the transport),
`end` (after the final write), `arrival_mono` (time.monotonic(), the clock of time.perf_counter()
on Linux, so it lines up with a client's perf_counter stamps) and `error` (null, or why the stream
stopped early). Wall times are derived from monotonic stamps through one offset taken at start-up.

Efficiency: one event loop; chunk bytes (HTTP chunk framing included) built once per request and
written straight to the transport from a timer callback, with no task wake-up per token; no access
log; a listen backlog large enough for 1,024 connections arriving at once. On a 2-core VM a
loopback send() costs about 20 us, which dominates: the stub tops out near 40k chunks/s on one
core, and serving ~12k chunks/s costs it about half a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import sys
import time
from pathlib import Path

from aiohttp import web

DEFAULT_MAX_TOKENS = 16


class Stub:
    def __init__(self, model: str, ttft_s: float, itl_s: float, record: Path | None) -> None:
        self.model = model
        self.ttft_s = ttft_s
        self.itl_s = itl_s
        self.record_path = record
        self.records: list[dict] | None = [] if record is not None else None
        self.counter = itertools.count()
        # one offset maps loop.time() (time.monotonic) onto time.time()
        self.wall_offset = time.time() - time.monotonic()
        self.models_body = json.dumps(
            {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "stub", "root": model}]}
        ).encode()

    # ---- plain endpoints -------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.models_body, content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    # ---- generation -----------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        seq = next(self.counter)
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body is not a JSON object")
        n = body.get("max_completion_tokens") if chat else None
        if n is None:
            n = body.get("max_tokens")
        if n is None:
            n = DEFAULT_MAX_TOKENS
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return _error(400, "max_tokens must be a positive integer")
        prompt_tokens = _count_prompt(body.get("messages") if chat else body.get("prompt"), chat)
        stream = bool(body.get("stream"))
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        model = body.get("model") or self.model
        if not isinstance(model, str):
            model = self.model
        rid = f"{'chatcmpl' if chat else 'cmpl'}-stub{seq}"
        created = int(time.time())
        rec = None
        if self.records is not None:
            rec = {
                "id": request.headers.get("x-request-id", str(seq)),
                "path": request.path,
                "stream": stream,
                "prompt_tokens": prompt_tokens,
                "max_tokens": n,
                "arrival_mono": t0,
                "sent": [],
                "end": None,
                "error": None,
            }
            self.records.append(rec)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}

        if not stream:
            due = t0 + self.ttft_s + (n - 1) * self.itl_s
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x" * n},
                    "finish_reason": "length",
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": "x" * n, "logprobs": None, "finish_reason": "length"}
                obj = "text_completion"
            out = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
            out["usage"] = usage
            resp = web.Response(body=json.dumps(out).encode(), content_type="application/json")
            if rec is not None:
                rec["end"] = loop.time()
            return resp

        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion"}
        head.update(created=created, model=model)
        if chat:
            content = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
            finish = {"index": 0, "delta": {}, "finish_reason": "length"}
            role = _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "finish_reason": None}]})
        else:
            content = {"index": 0, "text": "x", "logprobs": None, "finish_reason": None}
            finish = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
            role = b""
        chunk = _sse({**head, "choices": [content]})
        tail = _sse({**head, "choices": [finish]})
        if include_usage:
            tail += _sse({**head, "choices": [], "usage": usage})
        tail += b"data: [DONE]\n\n"

        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        resp.enable_chunked_encoding()
        writer = await resp.prepare(request)
        writer.send_headers()  # the status line and headers go out at once, as a real server's do
        transport = request.transport
        if transport is None or transport.is_closing():
            if rec is not None:
                rec["error"] = "ConnectionResetError"
                rec["end"] = loop.time()
            return resp
        # Body bytes are written straight to the transport, each token its own HTTP chunk, by a
        # timer callback: no task wake-up per token. aiohttp writes the closing 0-length chunk.
        stream = _Stream(
            loop=loop,
            transport=transport,
            start=t0 + self.ttft_s,
            itl=self.itl_s,
            n=n,
            first=_frame(role + chunk) if role else _frame(chunk),
            chunk=_frame(chunk),
            tail=_frame(tail),
            sent=rec["sent"] if rec is not None else None,
        )
        try:
            await stream.run()
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError) as exc:
            stream.cancel()
            if rec is not None:
                rec["error"] = type(exc).__name__
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if rec is not None:
                rec["end"] = loop.time()
        return resp

    # ---- record ---------------------------------------------------------------------------------

    async def write_record(self, app: web.Application) -> None:
        if self.records is None or self.record_path is None:
            return
        off = self.wall_offset
        with self.record_path.open("w", encoding="utf-8") as f:
            for r in self.records:
                line = {
                    "id": r["id"],
                    "path": r["path"],
                    "stream": r["stream"],
                    "prompt_tokens": r["prompt_tokens"],
                    "max_tokens": r["max_tokens"],
                    "arrival": r["arrival_mono"] + off,
                    "sent": [s + off for s in r["sent"]],
                    "end": None if r["end"] is None else r["end"] + off,
                    "arrival_mono": r["arrival_mono"],
                    "error": r["error"],
                }
                f.write(json.dumps(line) + "\n")


class _Stream:
    """The content chunks of one streamed response, written by loop timers on the fixed schedule.

    Token k is due at start + k*itl. Each timer writes every token then due (one, unless the loop
    ran late; several events in one write then, still one token per SSE event) and re-arms
    itself for the next. The last write also carries the finish, usage and [DONE] events.
    """

    __slots__ = ("chunk", "done", "first", "handle", "itl", "k", "loop", "n", "sent", "start", "tail",
                 "transport")  # fmt: skip

    def __init__(self, *, loop, transport, start, itl, n, first, chunk, tail, sent) -> None:
        self.loop = loop
        self.transport = transport
        self.start = start
        self.itl = itl
        self.n = n
        self.first = first
        self.chunk = chunk
        self.tail = tail
        self.sent = sent
        self.k = 0
        self.done: asyncio.Future = loop.create_future()
        self.handle: asyncio.TimerHandle | None = None

    def run(self) -> asyncio.Future:
        self.handle = self.loop.call_at(self.start, self._fire)
        return self.done

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def _fire(self) -> None:
        self.handle = None
        if self.done.done():
            return
        tr = self.transport
        if tr.is_closing():
            self.done.set_exception(ConnectionResetError("client went away"))
            return
        now = self.loop.time()
        k, n, itl = self.k, self.n, self.itl
        due = min(n, int((now - self.start) / itl) + 1) if itl > 0 else n
        due = max(due, k + 1)
        data = self.chunk * (due - k)
        if k == 0:
            data = self.first + data[len(self.chunk) :]
        if due == n:
            data += self.tail
        tr.write(data)
        if self.sent is not None:
            t = self.loop.time()
            self.sent.extend([t] * (due - k))
        self.k = due
        if due == n:
            self.done.set_result(None)
        else:
            self.handle = self.loop.call_at(self.start + due * itl, self._fire)


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": status}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _count_prompt(prompt: object, chat: bool) -> int:
    """Token ids count one each; text counts its whitespace-separated words."""
    if chat:
        words = 0
        for m in prompt if isinstance(prompt, list) else []:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                words += len(c.split())
            elif isinstance(c, list):
                words += sum(len(p.get("text", "").split()) for p in c if isinstance(p, dict))
        return words
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if len(prompt) == 1:
            return _count_prompt(prompt[0], chat)
        return sum(_count_prompt(p, chat) for p in prompt)
    if isinstance(prompt, str):
        return len(prompt.split())
    return 0


def build_app(model: str, ttft_s: float, itl_s: float, record: Path | None) -> web.Application:
    stub = Stub(model, ttft_s, itl_s, record)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/models", stub.models)
    app.router.add_get("/health", stub.health)
    app.router.add_post("/v1/completions", stub.completions)
    app.router.add_post("/v1/chat/completions", stub.chat)
    app.on_cleanup.append(stub.write_record)
    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--model", default="stub")
    p.add_argument("--record", type=Path, default=None, help="JSONL of server-side timestamps, on exit")
    a = p.parse_args(argv)
    if a.ttft_ms < 0 or a.itl_ms < 0:
        p.error("--ttft-ms and --itl-ms must be >= 0")
    app = build_app(a.model, a.ttft_ms / 1000.0, a.itl_ms / 1000.0, a.record)
    gc.freeze()  # start-up objects never need scanning again

    def ready(msg: str) -> None:
        print(f"serving_stub: http://{a.host}:{a.port} model={a.model} ttft={a.ttft_ms}ms "
              f"itl={a.itl_ms}ms", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        web.run_app(app, host=a.host, port=a.port, access_log=None, backlog=4096,
                    shutdown_timeout=2.0, print=ready, handle_signals=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
