"""How much load tokbench's serving client can drive, and how true its timestamps are: the
client alone against benchmarks/serving_stub.py (a server with a fixed, known token schedule),
beside `vllm bench serve` against the same stub, back to back.

    python benchmarks/client_capacity.py --streams 1,64,256,1024 --rounds 3 [--out capacity.json]
    python benchmarks/client_capacity.py --streams 1024 --client-procs 1,2 --skip-vllm

`--client-procs 1,2` also runs tokbench with its streams spread over 2 client processes
(`--client-procs 2`), to show what a second process adds when one saturates.

For each number of concurrent streams C, each round runs `tokbench run --backend openai -w
cC:in32:outO:nN:warm0` and `vllm bench serve --max-concurrency C --num-prompts N` (the order
alternates), N = 4·C (at least 32, at most 4096). The stub sends the first token TTFT ms after a
request arrives and one token every ITL ms after that, one token per SSE chunk, so:
- sustained requests/s and chunks/s (= output tokens/s here) show where a client saturates;
- TTFT − TTFT_stub and ITL − ITL_stub are each client's timing error (loopback delivery and
  event-loop lateness): near 0 below saturation, growing once the client cannot keep up.
For tokbench the stub's record (`--record`) also gives each chunk's true send time, joined by
the X-Request-Id header: stamp lag = when the client stamped a chunk − when the stub wrote it,
the client's own timing error, free of the stub's lateness. Also reported: tokbench's CPU share
of its core and its event-loop lag p99.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_bench import run_vllm_bench

ROOT = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_stub(port: int, ttft_ms: float, itl_ms: float, record: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "serving_stub.py"), "--port",
                             str(port), "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
                             "--record", str(record)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the stub did not start")


def stop_stub(stub: subprocess.Popen, record: Path) -> dict[str, dict[str, Any]]:
    """Stop the stub and read what it did, per request id."""
    stub.send_signal(signal.SIGTERM)
    stub.wait(timeout=60)
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return {str(r["id"]): r for r in rows}


def delivery(reqs: list[dict[str, Any]], served: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The client's timing error, chunk by chunk: when it stamped a chunk minus when the stub
    wrote it (both wall clock on one machine), and how long a request took to reach the stub."""
    lags, sends = [], []
    for r in reqs:
        s = served.get(r["request_id"])
        if not s:
            continue
        sends.append((s["arrival"] - r["started_at"]) * 1e3)
        for ns, sent in zip(r["chunk_ns"], s["sent"], strict=False):
            lags.append((r["started_at"] + ns / 1e9 - sent) * 1e3)
    return {"stamp_lag_p50": float(np.percentile(lags, 50)), "stamp_lag_p99": float(np.percentile(lags, 99)),
            "send_ms_p50": float(np.percentile(sends, 50)), "send_ms_p99": float(np.percentile(sends, 99)),
            "matched": len(sends)}


def tokbench_point(url: str, c: int, n: int, out_len: int, args: argparse.Namespace, store: Path,
                   served: Any, procs: int = 1) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "harness.cli", "--store", str(store), "run", "--backend",
                    "openai", "--url", url, "-m", "stub", "-w", f"c{c}:in32:out{out_len}:n{n}:warm0",
                    "--client-procs", str(procs), "--no-bandwidth", "--timeout", "1800"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    from harness.common.serving import request_latencies
    from results.store import Store

    db = Store(store, create=False)
    run = db.resolve_run("last")
    reqs = [r for r in db.requests(run) if r["status"] == "ok"]
    trial = db.trials(run)[0]
    client = db.cases(run)[0]["client"][0]
    wall = trial["duration_ns"] / 1e9
    lat = [request_latencies(r) for r in reqs]
    ttft_err = np.array([x["ttft"] - args.ttft_ms for x in lat])
    itl_err = np.array([g - args.itl_ms for x in lat for g in x["itl"]])
    return {"completed": len(reqs), "failed": len(db.requests(run)) - len(reqs),
            "req_s": len(reqs) / wall, "chunks_s": sum(len(r["chunk_ns"]) for r in reqs) / wall,
            "ttft_err_p50": float(np.percentile(ttft_err, 50)),
            "ttft_err_p99": float(np.percentile(ttft_err, 99)),
            "itl_err_p50": float(np.percentile(itl_err, 50)),
            "itl_err_p99": float(np.percentile(itl_err, 99)),
            "cpu_share": client["cpu_share"], "loop_lag_p99_ms": client["loop_lag_p99_ms"],
            "processes": client.get("processes", 1),
            **delivery(reqs, served())}


