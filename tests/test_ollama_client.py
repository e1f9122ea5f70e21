"""backends.ollama_client against a replay server.

Ollama is not installed here: these run the adapter against recorded transcripts of its documented
wire format (tests/fixtures/ollama/README.md). A real aiohttp server on 127.0.0.1 replays a
transcript line by line, 5 ms apart, and keeps what each request posted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backends.ollama_client import ollama_models, ollama_root, stream_ollama
from backends.openai_client import Endpoint, Prompt, StreamError

FIXTURES = Path(__file__).parent / "fixtures" / "ollama"
GAP_S = 0.005


def transcript(name: str) -> list[bytes]:
    """A transcript's lines, each with its newline."""
    return (FIXTURES / name).read_bytes().splitlines(keepends=True)


def final_line(lines: list[bytes]) -> dict[str, Any]:
    return json.loads(lines[-1])


def _line_text(d: dict[str, Any], chat: bool) -> str:
    if chat:
        m = d.get("message") or {}
        return (m.get("content") or "") + (m.get("thinking") or "")
    return (d.get("response") or "") + (d.get("thinking") or "")


def content_lines(lines: list[bytes], chat: bool) -> int:
    return sum(1 for line in lines if _line_text(json.loads(line), chat))


def reply_text(lines: list[bytes], chat: bool) -> str:
    return "".join(_line_text(json.loads(line), chat) for line in lines)


