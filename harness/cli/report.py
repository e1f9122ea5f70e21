"""`tokbench report` and `tokbench compare`: render stored runs; nothing is run.

Exit codes: 0 written; 2 bad input (one line naming it and the fix); 4 `compare` refused because
a hard fingerprint field differs (`--force` shows it anyway, flagged).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from harness.common.files import write_output


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from reports.report import build_report, write
    from results.store import Store

    store = Store(args.store, create=False)
    report = build_report(store, args.runs, args.against)
    output = Path(args.output) if args.output else None
    return emit(write(report, args.format, output), output, report.warnings, console)


def emit(text: str | None, output: Path | None, warnings: list[str], console: Console) -> int:
    """A written report: its text on stdout (when not written to a file), then its warnings on
    the console (stderr for these commands, so stdout holds only the document)."""
    if text is not None:
        sys.stdout.write(text)
    else:
        console.print(f"wrote {escape(str(output))}", highlight=False)
    for line in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from harness.cli.shared import run_doc
    from reports.compare import compare_documents, display
    from reports.tables import to_markdown, to_rich
    from results.export import csv_text

    result = compare_documents(run_doc(args.run_a, args.store), run_doc(args.run_b, args.store), args.force)
    banner = result.banner
    if banner:
        console.print(f"[bold red]{escape(banner)}[/bold red]", highlight=False, soft_wrap=True)
    if result.exit_code:
        return result.exit_code
    for line in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    table = display(result)
    title = f"A = run {result.run_a}, B = run {result.run_b}"
    if args.format == "text":
        console.print(to_rich(table, title=title))
    else:
        lines = [f"**{title}**", ""]
        if banner:
            lines = [f"> ⚠ **{banner}**", "", *lines]
        right = ("A median", "B median", "B ÷ A speed [95% CI]")
        text = ("\n".join(lines) + "\n" + to_markdown(table, right=right) if args.format == "md"
                else csv_text(result.rows))
        if args.output:
            write_output(args.output, text)
            console.print(f"wrote {args.output}", highlight=False)
        else:
            sys.stdout.write(text)
    if banner:  # a forced comparison is flagged below the table too
        console.print(f"[bold red]{escape(banner)}[/bold red]", highlight=False, soft_wrap=True)
    return result.exit_code


def add_commands(sub: Any) -> None:
    """Register `report` and `compare` on the tokbench sub-command parser."""
    report = sub.add_parser("report", help="measured vs published vs the roofline: Markdown, HTML or CSV")
    report.add_argument("runs", nargs="*", default=["last"], metavar="RUN",
                        help="run id, prefix, last or last~N (default last); several are combined")
    report.add_argument("--against", choices=("published",),
                        help="compare with the published figures and the device catalog")
    report.add_argument("--format", choices=("md", "html", "csv"), default="md")
    report.add_argument("-o", "--output", help="file to write (csv: a directory, one file per table); "
                                               "md also writes its plots beside it")
    report.set_defaults(func=cmd_report)

    comp = sub.add_parser("compare", help="two runs side by side per matched case, with speed ratios")
    comp.add_argument("run_a", metavar="RUN_A", help="run id/prefix/last~N or an exported run .json")
    comp.add_argument("run_b", metavar="RUN_B", help="the same, compared against RUN_A")
    comp.add_argument("--force", action="store_true",
                      help="compare even when hard fingerprint fields differ (flagged in the output)")
    comp.add_argument("--format", choices=("text", "md", "csv"), default="text")
    comp.add_argument("-o", "--output", help="file to write (md, csv; default stdout)")
    comp.set_defaults(func=cmd_compare)
