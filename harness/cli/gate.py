"""`tokbench ab` and `tokbench gate`: the CI regression gate's commands.

`ab` is sequential unless given a fixed trial count (-r, or a suite file's repetitions, without
--budget): it adds ABBA units until each case's verdict is decided or its budget runs out
(harness.gate.sequential), and the report says how many trials it took and why it stopped.

Exit codes: 0 pass or improved; 1 regression; 2 error (bad input, a failed case); 3 inconclusive
(only with --strict); 4 not comparable (hard fingerprint fields differ) or no baseline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from harness.cli.shared import ProgressHooks, add_grid_options, run_doc, run_with_progress, suite_from_args
from harness.common.errors import TokbenchError
from harness.common.files import write_output
from harness.common.toml_files import read_toml
from harness.execution import interrupts
from harness.gate import DEFAULT_FILE

if TYPE_CHECKING:
    from harness.gate.matching import GateReport

AB_REPETITIONS = 10
DEFAULT_BUDGET, DEFAULT_MAX_TRIALS = 300.0, 400  # harness.gate.sequential's, without importing numpy here


def _baseline(ref: str, store_path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None), or (None, why there is no baseline). A file that exists but is not a
    tokbench run is bad input (exit 2), not a missing baseline."""
    path = Path(ref)
    if (path.suffix == ".json" or os.sep in ref) and not path.exists():
        return None, f"no baseline: {ref} does not exist (store one with `tokbench export RUN -o {ref}`)"
    if path.suffix == ".json" or path.is_file():
        return run_doc(ref, store_path), None
    try:
        return run_doc(ref, store_path), None
    except TokbenchError as exc:
        return None, f"no baseline: {exc}"


def _emit(report: GateReport, args: argparse.Namespace, console: Console) -> int:
    from reports.gate import to_json, to_junit, to_markdown, to_rich, verdict_text

    console.print(to_rich(report))
    shown = set()
    for entry in report.entries:
        seq = entry.comparison.sequential if entry.comparison is not None else None
        if seq and entry.case not in shown:
            shown.add(entry.case)
            console.print(f"{entry.case}: {seq['trials']} trials per arm, stopped: {seq['stopped']}",
                          highlight=False, soft_wrap=True, markup=False)
    for line in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    for entry in report.entries:
        if entry.verdict not in ("PASS", "IMPROVED"):
            console.print(f"{verdict_text(entry)}: {entry.case} {entry.metric.title}: {entry.reason}",
                          highlight=False, soft_wrap=True, markup=False)
    outputs = [(args.json_out, to_json), (args.junit, to_junit), (args.markdown, to_markdown)]
    for target, render in outputs:
        if target:
            Path(target).write_text(render(report))
            console.print(f"wrote {target}", highlight=False)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as fh:  # GitHub concatenates what each step appends
            fh.write(to_markdown(report))
    console.print(report.summary, highlight=False)
    return report.exit_code


def cmd_gate(args: argparse.Namespace, console: Console) -> int:
    from harness.gate.config import load_gate_config
    from harness.gate.matching import compare_arms, compare_runs

    config = load_gate_config(args.config)
    current = run_doc(args.current, args.store)
    if args.baseline is None:
        from harness.gate import sequential

        report = compare_arms(current, config, args.strict)
        sequential.apply(report, current, config)
    else:
        found = [_baseline(ref, args.store) for ref in args.baseline]
        missing = next((why for doc, why in found if doc is None), None)
        baselines = [doc for doc, _ in found if doc is not None] if missing is None else []
        baselines.sort(key=lambda doc: doc["run"].get("started_at") or 0)
        ids = [doc["run"]["run_id"] for doc in baselines]
        if current["run"]["run_id"] in ids or len(set(ids)) < len(ids):
            raise TokbenchError(f"--baseline {' '.join(args.baseline)}: a run is given twice (or is also "
                                f"--current {args.current}); give each baseline once, not the current run")
        report = compare_runs(baselines, current, config, args.strict, missing=missing)
    return _emit(report, args, console)


