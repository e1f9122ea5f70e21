"""Names and error texts that are markup, TeX, HTML or a spreadsheet formula go through every
output as plain text: the console table, `show`, Markdown, HTML, the plots and CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from harness.cli.main import main
from tests.report_runs import decode_case, write_run

HOSTILE = "=cmd|' /C calc'!A0 [/x] $\\x$ <script>alert(1)</script>"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    write_run(path, "run-1", [decode_case(100.0, model=HOSTILE),
                              decode_case(90.0, model=HOSTILE, n_depth=256),
                              decode_case(0, model=HOSTILE, status="error", error="[/x] boom $\\x$")])
    return path


def _cli(store: Path, *argv: str) -> int:
    return main(["--store", str(store), *argv])


def test_show_prints_them_as_written(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(store, "show", "last") == 0
    out = "".join(capsys.readouterr().out.split())
    assert "[/x]" in out and "$\\x$" in out and "[/x]boom" in out  # neither parsed nor dropped


def test_markdown_html_and_plots(store: Path, tmp_path: Path) -> None:
    md, page = tmp_path / "r.md", tmp_path / "r.html"
    assert _cli(store, "report", "last", "-o", str(md)) == 0
    assert _cli(store, "report", "last", "--format", "html", "-o", str(page)) == 0
    assert list((tmp_path / "r_plots").glob("*.png"))  # drawn: mathtext did not parse `$\x$`
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert" not in md.read_text()


def test_csv_cells_cannot_run_as_formulas(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    assert _cli(store, "report", "last", "--format", "csv", "-o", str(out)) == 0
    export = tmp_path / "cases.csv"
    assert _cli(store, "export", "last", "--format", "csv", "-o", str(export)) == 0
    files = [*out.glob("*.csv"), export]
    cells = [cell for f in files for row in csv.reader(f.open()) for cell in row]
    assert any(cell == "'" + HOSTILE for cell in cells)
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)
    # numbers are not text: a negative value keeps its sign
    assert all(not cell.startswith("-") or cell[1:2].isdigit() or cell == "-" for cell in cells)