@dataclass
class Replay:
    """What the server answers: a status and body, or NDJSON pieces written GAP_S apart."""

    pieces: list[bytes] = field(default_factory=list)
    status: int = 200
    body: bytes = b""
    posted: list[tuple[str, Any, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json() if request.method == "POST" else None
        self.posted.append((request.path, request.headers.copy(), payload))  # case-insensitive
        if self.status != 200 or not self.pieces:
            return web.Response(status=self.status, body=self.body, content_type="application/json")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for piece in self.pieces:
            await asyncio.sleep(GAP_S)
            await resp.write(piece)
        await resp.write_eof()
        return resp


async def served(replay: Replay, client: Callable[[str, aiohttp.ClientSession], Awaitable[Any]]) -> Any:
    """Run `client(base_url, session)` against a replay server on a free port."""
    app = web.Application()
    for path in ("/api/generate", "/api/chat"):
        app.router.add_post(path, replay.handle)
    app.router.add_get("/api/tags", replay.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await client(f"http://127.0.0.1:{port}/v1", session)
    finally:
        await runner.cleanup()


PROMPT = Prompt(prompt="Why is the sky blue?", prompt_tokens=7, max_tokens=8)


def run(replay: Replay, chat: bool = False, prompt: Prompt = PROMPT,
        extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request against the replay; the record, or StreamError raised with it attached."""
    record: dict[str, Any] = {}

    async def client(base_url: str, session: aiohttp.ClientSession) -> None:
        ep = Endpoint(base_url=base_url, model="llama3.2", chat=chat, extra_body=extra_body or {})
        try:
            await stream_ollama(session, ep, prompt, record)
        except StreamError as exc:
            exc.record = record  # type: ignore[attr-defined]
            raise

    asyncio.run(served(replay, client))
    return record


def expected_timings(final: dict[str, Any]) -> dict[str, Any]:
    return {"source": "ollama", "prompt_ms": final["prompt_eval_duration"] / 1e6,
            "decode_ms": final["eval_duration"] / 1e6, "load_ms": final["load_duration"] / 1e6,
            "total_ms": final["total_duration"] / 1e6, "prompt_n": final["prompt_eval_count"],
            "decode_n": final["eval_count"], "done_reason": final["done_reason"]}


def check_record(record: dict[str, Any], lines: list[bytes], chat: bool) -> None:
    final = final_line(lines)
    assert record["output_tokens"] == final["eval_count"]
    assert record["prompt_tokens"] == final["prompt_eval_count"]
    assert record["counted_by"] == "usage"
    assert record["server_timings"] == expected_timings(final)
    assert set(record["server_timings"]) == {"source", "prompt_ms", "decode_ms", "load_ms", "total_ms",
                                             "prompt_n", "decode_n", "done_reason"}
    n = content_lines(lines, chat)
    chunks = record["chunk_ns"]
    assert len(chunks) == n
    assert chunks == sorted(chunks)
    assert 0 < record["ttft_ns"] < record["e2el_ns"]
    assert (record["ttft_ns"], record["e2el_ns"]) == (chunks[0], chunks[-1])
    # lines written 5 ms apart arrive apart: each was stamped on its own arrival
    assert record["e2el_ns"] - record["ttft_ns"] >= (n - 1) * 4_000_000
    assert record["_t0"] > 0 and record["started_at"] > 0
    assert record["_text"] == reply_text(lines, chat)  # kept: a conversation's next turn carries it


def test_generate_stream_parsed_and_request_body() -> None:
    lines = transcript("generate_stream.ndjson")
    replay = Replay(pieces=lines)
    record = run(replay, extra_body={"options": {"temperature": 0, "num_predict": 999}, "keep_alive": "5m"})
    check_record(record, lines, chat=False)
    assert record["server_timings"]["prompt_ms"] == 21.312
    assert record["server_timings"]["decode_ms"] == 74.338
    assert (record["output_tokens"], record["prompt_tokens"]) == (8, 7)

    [(path, headers, body)] = replay.posted
    assert path == "/api/generate"  # the root, with base_url's /v1 stripped
    assert headers["X-Request-Id"] == record["request_id"]
    assert body == {"model": "llama3.2", "prompt": PROMPT.prompt, "raw": True, "stream": True,
                    "keep_alive": "5m", "options": {"temperature": 0, "num_predict": PROMPT.max_tokens}}


def test_generate_templated_reply_with_context() -> None:
    lines = transcript("generate_stream_templated.ndjson")
    record = run(Replay(pieces=lines))
    check_record(record, lines, chat=False)
    assert len(final_line(lines)["context"]) == 30  # the context array is ignored, not an error


def test_chat_stream_parsed_and_request_body() -> None:
    lines = transcript("chat_stream.ndjson")
    replay = Replay(pieces=lines)
    record = run(replay, chat=True)
    check_record(record, lines, chat=True)
    # the final line's message has empty content: it is no chunk; eval_count is the server's count
    assert len(record["chunk_ns"]) == 9 and record["output_tokens"] == 10

    [(path, _headers, body)] = replay.posted
    assert path == "/api/chat"
    assert body == {"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT.prompt}],
                    "stream": True, "options": {"num_predict": PROMPT.max_tokens}}


def test_chat_thinking_counts_as_content() -> None:
    lines = transcript("chat_thinking_stream.ndjson")
    record = run(Replay(pieces=lines), chat=True)
    check_record(record, lines, chat=True)
    assert len(record["chunk_ns"]) == 7  # 5 thinking lines, 2 answer lines


def test_lines_split_across_reads() -> None:
    lines = transcript("generate_stream.ndjson")
    pieces = [part for line in lines for part in (line[:10], line[10:])]  # every line in two writes
    record = run(Replay(pieces=pieces))
    check_record(record, lines, chat=False)


def test_http_404_model_not_found() -> None:
    body = (FIXTURES / "generate_error.json").read_bytes()
    with pytest.raises(StreamError, match=r"^HTTP 404: ") as err:
        run(Replay(status=404, body=body))
    assert "model 'llama3.2' not found" in str(err.value)


@pytest.mark.parametrize(("name", "chat"), [("generate_midstream_error.ndjson", False),
                                            ("chat_midstream_error.ndjson", True)])
def test_error_mid_stream(name: str, chat: bool) -> None:
    with pytest.raises(StreamError, match="server error in stream: an error was encountered") as err:
        run(Replay(pieces=transcript(name)), chat=chat)
    assert len(err.value.record["chunk_ns"]) == 4  # what had arrived is kept


def test_truncated_stream() -> None:
    lines = transcript("generate_stream.ndjson")[:-1]  # no done line
    with pytest.raises(StreamError, match=r"the stream broke off after 8 chunks"):
        run(Replay(pieces=lines))


def test_stream_cut_mid_line() -> None:
    lines = transcript("generate_stream.ndjson")
    with pytest.raises(StreamError, match="broke off mid-line after 8 chunks"):
        run(Replay(pieces=[*lines[:-1], lines[-1][:40]]))


def test_malformed_line() -> None:
    lines = transcript("generate_stream.ndjson")
    with pytest.raises(StreamError, match="malformed NDJSON: 'not json'"):
        run(Replay(pieces=[*lines[:2], b"not json\n", *lines[2:]]))


def test_no_content() -> None:
    lines = transcript("generate_stream.ndjson")[-1:]  # only the done line, its response empty
    with pytest.raises(StreamError, match="without generated content"):
        run(Replay(pieces=lines))


def test_omitted_counts_are_not_guessed() -> None:
    # Ollama's metrics are `omitempty`: a zero prompt_eval_count/duration is absent from the line.
    lines = transcript("chat_stream.ndjson")
    final = final_line(lines)
    del final["prompt_eval_count"], final["prompt_eval_duration"]
    record = run(Replay(pieces=[*lines[:-1], json.dumps(final).encode() + b"\n"]), chat=True)
    assert record["prompt_tokens"] is None
    assert "prompt_n" not in record["server_timings"] and "prompt_ms" not in record["server_timings"]
    assert record["server_timings"]["decode_n"] == 10


def test_token_id_prompt_refused() -> None:
    with pytest.raises(StreamError, match="not token ids"):
        run(Replay(pieces=transcript("generate_stream.ndjson")),
            prompt=Prompt(prompt=[1, 2, 3], prompt_tokens=3, max_tokens=8))


def test_models_from_tags() -> None:
    replay = Replay(body=(FIXTURES / "tags.json").read_bytes())
    names = asyncio.run(served(replay, lambda url, session: ollama_models(session, url)))
    assert names == ["deepseek-r1:latest", "llama3.2:latest"]
    assert replay.posted[0][0] == "/api/tags"


def test_root_from_base_url() -> None:
    assert ollama_root("http://h:11434/v1") == "http://h:11434"
    assert ollama_root("http://h:11434/v1/") == "http://h:11434"
    assert ollama_root("http://h:11434") == "http://h:11434"
    assert ollama_root("http://h:11434/") == "http://h:11434"


# -- the whole path: `tokbench run --backend ollama` against a replaying server in a thread ---------
class ThreadedReplay:
    """The replay server on its own event loop in a thread, for a tokbench run (whose worker is
    another process): every /api/generate gets the transcript, /api/tags the model list."""

    def __init__(self, generate: list[bytes]) -> None:
        import threading

        self.replay = Replay(pieces=generate)
        self.tags = Replay(body=(FIXTURES / "tags.json").read_bytes())
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/api/generate", self.replay.handle)
        app.router.add_get("/api/tags", self._tags)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()

    async def _tags(self, request: web.Request) -> web.Response:
        return web.Response(body=self.tags.body, content_type="application/json")

    def __enter__(self) -> ThreadedReplay:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_tokbench_run_with_the_ollama_backend_stores_server_timings(
        gemma_path: Path, store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokbench run against the replay (a transcript, not a live Ollama): every request keeps
    Ollama's own timings beside the client's, and the output sets them side by side."""
    from harness.cli.main import main
    from results.store import Store

    lines = transcript("generate_stream.ndjson")
    final = final_line(lines)
    with ThreadedReplay(lines) as server:
        rc = main(["--store", str(store_path), "run", "--no-bandwidth", "--backend", "ollama",
                   "--url", f"http://127.0.0.1:{server.port}", "-m", "llama3.2:latest",
                   "--tokenizer", str(gemma_path), "-w", "c2:in16:out8:n4:warm1"])
        posted = [p for path, _, p in server.replay.posted if path == "/api/generate"]
    out = capsys.readouterr().out
    assert rc == 0, out
    db = Store(store_path, create=False)
    requests = db.requests(db.resolve_run("last"))
    assert len(requests) == 4 and all(r["status"] == "ok" for r in requests)
    for r in requests:
        assert r["server_timings"] == {**expected_timings(final)}
        assert r["output_tokens"] == final["eval_count"] and r["counted_by"] == "usage"
        assert r["ttft_ns"] < r["e2el_ns"]
    # probe + warm-up + 4 timed requests, each a raw prompt capped by num_predict
    assert len(posted) == 6 and all(p["raw"] and p["options"]["num_predict"] in (2, 8) for p in posted)
    assert "the server's own timings (ollama, 4 requests)" in " ".join(out.split())