def cmd_ab(args: argparse.Namespace, console: Console) -> int:
    from harness.execution.ab import ABRunner, parse_arm
    from harness.gate import sequential
    from harness.gate.config import load_gate_config
    from harness.gate.matching import compare_arms
    from results.export import run_document, write_json
    from results.store import Store

    config = load_gate_config(args.config)
    arm_a, arm_b = parse_arm("A", args.a), parse_arm("B", args.b)
    if args.timeout is not None and args.timeout <= 0:
        raise TokbenchError(f"--timeout must be > 0 seconds (got {args.timeout})")
    suite = suite_from_args(args)  # checks a suite file, its repetitions included
    repetitions = args.repetitions
    if repetitions is None and args.suite:  # the suite file's own repetitions, when it sets them
        repetitions = read_toml(Path(args.suite), "suite file").get("repetitions")
    plan: sequential.Plan | None = None

    def stop(a_case: dict[str, Any], b_case: dict[str, Any]) -> str | None:
        assert plan is not None
        return sequential.stop_reason(sequential.case_comparisons(a_case, b_case, config, plan.block))

    if args.budget is not None and args.repetitions is not None:
        raise TokbenchError("-r/--repetitions fixes the trial count; a sequential run (--budget) "
                            "takes --max-trials as its cap instead")
    if args.budget is None and repetitions is not None:  # fixed n: today's test on n pairs
        if args.max_trials is not None:
            raise TokbenchError("--max-trials caps a sequential run; with a fixed -r it has no use")
    else:
        plan = sequential.Plan(sequential.parse_duration(args.budget or f"{sequential.DEFAULT_BUDGET_S:g}"),
                               args.max_trials or sequential.DEFAULT_MAX_TRIALS, args.block)
        repetitions = plan.max_trials
        if args.timeout is None:  # a case's worker may run for the whole budget
            suite.timeout_s = max(suite.timeout_s, plan.budget_s + 600)
    if repetitions < config.defaults.min_trials:
        flag = "--max-trials" if plan else "-r/--repetitions"
        raise TokbenchError(f"{flag} {repetitions} is below min_trials "
                            f"{config.defaults.min_trials} ({config.source}); raise {flag.split('/')[0]}")
    suite.repetitions = repetitions
    store = Store(args.store)
    hooks = ProgressHooks(console)
    runner = ABRunner(store, suite, arm_a, arm_b, args.block, hooks, measure_bandwidth=not args.no_bandwidth,
                      plan=plan, stop=stop if plan else None)
    outcome = run_with_progress(runner, hooks, console, args.argv)
    if outcome is None:
        return interrupts.exit_code()
    console.print(f"run {outcome.run_id} stored in {store.path}", highlight=False)
    if args.output:
        write_output(args.output, write_json(store, outcome.run_id))
    for index, label, error in outcome.failed:
        console.print(f"[red]case {index + 1} ({escape(label)}) failed:[/red] {escape(str(error))}",
                      highlight=False)
    doc = run_document(store, outcome.run_id)
    report = compare_arms(doc, config, args.strict, (args.a, args.b))
    sequential.apply(report, doc, config)
    return _emit(report, args, console)


def _add_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"thresholds file (default ./{DEFAULT_FILE} when present)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when any verdict is inconclusive")
    parser.add_argument("--json", dest="json_out", metavar="FILE",
                        help="write samples, statistics and verdicts")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML (one testcase per case × metric)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="write the Markdown summary (also appended to $GITHUB_STEP_SUMMARY when set)")


def add_commands(sub: Any) -> None:
    """Register `ab` and `gate` on the tokbench sub-command parser."""
    ab = sub.add_parser("ab", help="paired A/B comparison, trials interleaved ABBA, with a verdict")
    ab.add_argument("--a", required=True, metavar="SPEC",
                    help='arm A: space-separated key=value, e.g. "python=/base/bin/python" or '
                         '"threads=1" or "model=a.gguf"; "" runs the suite as is')
    ab.add_argument("--b", required=True, metavar="SPEC", help="arm B, same syntax")
    add_grid_options(ab, f"a fixed number of trials per arm (a fixed-n run; {AB_REPETITIONS} when a "
                         "suite file sets no repetitions); without it, and without a suite file's "
                         "repetitions, `ab` is sequential",
                     "seconds per case and arm, its model load included (default: the larger of "
                     "900 and the budget + 600 for a sequential run)")
    ab.add_argument("--block", type=int, default=1, help="trials per block (default 1: A B B A …)")
    ab.add_argument("--budget", metavar="TIME",
                    help="sequential run: stop undecided cases after this much time for the whole "
                         f"command, e.g. 5m, 300s (default {DEFAULT_BUDGET:g} s, when -r is not given)")
    ab.add_argument("--max-trials", type=int, metavar="N",
                    help=f"sequential run: at most N trials per arm and case (default {DEFAULT_MAX_TRIALS})")
    _add_outputs(ab)
    ab.set_defaults(func=cmd_ab)

    gate = sub.add_parser("gate", help="verdicts of a run against a stored baseline")
    gate.add_argument("--baseline", nargs="+", metavar="RUN",
                      help="baseline run(s): run id/prefix/last~N or exported run .json files; give "
                           "≥ 3 (e.g. the last main-branch runs) to measure run-to-run drift "
                           "(omit to compare the arms of an `ab` run)")
    gate.add_argument("--current", default="last", help="current run (default last) or .json file")
    _add_outputs(gate)
    gate.set_defaults(func=cmd_gate)

