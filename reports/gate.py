"""Gate reports: JSON (everything, raw samples included), Markdown (GitHub step summary), JUnit
XML (one testcase per case × metric), and the console table. All render one GateReport."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from harness.gate.matching import Entry, GateReport
from harness.gate.statistics import ERROR, IMPROVED, INCONCLUSIVE, PASS, REGRESSION
from reports import tables

FORMAT = "tokbench-gate"
VERSION = 1
_ICONS = {REGRESSION: "❌", IMPROVED: "🚀", PASS: "✅", INCONCLUSIVE: "❔", ERROR: "💥"}
_COLUMNS = ("case", "metric", "baseline", "current", "change [95% CI]", "test p", "robust CV",
            "threshold", "verdict")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, fmt)


def verdict_text(e: Entry) -> str:
    """The verdict with its qualifiers: accepted, acceptance expired, or a PASS that warns."""
    text = e.verdict
    if e.accepted:
        text += f" (accepted until {e.accepted.expires.isoformat()}: {e.accepted.reason})"
    elif e.expired:
        text += f" (acceptance expired {e.expired.expires.isoformat()})"
    elif e.comparison is not None and e.comparison.warn:
        text += " ⚠"
    return text


def rows(report: GateReport) -> list[dict[str, str]]:
    """Display cells, one row per case × metric."""
    out = []
    for e in report.entries:
        c = e.comparison
        unit = e.metric.unit
        if c is None:
            cells = {"baseline": "–", "current": "–", "change [95% CI]": "–", "test p": "–",
                     "robust CV": "–", "threshold": f"{e.thresholds.fail:.1%}"}
        else:
            p = c.p_slower if c.ratio < 1 else c.p_faster
            cells = {
                "baseline": f"{_num(c.median_baseline, '.2f')} {unit} (n={c.n_baseline})",
                "current": f"{_num(c.median_current, '.2f')} {unit} (n={c.n_current})",
                "change [95% CI]": f"{_num(c.ratio - 1, '+.1%')} "
                                   f"[{_num(c.ci_low - 1, '+.1%')}, {_num(c.ci_high - 1, '+.1%')}]",
                "test p": ("– (sequential)" if c.sequential else
                           f"{_num(p, '.2g')} ({'Wilcoxon' if c.paired else 'U'})"),
                "robust CV": f"{_num(c.cv_baseline, '.1%')} / {_num(c.cv_current, '.1%')}",
                "threshold": f"{c.threshold:.1%}",
            }
        out.append({"case": e.case, "metric": e.metric.title, **cells, "verdict": verdict_text(e)})
    return out


def _sides(report: GateReport) -> str:
    if report.mode == "ab":
        return (f"A: `{report.baseline.get('spec') or '(suite as is)'}` · "
                f"B: `{report.current.get('spec') or '(suite as is)'}` · run {report.current['run_id']}")
    def side(info: dict[str, Any]) -> str:
        commit = f" (commit {info['git_commit'][:10]})" if info.get("git_commit") else ""
        runs = info.get("runs") or []
        earlier = f" and {len(runs) - 1} earlier" if len(runs) > 1 else ""
        return f"run {info['run_id']}{commit}{earlier}"
    return f"baseline: {side(report.baseline)} · current: {side(report.current)}"


def to_markdown(report: GateReport) -> str:
    """GitHub-flavoured Markdown, for $GITHUB_STEP_SUMMARY or a PR comment."""
    lines = [f"## tokbench {report.mode}: {report.summary}", "", _sides(report), ""]
    table = rows(report)
    if table:
        icons = [_ICONS.get(row["verdict"].split(" ")[0], "") for row in table]
        frame = pd.DataFrame([{**row, "verdict": f"{icon} {row['verdict']}"}
                              for row, icon in zip(table, icons, strict=True)], columns=_COLUMNS)
        lines.append(tables.to_markdown(frame, right=tuple(c for c in _COLUMNS
                                                           if c not in ("case", "metric", "verdict"))))
    reasons = [f"- **{e.case}** {e.metric.title}: {e.reason}" for e in report.entries if e.verdict != PASS]
    if reasons:
        lines += ["<details><summary>why</summary>", "", *reasons, "", "</details>", ""]
    lines += [f"- ⚠ {w}" for w in report.warnings]
    interval = ("percentile bootstrap over the ABBA pairs" if report.mode == "ab" else
                "percentile bootstrap widened by the baseline's run-to-run drift")
    if any(e.comparison is not None and e.comparison.sequential for e in report.entries):
        interval = ("sequential: mean over ABBA units and its confidence sequence, valid however "
                    "early it stopped")
    lines.append(f"\n<sub>speed ratio of medians (below 1 is slower), 95% interval: {interval}; "
                 f"one-sided Mann-Whitney U; thresholds from {report.config}</sub>\n")
    return "\n".join(lines)


def to_dict(report: GateReport) -> dict[str, Any]:
    entries = []
    for e in report.entries:
        stats = e.comparison.as_dict() if e.comparison else None
        if stats:
            for key in ("verdict", "reason", "thresholds"):
                stats.pop(key)
        entries.append({
            "case": e.case, "metric": e.metric.key, "title": e.metric.title, "unit": e.metric.unit,
            "higher_is_better": e.metric.higher_is_better, "verdict": e.verdict, "reason": e.reason,
            "blocking": e.blocking, "accepted": e.accepted.as_dict() if e.accepted else None,
            "acceptance_expired": e.expired.as_dict() if e.expired else None,
            "thresholds": e.thresholds.as_dict(), "statistics": stats,
            "samples": {"baseline": e.baseline, "current": e.current},
        })
    return {
        "format": FORMAT, "version": VERSION, "mode": report.mode, "exit_code": report.exit_code,
        "summary": report.summary, "strict": report.strict, "config": report.config,
        "baseline": report.baseline, "current": report.current,
        "not_comparable": report.not_comparable, "warnings": report.warnings, "entries": entries,
    }


def to_json(report: GateReport) -> str:
    return json.dumps(to_dict(report), indent=1)


def to_junit(report: GateReport) -> str:
    """JUnit XML: a regression is a failure, an error an error, anything undecided skipped."""
    suite = ET.Element("testsuite", name=f"tokbench {report.mode}")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for e in report.entries:
        counts["tests"] += 1
        case = ET.SubElement(suite, "testcase", classname=e.case, name=e.metric.title)
        if e.blocking:
            counts["failures"] += 1
            ET.SubElement(case, "failure", message=e.reason, type=REGRESSION).text = e.reason
        elif e.verdict == ERROR:
            counts["errors"] += 1
            ET.SubElement(case, "error", message=e.reason, type=ERROR)
        elif e.verdict not in (PASS, IMPROVED, REGRESSION):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", message=f"{e.verdict}: {e.reason}")
        ET.SubElement(case, "system-out").text = f"{verdict_text(e)}: {e.reason}"
    for key, value in counts.items():
        suite.set(key, str(value))
    root = ET.Element("testsuites", name="tokbench", **{k: suite.get(k) or "0" for k in counts})
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def to_rich(report: GateReport) -> Table:
    table = Table(title=f"tokbench {report.mode}: {report.summary}")
    for col in _COLUMNS:
        table.add_column(col, justify="left" if col in ("case", "metric", "verdict") else "right",
                         overflow="fold")
    styles = {REGRESSION: "red", IMPROVED: "green", PASS: "green", INCONCLUSIVE: "yellow", ERROR: "red"}
    for row, e in zip(rows(report), report.entries, strict=True):
        cells = [Text(row[c]) for c in _COLUMNS[:-1]]
        table.add_row(*cells, Text(row["verdict"], style=styles.get(e.verdict, "yellow")))
    return table
