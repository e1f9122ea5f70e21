"""`tokbench fleet`: the device × engine × model matrix of a fleet store, rendered; nothing is run.

    tokbench [--store PATH|postgresql://…] fleet [--where KEY=VALUE ...] [--format md|html|csv] [-o OUT]

Exit codes: 0 written; 2 bad input (an unknown --where key or a malformed value: one line naming
it and the valid keys).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.cli.report import emit


def cmd_fleet(args: argparse.Namespace, console: Console) -> int:
    from reports.fleet import build_fleet_report, parse_filters, write_fleet
    from results.store import Store

    filters = parse_filters(args.where or [])  # bad filters fail before the store is opened
    store = Store(args.store, create=False)
    report = build_fleet_report(store, filters)
    output = Path(args.output) if args.output else None
    return emit(write_fleet(report, args.format, output), output, report.warnings, console)


def add_parser(sub: Any) -> None:
    """Register `fleet` on the tokbench sub-command parser (reports.fleet, with pandas and
    matplotlib, is imported only when the command runs; its FILTERS are the keys listed here)."""
    fleet = sub.add_parser(
        "fleet", help="device × engine × model matrix of every matching run in the store (a fleet's "
                      "PostgreSQL store or a SQLite file): median tok/s, roofline fraction, memory, "
                      "published figures")
    fleet.add_argument("--where", action="append", metavar="KEY=VALUE",
                       help="select runs and cases; repeat it: the same key ORs, different keys AND. "
                            "host=NAME (exact), cpu=TEXT, gpu=TEXT or gpu=none, engine=TEXT, "
                            "backend=NAME, model=TEXT (substrings, any case), since=DATE, until=DATE "
                            "(ISO, UTC), status=complete|failed|interrupted|running")
    fleet.add_argument("--format", choices=("md", "markdown", "html", "csv"), default="md",
                       help="md (markdown), html (one self-contained page) or csv (default md)")
    fleet.add_argument("-o", "--output", help="file to write (default stdout); md also writes its plot "
                                              "beside it; csv: a directory, one file per table "
                                              "(without -o: the matrix on stdout)")
    fleet.set_defaults(func=cmd_fleet)
