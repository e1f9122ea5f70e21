"""`tokbench run … --cluster ADDRESS [--nodes LABEL]`: the suite once on every node of a Ray
cluster (harness.execution.cluster), each node measuring itself into the fleet store.

Exit codes: 0 every node's run complete; 1 a case or a node failed; 2 bad input or no cluster
(nothing was run); 130, 143 or 129 interrupted (the nodes' runs are marked interrupted).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness.cli.shared import add_grid_options, suite_from_args
from harness.common.errors import TokbenchError

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
_NOT_FORWARDED = {"suite", "output"}  # the suite travels as text; -o is the head's


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cluster", "run on the nodes of a Ray cluster instead of this machine (needs "
                   "pip install 'tokbench[cluster]')")
    group.add_argument("--cluster", metavar="ADDRESS",
                       help="run the suite once on every node of this Ray cluster: ray://HEAD:10001 "
                            "(its client server) or HEAD:PORT (its GCS); each node measures itself "
                            "and writes to --store, which every node opens by the same string "
                            "(a postgresql:// URL for a fleet)")
    group.add_argument("--nodes", metavar="LABEL[,LABEL]",
                       help="with --cluster: only the nodes that have one of these Ray resources "
                            "(e.g. gpu_h100)")


def node_options(args: argparse.Namespace) -> list[str]:
    """The grid options given to the head, to pass on to each node's runner: each one that differs
    from its default, under its long name."""
    probe = argparse.ArgumentParser(add_help=False)
    add_grid_options(probe, "", "")
    out: list[str] = []
    for action in probe._actions:
        if not action.option_strings or action.dest in _NOT_FORWARDED:
            continue
        value = getattr(args, action.dest, action.default)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        out += [flag] if action.nargs == 0 else [flag, str(value)]
    return out


def store_location(args: argparse.Namespace) -> str | None:
    """The store every node opens: --store or $TOKBENCH_STORE, a file path made absolute (the
    nodes' runners do not start in this directory)."""
    location = args.store or os.environ.get("TOKBENCH_STORE")
    if location and "://" not in location:
        location = str(Path(location).expanduser().resolve())
    return location


def run_on_cluster(args: argparse.Namespace, console: Console) -> int:
    from harness.execution import cluster, interrupts
    from results.store import Store, masked

    if not args.cluster:
        raise TokbenchError("--nodes selects the nodes of a Ray cluster: give --cluster ADDRESS too")
    if args.repetitions is not None and args.repetitions < 1:
        raise TokbenchError(f"-r/--repetitions must be ≥ 1 (got {args.repetitions})")
    if args.timeout is not None and args.timeout <= 0:
        raise TokbenchError(f"--timeout must be > 0 seconds (got {args.timeout})")
    suite = suite_from_args(args)  # a bad suite fails here, before any node is asked
    suite_text = Path(args.suite).read_text() if args.suite else None
    cluster.import_ray()  # no Ray: one line, before the store is touched
    location = store_location(args)
    store = Store(location, create=True)  # made (and migrated) once, before the nodes open it
    location = location or str(store.path)
    command = "tokbench " + " ".join(shlex.quote(a) for a in args.argv)  # main() masked it
    if masked(location) != location:
        console.print("[bold yellow]warning:[/bold yellow] the store URL's password travels to the nodes "
                      "in Ray's task arguments: leave it out of the URL and give each node a ~/.pgpass",
                      highlight=False)

    try:
        cluster.connect(args.cluster)
        nodes = cluster.alive_nodes((args.nodes or "").split(","))
        if "://" not in location and not cluster.all_local(nodes):
            others = sorted({n.host for n in nodes} - {socket.gethostname()})
            console.print(f"[bold yellow]warning:[/bold yellow] the store {escape(location)} is a file "
                          f"and nodes on other hosts ({escape(', '.join(others))}) open their own copy "
                          "unless it is on a filesystem they share: give --store postgresql://… for a "
                          "fleet", highlight=False)
        if args.output:
            console.print("[bold yellow]warning:[/bold yellow] -o/--output is not written with "
                          "--cluster: export each node's run with `tokbench export RUN`", highlight=False)
        if getattr(args, "push", None):
            console.print("[bold yellow]warning:[/bold yellow] --push is not used with --cluster: the "
                          "nodes write to the store (--store) themselves", highlight=False)
        what = f"{len(suite.cases)} case{'s' * (len(suite.cases) != 1)}"
        console.print(f"dispatching {escape(args.suite or 'the grid')} ({what}) to {len(nodes)} "
                      f"node{'s' * (len(nodes) != 1)} of {escape(args.cluster)}; "
                      f"store {escape(str(store.path))}", highlight=False)
        job = {"options": node_options(args), "suite_text": suite_text,
               "suite_name": Path(args.suite).name if args.suite else None,
               "store": location, "command": command, "cluster": f"cluster {args.cluster}"}
        try:
            with interrupts.signals_interrupt():
                runs = cluster.dispatch(store, nodes, suite, job, say=lambda nr: _say(console, nr))
        except KeyboardInterrupt as exc:
            console.print(f"[yellow]{interrupts.describe(exc)}: the nodes' runs were cancelled; "
                          "finished trials are kept in the store[/yellow]")
            return interrupts.exit_code()
    finally:
        cluster.disconnect()
        store.close()
    ok = sum(nr.status == "complete" for nr in runs)
    console.print(f"{ok} of {len(runs)} node runs complete; see `tokbench show RUN` for each",
                  highlight=False)
    return EXIT_OK if ok == len(runs) else EXIT_FAILED


def _say(console: Console, nr: Any) -> None:
    """One line for a node that ended: node, host, run id, status (and why it failed)."""
    colour = {"complete": "green", "interrupted": "yellow"}.get(nr.status, "red")
    counts = f" ({nr.n_ok}/{nr.n_cases} cases ok)" if nr.n_cases else ""
    line = (f"node {nr.node.short} · {escape(nr.node.host)} · run {nr.run_id} · "
            f"[{colour}]{nr.status}[/{colour}]{counts}")
    if nr.waited_s >= 1:
        line += f" (waited {nr.waited_s:.0f} s for the node: another dispatch was measuring on it)"
    if nr.note:
        line += f": {escape(nr.note)}"
    console.print(line, highlight=False)
