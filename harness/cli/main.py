"""`tokbench` command line: parses arguments and calls plain functions (tests call main(argv)).

Exit codes: 0 success; 1 the run finished but some cases failed; 2 bad input or an unusable
environment (nothing was run); 130, 143 or 129 interrupted by SIGINT, SIGTERM or SIGHUP.
`ab` and `gate` (harness/cli_gate.py) have their own: 0 pass, 1 regression, 2 error,
3 inconclusive (--strict), 4 not comparable;
`compare` (harness/cli_report.py) exits 4 when it refuses runs whose hard fingerprints differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from backends.base import BackendError
from harness.cli import fleet as fleet_cli
from harness.cli import gate as cli_gate
from harness.cli import models as models_cli
from harness.cli import report as cli_report
from harness.cli import sync as cli_sync
from harness.cli.shared import (
    ProgressHooks,
    add_grid_options,
    run_with_progress,
    store_of,
    suite_from_args,
)
from harness.common import cache
from harness.common.errors import TokbenchError
from harness.common.files import write_output
from harness.execution import interrupts
from harness.execution.engines import probe_engines
from harness.execution.lifecycle import Workers
from harness.execution.runner import Runner
from harness.execution.suite import (
    DEFAULT_REPETITIONS,
    DEFAULT_TIMEOUT_S,
)
from harness.hardware import profile as hardware
from results.store import masked

EXIT_OK, EXIT_FAILED_CASES, EXIT_ERROR = 0, 1, 2


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if getattr(args, "cluster", None) or getattr(args, "nodes", None):  # `capacity` has neither
        from harness.cli.cluster import run_on_cluster

        return run_on_cluster(args, console)
    if args.repetitions is not None and args.repetitions < 1:
        raise TokbenchError(f"-r/--repetitions must be ≥ 1 (got {args.repetitions})")
    if args.timeout is not None and args.timeout <= 0:
        raise TokbenchError(f"--timeout must be > 0 seconds (got {args.timeout})")
    suite = suite_from_args(args)
    store = store_of(args)
    hooks = ProgressHooks(console)
    outcome = run_with_progress(Runner(store, suite, hooks, measure_bandwidth=not args.no_bandwidth),
                                hooks, console, args.argv)
    if outcome is None:
        return interrupts.exit_code()
    from reports.tables import summary_table, to_rich  # pandas: imported while the model loaded
    from results.export import write_json
    from results.frames import cases_frame

    table = summary_table(cases_frame(store, outcome.run_id))
    console.print(to_rich(table, title=f"run {outcome.run_id}"))
    print_serving(store, outcome.run_id, console)
    print_searches(store, outcome.run_id, console)
    print_contention(store.run(outcome.run_id), console)
    console.print(f"stored in {escape(str(store.path))}")
    if args.output:
        write_output(args.output, write_json(store, outcome.run_id))
        console.print(f"wrote {escape(args.output)}")
    push = getattr(args, "push", None)  # `capacity` runs through here too, without --push
    pushed = not push or cli_sync.push_after_run(store, outcome.run_id, push, console)
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} of {len(suite.cases)} cases failed:[/red]")
        for index, label, error in outcome.failed:
            console.print(f"  case {index + 1} ({escape(label)}): {escape(str(error))}")
        return EXIT_FAILED_CASES
    return EXIT_OK if pushed else EXIT_FAILED_CASES


# -- profile ------------------------------------------------------------------------------------
def _engine_line(engine: dict[str, Any]) -> str:
    """`llama-cpp-python 0.3.36 (ggml_version 0.9.4, …)`, build details, then system info."""
    skip = ("engine", "engine_version", "system_info")
    details = ", ".join(f"{k} {v}" for k, v in engine.items() if k not in skip and v is not None)
    line = f"{engine['engine']} {engine['engine_version']}" + (f" ({details})" if details else "")
    return line + (f"\n  {engine['system_info']}" if engine.get("system_info") else "")


def cmd_profile(args: argparse.Namespace, console: Console) -> int:
    from backends.registry import available

    workers = Workers({b: args.python for b in available()} if args.python else None)
    engines = {}
    try:
        for name in available():
            try:
                engines.update(probe_engines(workers, [name]))
            except TokbenchError as exc:
                engines[name] = {"error": str(exc)}
    finally:
        workers.close()
    profile = hardware.collect(bandwidth=not args.no_bandwidth, engines=engines)
    if args.json:
        print(json.dumps({"profile": profile, "fingerprint": hardware.fingerprint(profile)}, indent=2))
        return EXIT_OK
    from rich.table import Table

    table = Table(title="hardware profile", show_header=False)
    for key, doc in hardware.PROFILE_FIELDS.items():
        value = profile[key]
        if key == "engines":
            value = "\n".join(f"{n}: " + (e.get("error") or _engine_line(e)) for n, e in value.items())
        elif key in ("ram_bytes", "ram_available_bytes"):
            value = f"{value / 2**30:.1f} GiB"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value) if value else "–"
        table.add_row(f"[bold]{key}[/bold]\n[dim]{doc}[/dim]", str(value if value is not None else "–"))
    console.print(table)
    console.print(f"[dim]kept for this boot in {cache.root()}: engine probes, CPU identification, "
                  "memory bandwidth; TOKBENCH_NO_CACHE=1 measures them afresh[/dim]")
    return EXIT_OK


# -- runs / show / export / import ----------------------------------------------------------------
def cmd_runs(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    store = store_of(args, create=False)
    table = Table(title=f"runs in {store.path}")
    for col in ("run", "started (UTC)", "status", "cases", "failed", "command"):
        table.add_column(col)
    for run in store.runs():
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(run["started_at"]))
        table.add_row(run["run_id"], started, store.run_state(run), str(run["n_cases"]),
                      str(run["n_failed"]), run["command"] or "")
    console.print(table)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from reports.tables import summary_table, to_rich
    from results.frames import cases_frame

    store = store_of(args, create=False)
    run_id = store.resolve_run(args.run)
    run = store.run(run_id)
    state = store.run_state(run)
    profile = run["profile"] or {}
    console.print(f"[bold]run {run_id}[/bold] · {state} · {escape(run['command'])}")
    if run.get("source"):
        print_source(run["source"], console)
    else:
        cpu = escape(str(profile.get("cpu_brand")))
        console.print(f"machine: {cpu} · {profile.get('physical_cores')} cores · "
                      f"{(profile.get('ram_bytes') or 0) / 2**30:.0f} GiB · "
                      f"bandwidth {(profile.get('memory_bandwidth') or {}).get('copy_gbps', '–')} GB/s")
    print_contention(run, console)
    cases = store.cases(run_id)
    n_ok = sum(c["status"] == "ok" for c in cases)
    if state in ("incomplete", "interrupted"):
        console.print(f"[yellow]run is {state}: {n_ok} of {len(cases)} cases finished; "
                      "finished trials of the others are shown[/yellow]")
    console.print(to_rich(summary_table(cases_frame(store, run_id))))
    print_serving(store, run_id, console)
    print_searches(store, run_id, console)
    return EXIT_OK


def print_source(source: dict[str, Any], console: Console) -> None:
    """Where an imported run came from, what its file says about the machine, and what it does not."""
    tool = " ".join(str(x) for x in (source.get("tool"), source.get("version")) if x)
    build = f", build {source['build']}" if source.get("build") else ""
    lines = [f"imported from {source.get('file')} ({source.get('format')}; {tool}{build}; "
             f"sha256 {str(source.get('sha256'))[:12]})"]
    machine = source.get("machine") or {}
    if machine:
        stated = [f"{k} {v}" for k, v in machine.items() if v not in ("", None)]
        lines.append("the file says: " + " · ".join(stated))
    if not source.get("samples", True):
        lines.append("aggregates only: the file keeps no per-trial samples (no median or interval; "
                     "refused as a gate baseline)")
    if source.get("unknown"):
        lines.append("not stated in the file: " + "; ".join(source["unknown"]))
    for line in lines:
        console.print(escape(line), highlight=False)


def print_contention(run: dict[str, Any], console: Console) -> None:
    """Say loudly that other runs shared this host while the run measured."""
    others = run.get("contended") or []
    if others:
        runs = ", ".join(f"{o.get('run_id')} (pid {o.get('pid')})" for o in others)
        console.print(f"[bold yellow]contended: {len(others)} other tokbench run(s) were live on "
                      f"this host during this run ({escape(runs)}); its timings shared the CPU. "
                      "`last` names the run that started last: name overlapping runs by id"
                      "[/bold yellow]")


def print_serving(store: Any, run_id: str, console: Console) -> None:
    """The serving cases' latency table and their notes (nothing for a run without them)."""
    from reports.tables import serving_notes, serving_table, to_rich, turn_table
    from results.frames import serving_frame

    frame = serving_frame(store, run_id)
    if frame.empty:
        return
    console.print(to_rich(serving_table(frame), title="serving (latencies in ms; t/s above is "
                                                      "output tok/s per trial)"))
    turns = turn_table(frame)
    if not turns.empty:
        console.print(to_rich(turns, title="multi-turn: per turn (each prompt carries the history)"))
    for line in serving_notes(frame):
        console.print(f"[yellow]note:[/yellow] {escape(line)}", highlight=False)


