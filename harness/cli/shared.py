"""What the CLI's commands share: the progress bar, the grid options and the suite they build,
the result store, and reading a run from the store or an exported file."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.common.errors import TokbenchError
from harness.execution.lifecycle import Hooks
from harness.execution.params import PARAMS, parse_list
from harness.execution.suite import (
    DEFAULT_TIMEOUT_S,
    Suite,
    default_repetitions,
    expand,
    expand_quants,
    load_suite,
)
from harness.execution.workloads import parse_workload
from harness.models.sources import DEFAULT_MODEL


class ProgressHooks(Hooks):
    """A rich progress bar: case i/N, the case, elapsed time, trials done."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]case"), MofNCompleteColumn(), BarColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
            transient=False,
        )
        self.task: Any = None
        self.label = ""

    def worker_started(self, index: int, pid: int) -> None:
        """While the first worker loads its model the harness only waits: import what the
        results table needs now (pandas, half a second) rather than after the last trial."""
        import reports.tables  # noqa: F401

    def run_started(self, run_id: str, n_cases: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(f"run {run_id}", total=n_cases)

    def steps_added(self, n: int) -> None:
        task = next(t for t in self.progress.tasks if t.id == self.task)
        self.progress.update(self.task, total=(task.total or 0) + n)

    def case_started(self, index: int, case: Any) -> None:
        self.label = case.label()
        self.progress.update(self.task, description=self.label)

    def trial_done(self, index: int, trial: int) -> None:
        self.progress.update(self.task, description=f"{self.label} · trial {trial + 1}")

    def case_done(self, index: int, status: str, error: str | None) -> None:
        self.progress.advance(self.task)
        if status != "ok":
            self.progress.console.print(f"[red]case {index + 1} failed:[/red] {escape(str(error))}")

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[bold yellow]warning:[/bold yellow] {escape(message)}")

    def stop(self) -> None:
        self.progress.stop()


def store_of(args: argparse.Namespace, create: bool = True) -> Any:
    from results.store import Store

    return Store(args.store, create=create)


def suite_from_args(args: argparse.Namespace) -> Suite:
    if args.suite:
        suite = load_suite(args.suite, args.requests, _slo(args))
        if args.repetitions is not None:
            suite.repetitions = args.repetitions
        if args.timeout is not None:
            suite.timeout_s = args.timeout
        suite.isolate = suite.isolate or args.isolate
        suite.force = args.force
        return suite
    quants = [q for q in args.quants.split(",") if q] if args.quants else None
    models = expand_quants([m for m in (args.model or DEFAULT_MODEL).split(",") if m], quants,
                           "--quants")
    workloads = [parse_workload(w) for w in args.workloads.split(",") if w.strip()]
    params = {name: parse_list(PARAMS[name], getattr(args, name), f"--{name.replace('_', '-')}")
              for name in PARAMS if getattr(args, name) is not None}
    cases = expand(args.backend.split(","), models, workloads, params, "command line")
    python = {}
    if args.python:
        python = {b: args.python for b in {c.backend for c in cases}}
    return Suite(cases, args.repetitions or default_repetitions(workloads),
                 args.timeout or DEFAULT_TIMEOUT_S, not args.no_warmup, args.seed, python,
                 isolate=args.isolate, requests=args.requests, slo=_slo(args), force=args.force)


def _slo(args: argparse.Namespace) -> dict[str, float]:
    from harness.common.serving import parse_slo

    if args.requests is not None and args.requests < 1:
        raise TokbenchError(f"--requests must be ≥ 1 (got {args.requests})")
    try:
        return parse_slo(args.slo)
    except ValueError as exc:
        raise TokbenchError(f"--slo: {exc}") from None


def run_with_progress(runner: Any, hooks: ProgressHooks, console: Console,
                      argv: list[str]) -> Any:
    """Run with the progress bar; None when a signal interrupted it (finished trials stay stored;
    interrupts.exit_code() says which)."""
    from harness.execution.interrupts import describe, signals_interrupt

    command = "tokbench " + " ".join(shlex.quote(a) for a in argv)
    try:
        with signals_interrupt():
            return runner.run(command)
    except KeyboardInterrupt as exc:
        hooks.stop()
        console.print(f"[yellow]{describe(exc)}: finished trials are kept in the store[/yellow]")
        return None
    finally:
        hooks.stop()


def add_grid_options(parser: argparse.ArgumentParser, repetitions_help: str, timeout_help: str) -> None:
    """The options that build a suite (`run` and `ab` take the same ones)."""
    parser.add_argument("suite", nargs="?", help="suite TOML file (instead of the grid options)")
    parser.add_argument("--backend", default="llama.cpp", help="backend(s), comma-separated")
    parser.add_argument("-m", "--model", help=f"model source(s), comma-separated (default {DEFAULT_MODEL})")
    parser.add_argument("-q", "--quants", help="quants filled into {quant} in the model sources")
    parser.add_argument("-w", "--workloads", default="pp512,tg128",
                        help="workloads, comma-separated: ppN, tgN, ppN+tgN, …@dN; serving loads "
                             "cN:inN:outN (concurrency), rR:inN:outN (requests/s), see the README")
    parser.add_argument("--requests", type=int,
                        help="requests per serving case whose workload names no nN or durN "
                             "(default 200)")
    parser.add_argument("--slo", help="serving SLOs for goodput, e.g. ttft=500ms,tpot=50ms "
                                      "(also e2el)")
    for p in PARAMS.values():
        parser.add_argument(*p.flags, dest=p.name, help=f"{p.help} (comma list → grid)")
    parser.add_argument("-r", "--repetitions", type=int, help=repetitions_help)
    parser.add_argument("--timeout", type=float, help=timeout_help)
    parser.add_argument("--isolate", action="store_true",
                        help="one worker (and model load) per case, instead of one per model load")
    parser.add_argument("--force", action="store_true",
                        help="run cases the memory pre-check says cannot fit in the RAM left")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up trial")
    parser.add_argument("--seed", type=int, default=42, help="seed for the random prompt tokens")
    parser.add_argument("--python", help="interpreter for backend workers (an engine's own venv)")
    parser.add_argument("--no-bandwidth", action="store_true", help="skip the memory-bandwidth probe")
    parser.add_argument("-o", "--output", help="also write the run as JSON to this file")


def run_doc(ref: str, store_path: str | None) -> dict[str, Any]:
    """A run document from an exported JSON file or a run reference in the store."""
    from results.export import read_document, run_document
    from results.store import Store

    path = Path(ref)
    if path.suffix == ".json" or path.is_file():
        return read_document(path)
    store = Store(store_path, create=False)
    try:
        return run_document(store, store.resolve_run(ref))
    finally:
        store.close()


