"""The HTML report in headless Chromium: no console errors, every plot decoded, a screenshot.

The screenshot goes to $TOKBENCH_ARTIFACTS (default tests/artifacts/, git-ignored). Chromium is
found at $TOKBENCH_CHROMIUM, /usr/bin/chromium or on PATH; without one the test skips, except when
$TOKBENCH_REQUIRE_BROWSER is set (CI sets it, and .ci/run installs Chromium first).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from harness.cli.main import main
from tests.report_runs import decode_case, write_run

ARTIFACTS = Path(os.environ.get("TOKBENCH_ARTIFACTS") or Path(__file__).parent / "artifacts")


def _chromium() -> str | None:
    for candidate in (os.environ.get("TOKBENCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser_path() -> str:
    path = _chromium()
    if path is None:
        if os.environ.get("TOKBENCH_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found and $TOKBENCH_REQUIRE_BROWSER is set: apt-get install chromium")
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set $TOKBENCH_CHROMIUM)")
    return path


def test_html_report_renders_in_chromium(tmp_path: Path, browser_path: str) -> None:
    store = tmp_path / "results.db"
    write_run(store, "browser-run", [
        decode_case(40, model="synth:lfm2-350m@Q4_0"),
        decode_case(36, model="synth:lfm2-350m@Q4_0", n_depth=1024),
        decode_case(30, model="synth:lfm2-350m@Q4_0", n_depth=4096),
        decode_case(120, model="synth:lfm2-350m@Q4_0", batch=4),
        decode_case(0, model="synth:lfm2-350m@Q4_0 <b>bold</b>", status="error", error="out of memory"),
    ])
    page_path = tmp_path / "report.html"
    assert main(["--store", str(store), "report", "last", "--against", "published", "--format", "html",
                 "-o", str(page_path)]) == 0

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(f"network request: {r.url}")
                    if not r.url.startswith(("file:", "data:")) else None)
            page.goto(page_path.as_uri())
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            heading = page.inner_text("h1")
            warning = page.inner_text(".warn")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(widths) == 5 and all(w > 0 for w in widths)
    assert heading == "tokbench report"
    assert "1 of 5 cases did not succeed" in warning and "<b>bold</b>" in warning  # shown as text
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