def print_searches(store: Any, run_id: str, console: Console) -> None:
    """Each sweep or capacity search: its steps, and why it ended or what it found."""
    from reports.tables import search_table, to_rich
    from results.frames import searches

    for found in searches(store, run_id):
        title = f"{found['search']} · {found['backend']} · {found['model']}"
        console.print(to_rich(search_table(found), title=title))
        line = found.get("answer") or found["stop"] or "the search did not finish"
        console.print(f"[bold]{found['kind']}:[/bold] {escape(line)}", highlight=False)


def cmd_capacity(args: argparse.Namespace, console: Console) -> int:
    """`run` with each workload turned into a capacity search."""
    if args.suite:
        raise TokbenchError("capacity takes the grid options (--backend, -m, -w), not a suite "
                            "file: write capacity:… workloads in the suite and use `tokbench run`")
    extra = [f"max{args.max:g}"] if args.max else []
    extra += [f"p{args.percentile:g}", *(["rate"] if args.by == "rate" else []),
              f"conf{args.confidence * 100:g}", f"rep{args.repeats}"]
    loads = []
    for w in (w.strip() for w in args.workloads.split(",") if w.strip()):
        head = w.split(":")[0]
        if w.startswith(("capacity:", "sweep:")) or (head[:1] in ("c", "r") and head[1:2].isdigit()):
            raise TokbenchError(f"capacity -w {w!r}: give the request shape only, e.g. "
                                "in512:out128 (the search finds the load)")
        loads.append(":".join(["capacity", w, *extra]))
    args.workloads = ",".join(loads)
    if not args.slo:
        raise TokbenchError("capacity needs --slo, e.g. --slo ttft=500ms,tpot=50ms")
    return cmd_run(args, console)


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from harness.interop.exports import EXPORTS, export
    from reports.tables import summary_table, to_markdown
    from results.export import WRITERS, run_document
    from results.frames import cases_frame

    store = store_of(args, create=False)
    run_id = store.resolve_run(args.run)
    if args.format == "md":
        from reports.tables import SERVING_RIGHT, serving_table
        from results.frames import serving_frame

        text = to_markdown(summary_table(cases_frame(store, run_id)))
        serving = serving_frame(store, run_id)
        if not serving.empty:
            text += "\n" + to_markdown(serving_table(serving), right=SERVING_RIGHT)
    elif args.format in EXPORTS:
        text = export(args.format, run_document(store, run_id))
    else:
        text = WRITERS[args.format](store, run_id)
    if args.output:
        write_output(args.output, text)
        console.print(f"wrote {args.output}", highlight=False)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_import(args: argparse.Namespace, console: Console) -> int:
    from harness.interop.formats import read
    from results.export import store_document

    store = store_of(args)
    for path in args.files:
        fmt, docs = read(path, args.model)
        if fmt.companion_of:
            console.print(f"skipped {escape(str(path))}: a {fmt.name}, read with {fmt.companion_of}",
                          highlight=False)
        for doc in docs:
            run, cases = doc["run"], doc["cases"]
            what = f"{fmt.name}, {len(cases)} case{'s' * (len(cases) != 1)}"
            if store_document(store, doc):
                console.print(f"imported run {run['run_id']} from {escape(str(path))} ({what})",
                              highlight=False)
            else:
                console.print(f"run {run['run_id']} from {escape(str(path))} is already in the store; "
                              "skipped", highlight=False)
            for line in import_notes(doc):
                console.print(f"  {escape(line)}", highlight=False)
    return EXIT_OK


