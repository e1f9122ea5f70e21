"""tokbench's serving figures against `vllm bench serve` on the same vLLM CPU server, in
alternating rounds, so drift of the server or the machine hits both alike.

    python benchmarks/serving_fidelity.py --rounds 4 --concurrency 4 --requests 64 \
        --input-len 128 --output-len 64 [--model HF_DIR] [--out fidelity.json]

One vLLM OpenAI server (VLLM_CPU_KVCACHE_SPACE=1, loopback) serves every round, with prefix
caching off unless --prefix-caching: `vllm bench serve`'s random prompts are runs of
consecutive token ids from a random start, so on a small vocabulary (the tiny model has 512
tokens) many of them repeat, within a run and across rounds, and the prefix cache would serve
them (tokbench's never repeat). The server's /metrics prefix-cache counters are read around
every run and printed, so what the cache served is shown either way. Each round runs
`tokbench run --backend openai --tokenizer MODEL -w cC:inI:outO:nN` (text prompts, as `vllm
bench serve` sends, so the server's tokenization is in both TTFTs) and `vllm bench serve --dataset-name random
--random-input-len I --random-output-len O --num-prompts N --max-concurrency C --ignore-eos`
(the order alternates by round), then compares the medians of TTFT and TPOT and the output
throughput. Prints each round and the median ratio (tokbench ÷ vllm bench) with its range.
Without --model a tiny random-weight llama is written with `tokbench models tiny`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_bench import run_vllm_bench

ROOT = Path(__file__).resolve().parent.parent
NAME = "fidelity-model"
METRICS = (("median_ttft_ms", "TTFT p50 (ms)"), ("median_tpot_ms", "TPOT p50 (ms)"),
           ("output_throughput", "output tok/s"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vllm(model: Path, port: int, max_len: int, log: Path, prefix_caching: bool) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "VLLM_HOST_IP": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", str(max_len),
         "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    for _ in range(1200):  # a cold vLLM CPU start compiles for minutes; bounded at 10 min
        if proc.poll() is not None:
            raise SystemExit(f"vLLM server exited: see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"vLLM server not ready after 10 min: see {log}")


def cache_counters(url: str) -> tuple[float, float]:
    """(prefix-cache queries, hits) in tokens, from the server's Prometheus metrics."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    found = {"queries": 0.0, "hits": 0.0}
    for line in text.splitlines():
        for key in found:
            if line.startswith(f"vllm:prefix_cache_{key}_total"):
                found[key] += float(line.rsplit(" ", 1)[1])
    return found["queries"], found["hits"]


def tokbench_round(url: str, args: argparse.Namespace, store: Path) -> dict:
    workload = f"c{args.concurrency}:in{args.input_len}:out{args.output_len}:n{args.requests}:warm1"
    subprocess.run([sys.executable, "-m", "harness.cli", "--store", str(store), "run",
                    "--backend", "openai", "--url", url, "-m", NAME, "-w", workload,
                    "--tokenizer", str(args.model_dir),
                    "--no-bandwidth"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    from results.frames import serving_frame
    from results.store import Store

    db = Store(store, create=False)
    row = serving_frame(db, db.resolve_run("last")).iloc[0]
    return {"median_ttft_ms": row["ttft_p50"], "median_tpot_ms": row["tpot_p50"],
            "output_throughput": row["output_tps"], "completed": int(row["completed"]),
            "client_cpu_share": (db.cases(db.resolve_run("last"))[0]["client"] or [{}])[0].get("cpu_share")}


def vllm_round(url: str, args: argparse.Namespace, model: Path, out: Path) -> dict:
    res = run_vllm_bench(url.removesuffix("/v1"), NAME, str(model), args.input_len, args.output_len,
                         args.requests, args.concurrency, None, out, timeout_s=1800)
    return {k: res[k] for k, _ in METRICS} | {"completed": res.get("completed"),
                                              "total_input_tokens": res.get("total_input_tokens")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="Hugging Face model directory (default: a tiny llama)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--out", type=Path, help="write every round's figures here (JSON)")
    ap.add_argument("--prefix-caching", action="store_true",
                    help="leave the server's prefix cache on (vLLM's default)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tokbench-fidelity-"))
    model = args.model
    args.model_dir = model
    if model is None:
        model = tmp / "tiny"
        subprocess.run([sys.executable, "-m", "harness.cli", "models", "tiny", "--arch", "llama",
                        "--format", "hf", str(model)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        args.model_dir = model
    port = _port()
    url = f"http://127.0.0.1:{port}/v1"
    server = start_vllm(model, port, args.input_len + args.output_len + 64, tmp / "vllm.log",
                        args.prefix_caching)
    rounds = []
    try:
        for i in range(args.rounds):
            order = ("tokbench", "vllm") if i % 2 == 0 else ("vllm", "tokbench")
            got = {}
            for who in order:
                q0, h0 = cache_counters(url)
                got[who] = (tokbench_round(url, args, tmp / "results.db") if who == "tokbench"
                            else vllm_round(url, args, model, tmp / f"vllm-{i}"))
                q1, h1 = cache_counters(url)
                got[who]["prefix_cache_hit_share"] = (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0
            rounds.append(got)
            print(f"round {i + 1}: " + "  ".join(
                f"{title} {got['tokbench'][k]:.2f} / {got['vllm'][k]:.2f}" for k, title in METRICS)
                + f"  prefix-cache hits {got['tokbench']['prefix_cache_hit_share']:.0%} / "
                f"{got['vllm']['prefix_cache_hit_share']:.0%}", flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    print(f"\n{args.rounds} rounds, c{args.concurrency} in{args.input_len} out{args.output_len} "
          f"n{args.requests}; tokbench ÷ vllm bench serve, median [min, max]:")
    summary = {}
    for key, title in METRICS:
        ratios = [r["tokbench"][key] / r["vllm"][key] for r in rounds]
        summary[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        print(f"  {title:14} {statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "rounds": rounds, "ratios": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
