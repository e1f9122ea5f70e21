"""The SSE client against a scripted raw HTTP server on 127.0.0.1: what it does when a server
closes kept-alive connections (llama.cpp's llama-server does, between streams)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from backends.openai_client import Endpoint, Prompt, stream_request

_SSE = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in (
    {"choices": [{"text": "Hi", "finish_reason": None}]},
    {"choices": [{"text": " there", "finish_reason": "length"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
)) + b"data: [DONE]\n\n"


async def _read_request(reader: asyncio.StreamReader) -> bool:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return True


async def _exchange() -> tuple[list[dict], list[int]]:
    """Each connection answers its first request and closes on the next without a response, as
    a server that dropped an idle kept-alive connection the client had already written to."""
    served: list[int] = []  # requests answered per connection

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        k = len(served) - 1
        try:
            while await _read_request(reader):
                if served[k]:
                    break  # a second request on this connection: drop it unanswered
                served[k] += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(_SSE) + _SSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ep = Endpoint(f"http://127.0.0.1:{port}/v1", "m")
    records = [{} for _ in range(3)]
    async with server, aiohttp.ClientSession() as session:
        # two at once: two connections, both kept alive in the pool
        await asyncio.gather(*(stream_request(session, ep, Prompt("a b c", 3, 2), r)
                               for r in records[:2]))
        # the next request is written onto a pooled connection the server will drop
        await stream_request(session, ep, Prompt("a b c", 3, 2), records[2])
    return records, served


def test_a_request_dropped_on_a_kept_alive_connection_is_sent_again_on_a_new_one() -> None:
    records, served = asyncio.run(_exchange())
    assert all(r["output_tokens"] == 2 and len(r["chunk_ns"]) == 2 for r in records)
    # the third request reached a server only on a connection of its own: every pooled one
    # could have been stale, so the retry does not take another from the pool
    assert served == [1, 1, 1]