def import_notes(doc: dict[str, Any]) -> list[str]:
    """What an imported run lacks, said once at import: aggregates only, models matched by name."""
    from harness.interop.documents import MODEL_NOT_STATED

    source = doc["run"].get("source") or {}
    out = []
    if source and not source.get("samples", True):
        out.append("aggregates only (the file keeps no per-trial samples): shown, but refused as a "
                   "gate baseline")
    if source and any(c["model"] == MODEL_NOT_STATED for c in doc["cases"]):
        out.append("the file names no model: import it again with --model to state it (a separate run)")
    by_name = sorted({c["model"] for c in doc["cases"] if not c.get("model_id")} - {MODEL_NOT_STATED})
    if source and by_name:
        out.append(f"model identified by name only ({', '.join(by_name)}): not a readable model file "
                   "here, so it matches other runs by name, size and description")
    return out


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokbench", description="Benchmark LLM inference engines on this machine.")
    parser.add_argument("--store", help="result store: a SQLite file or a postgresql:// URL (default "
                                        "$TOKBENCH_STORE or ~/.local/share/tokbench/results.db)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a benchmark grid or a suite file")
    add_grid_options(run, f"trials per case (default {DEFAULT_REPETITIONS})",
                     f"seconds per case, its model load included (default {DEFAULT_TIMEOUT_S:g})")
    from harness.cli.cluster import add_cluster_args  # --cluster, --nodes: Ray, imported only if used

    add_cluster_args(run)
    run.add_argument("--push", metavar="URL",
                     help="after the run, copy it to this fleet store (postgresql://…); if that fails, "
                          "it stays in --store for a later `tokbench push` (exit 1)")
    run.set_defaults(func=cmd_run)

    cap = sub.add_parser("capacity", help="the highest load that meets an SLO, e.g. -w in512:out128 "
                                          "--slo ttft=500ms,tpot=50ms")
    add_grid_options(cap, "trials per step (default 1)",
                     f"seconds per step, its model load included (default {DEFAULT_TIMEOUT_S:g})")
    cap.set_defaults(workloads="in512:out128")
    cap.add_argument("--by", choices=("concurrency", "rate"), default="concurrency",
                     help="search over streams in flight (default) or requests/s")
    cap.add_argument("--percentile", type=float, default=99.0,
                     help="the latency percentile the SLO holds at (default 99)")
    cap.add_argument("--confidence", type=float, default=0.95,
                     help="one-sided confidence of the percentile's bound (default 0.95)")
    cap.add_argument("--repeats", type=int, default=2,
                     help="extra measurements of each level beside the boundary while undecided")
    cap.add_argument("--max", type=float, help="highest level to try (default 1024)")
    cap.set_defaults(func=cmd_capacity)

    prof = sub.add_parser("profile", help="show this machine's hardware profile")
    prof.add_argument("--json", action="store_true", help="print JSON")
    prof.add_argument("--no-bandwidth", action="store_true", help="skip the memory-bandwidth probe")
    prof.add_argument("--python", help="interpreter whose engines to probe (an engine's own venv)")
    prof.set_defaults(func=cmd_profile)

    sub.add_parser("runs", help="list stored runs").set_defaults(func=cmd_runs)

    show = sub.add_parser("show", help="show a stored run")
    show.add_argument("run", nargs="?", default="last", help="run id, prefix, last or last~N")
    show.set_defaults(func=cmd_show)

    export = sub.add_parser("export", help="export a stored run")
    export.add_argument("run", nargs="?", default="last", help="run id, prefix, last or last~N")
    export.add_argument("--format", default="json",
                        choices=("json", "jsonl", "csv", "md", "llama-bench-json", "llama-bench-jsonl",
                                 "llama-bench-csv", "vllm-bench-serve"),
                        help="tokbench's json (lossless; `tokbench import` reads it), jsonl, csv or md; "
                             "llama-bench's json, jsonl or csv (compare-llama-bench.py reads them); "
                             "a vllm bench serve --save-result JSON for a serving run")
    export.add_argument("-o", "--output", help="file to write (default stdout)")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="import results: tokbench JSON, llama-bench, llama-batched-bench, "
                                        "vllm bench, GuideLLM, AIPerf (the format is detected)")
    imp.add_argument("files", nargs="+")
    imp.add_argument("--model", help="the model (a path, as for run) a file's results are for, where the "
                                     "file does not name it (llama-batched-bench)")
    imp.set_defaults(func=cmd_import)

    models_cli.add_parser(sub)
    cli_gate.add_commands(sub)  # ab, gate: the regression gate
    cli_report.add_commands(sub)  # report, compare
    cli_sync.add_commands(sub)  # push, pull
    fleet_cli.add_parser(sub)  # the fleet report
    return parser


def public_arg(arg: str) -> str:
    """A command-line argument fit to store and print: a store URL's password masked."""
    name, eq, value = arg.partition("=")
    return f"{name}={masked(value)}" if eq and name.startswith("--") else masked(arg)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [public_arg(a) for a in argv]  # never a store's password in a stored command
    # commands that can write their document to stdout talk on stderr
    to_stderr = (args.command in ("export", "report", "fleet") or bool(getattr(args, "json", False))
                 or (args.command == "compare" and args.format != "text"))
    tty = (sys.stderr if to_stderr else sys.stdout).isatty()
    console = Console(stderr=to_stderr, width=None if tty else 200)
    try:
        return args.func(args, console)
    except (TokbenchError, BackendError) as exc:
        print(f"tokbench: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def entry() -> None:
    """The `tokbench` console script: main(), then exit without the interpreter's teardown of
    pandas, numpy and rich (a fifth of a second on every command). Everything is stored and
    flushed by then; tests call main() instead."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
