"""aiohttp or httpx for the serving client: the same minimal SSE loop in each, against
benchmarks/serving_stub.py, at a concurrency where the client saturates.

    python benchmarks/http_client_choice.py --streams 256 --requests 1024 --rounds 3

Each loop posts a streamed completion, splits the body into lines as it arrives and parses each
`data:` line as JSON, the work the real client does per chunk. Prints chunks/s and the client's
CPU seconds per 1,000 chunks for each library (median [min, max] over rounds, alternating).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "stub", "prompt": list(range(300, 332)), "max_tokens": 64, "stream": True}


async def aiohttp_load(url: str, streams: int, n: int) -> int:
    import aiohttp

    left, chunks = n, 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left, chunks
        while left > 0:
            left -= 1
            async with session.post(url, json=BODY) as resp:
                pending = b""
                async for data in resp.content.iter_any():
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if line.startswith(b"data: {"):
                            json.loads(line[6:])
                            chunks += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(streams)))
    return chunks


async def httpx_load(url: str, streams: int, n: int) -> int:
    import httpx

    left, chunks = n, 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal left, chunks
        while left > 0:
            left -= 1
            async with client.stream("POST", url, json=BODY) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        json.loads(line[6:])
                        chunks += 1

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        await asyncio.gather(*(worker(client) for _ in range(streams)))
    return chunks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--requests", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stub = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "serving_stub.py"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/completions"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    got: dict[str, list[tuple[float, float]]] = {"aiohttp": [], "httpx": []}
    try:
        for i in range(args.rounds):
            for name in (["aiohttp", "httpx"] if i % 2 == 0 else ["httpx", "aiohttp"]):
                load = aiohttp_load if name == "aiohttp" else httpx_load
                cpu0, t0 = time.process_time(), time.perf_counter()
                chunks = asyncio.run(load(url, args.streams, args.requests))
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                got[name].append((chunks / wall, cpu / chunks * 1000))
                print(f"round {i + 1} {name}: {chunks / wall:,.0f} chunks/s, "
                      f"{cpu / chunks * 1e6:.1f} µs CPU per chunk", flush=True)
    finally:
        stub.send_signal(signal.SIGTERM)
        stub.wait(timeout=30)
    for name, rows in got.items():
        rates = [r for r, _ in rows]
        costs = [c * 1000 for _, c in rows]
        print(f"{name:8} {statistics.median(rates):,.0f} chunks/s [{min(rates):,.0f}, {max(rates):,.0f}]"
              f"  {statistics.median(costs):.1f} µs/chunk [{min(costs):.1f}, {max(costs):.1f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