def vllm_point(url: str, c: int, n: int, out_len: int, args: argparse.Namespace, tokenizer: Path,
               out: Path) -> dict[str, Any]:
    res = run_vllm_bench(url.removesuffix("/v1"), "stub", str(tokenizer), 32, out_len, n, c, None, out,
                         timeout_s=1800)
    return {"completed": res["completed"], "failed": res.get("failed", 0),
            "req_s": res["request_throughput"], "chunks_s": res["output_throughput"],
            "ttft_err_p50": res["median_ttft_ms"] - args.ttft_ms,
            "ttft_err_p99": res["p99_ttft_ms"] - args.ttft_ms,
            "itl_err_p50": res["median_itl_ms"] - args.itl_ms,
            "itl_err_p99": res["p99_itl_ms"] - args.itl_ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,64,256,1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--itl-ms", type=float, default=5.0)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--skip-vllm", action="store_true", help="tokbench's client alone")
    ap.add_argument("--client-procs", default="1", help="tokbench client processes, e.g. 1,2")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tokbench-capacity-"))
    tokenizer = tmp / "tiny"  # vllm bench serve needs a tokenizer even for random prompts
    subprocess.run([sys.executable, "-m", "harness.cli", "models", "tiny", "--arch", "llama",
                    "--format", "hf", str(tokenizer)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    port = _port()
    url = f"http://127.0.0.1:{port}/v1"
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    record = tmp / "stub.jsonl"
    for c in (int(s) for s in args.streams.split(",")):
        n = min(max(32, 4 * c), 4096)
        procs = [int(p) for p in args.client_procs.split(",")]
        names = [f"tokbench×{p}" if p > 1 else "tokbench" for p in procs]
        point = results.setdefault(str(c), {**{name: [] for name in names}, "vllm": []})
        for i in range(args.rounds):
            order = [*names, "vllm"]
            order = order[i % len(order):] + order[:i % len(order)]  # rotate who goes first
            for who in order:
                if who == "vllm" and args.skip_vllm:
                    continue
                stub = start_stub(port, args.ttft_ms, args.itl_ms, record)  # a fresh one per point
                try:
                    got = (tokbench_point(url, c, n, args.output_len, args, tmp / "results.db",
                                          lambda stub=stub: stop_stub(stub, record),
                                          procs[names.index(who)])
                           if who.startswith("tokbench") else
                           vllm_point(url, c, n, args.output_len, args, tokenizer, tmp / f"v{c}-{i}"))
                finally:
                    if stub.poll() is None:
                        stub.send_signal(signal.SIGTERM)
                        stub.wait(timeout=60)
                point[who].append(got)
                shown = {k: round(v, 3) for k, v in got.items()}
                print(f"C={c} round {i + 1} {who}: {json.dumps(shown)}", flush=True)
    print("\nmedian [min, max] over rounds")
    for c, point in results.items():
        for who, runs in point.items():
            if not runs:
                continue
            cells = []
            for key in ("req_s", "chunks_s", "ttft_err_p99", "itl_err_p99", "stamp_lag_p99"):
                vals = [r[key] for r in runs if key in r]
                if not vals:
                    continue
                cells.append(f"{key} {statistics.median(vals):.2f} [{min(vals):.2f}, {max(vals):.2f}]")
            print(f"C={c:>5} {who:9} " + "  ".join(cells))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
