"""`tokbench report` over runs written into a store: sections, roofline figures, escaping, failed
cases, CSV tables, and `tokbench compare`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.cli.main import main
from tests.report_runs import BANDWIDTH_GBS, FINGERPRINT, decode_case, write_run

# tiny-llama F16 reads 723,520 B of weights + 512 B of KV per attended token (test_roofline.py); a
# tg16 decodes over a mean context of 8.5 tokens: 727,872 B/token, so 10 GB/s allows 13,738.6 tok/s.
CEILING = BANDWIDTH_GBS * 1e9 / (723_520 + 512 * 8.5)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    write_run(path, "run-1", [
        decode_case(CEILING / 2),
        decode_case(CEILING / 4, n_depth=256),
        decode_case(0, status="error", error="worker crashed (SIGSEGV)"),
        decode_case(100, model="synth:tiny-llama@F16 <script>alert(1)</script>"),
    ])
    return path


def report(store: Path, *argv: str) -> int:
    return main(["--store", str(store), "report", *argv])


def test_markdown_report_has_every_section(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert report(store, "last", "--against", "published", "-o", str(out)) == 0
    text = out.read_text()
    for title in ("## Measured", "## Roofline of the measured decode",
                  "## Published figures vs the physical limit", "## Closest to the limit, by engine",
                  "## Projection to the catalog devices",
                  "## Memory: fits / does not fit", "## Devices", "## Plots", "## Sources"):
        assert title in text
    assert "https://insiderllm.com/guides/liquidai-lfm2-local-guide/" in text
    assert "quant not stated: Q4_K_M assumed" in text
    plots = sorted(p.name for p in (tmp_path / "r_plots").iterdir())
    assert plots == ["batch.png", "depth.png", "memory.png", "roofline.png", "speed.png"]
    assert all((tmp_path / "r_plots" / p).read_bytes().startswith(b"\x89PNG") for p in plots)
    assert "![tok/s vs context depth](r_plots/depth.png)" in text


def test_failed_cases_are_reported_not_dropped(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report(store, "last") == 0
    captured = capsys.readouterr()
    assert "1 of 4 cases did not succeed" in captured.out
    assert "error: worker crashed (SIGSEGV)" in captured.out  # in the warning and in its table row
    assert "1 of 4 cases did not succeed" in captured.err  # and on the console


def test_roofline_fraction_of_a_measured_case(store: Path, tmp_path: Path) -> None:
    csv = tmp_path / "csv"
    assert report(store, "last", "--against", "published", "--format", "csv", "-o", str(csv)) == 0
    roof = pd.read_csv(tmp_path / "csv" / "measured_roofline.csv")
    first = roof.iloc[0]
    assert first["bytes_per_token"] == pytest.approx(727_872)
    assert first["ceiling_tps"] == pytest.approx(CEILING)
    assert first["fraction"] == pytest.approx(0.5)
    assert roof["status"].tolist() == ["ok", "ok", "error", "ok"]  # the failed case keeps its row
    assert bool(roof["cache_resident"].iloc[0])  # 724 kB of weights fit the 1 MiB L3 of the profile
    published = pd.read_csv(tmp_path / "csv" / "published.csv")
    assert len(published) == 10 and "OVER THE CEILING" not in set(published["verdict"])
    memory = pd.read_csv(csv / "memory.csv").set_index("what")
    int8 = memory.loc[memory.index.str.contains("INT8")].iloc[0]
    assert int8["check"].startswith("BELOW the Q8_0 model file")  # 722 MB < a 1.25 GB Q8_0 file
    f16_ram = memory[(memory["kind"] == "ram_min_bytes") & (memory["quant"] == "F16")].iloc[0]
    assert f16_ram["Samsung Galaxy S25"] == "does not fit" and f16_ram["NVIDIA H100 SXM5 80GB"] == "fits"
    written = {p.name for p in csv.iterdir()}
    assert {"measured.csv", "memory.csv", "devices.csv", "closest.csv"} <= written


def test_html_escapes_every_string(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert report(store, "last", "--against", "published", "--format", "html", "-o", str(out)) == 0
    page = out.read_text()
    assert "<script" not in page.lower()  # the model name is shown, escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('<img alt="') == 5 and page.count('src="data:image/png;base64,') == 5
    assert "http://" not in page.replace("https://", "") and "<link" not in page  # nothing fetched


def test_markdown_escapes_html_too(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report(store, "last") == 0
    assert "<script>" not in capsys.readouterr().out


def test_bad_input_is_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report(store, "last", "--format", "csv") == 2
    error = capsys.readouterr().err.strip()
    assert error == "tokbench: error: --format csv writes one file per table: give -o DIR"
    assert report(store, "no-such-run") == 2
    assert "matches no run" in capsys.readouterr().err


# -- compare ---------------------------------------------------------------------------------------------
def _two_runs(store: Path, fingerprint_b: dict | None = None) -> None:
    write_run(store, "run-a", [decode_case(100, trials=6), decode_case(50, n_depth=256, trials=6)], started=1)
    write_run(store, "run-b", [decode_case(90, trials=6), decode_case(0, n_depth=256, status="error",
                                                                      error="timed out")],
              started=2, fingerprint=fingerprint_b)


def test_compare_shows_ratios_and_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.db"
    _two_runs(path)
    assert main(["--store", str(path), "compare", "run-a", "run-b", "--format", "csv"]) == 0
    rows = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    ok = rows[rows["status"] == "ok"].iloc[0]
    assert ok["speed_ratio"] == pytest.approx(0.9) and ok["ci_low"] <= 0.9 <= ok["ci_high"]
    assert rows["status"].tolist()[1] == "B error: timed out"


def test_compare_refuses_other_hardware_unless_forced(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.db"
    other = {**FINGERPRINT, "hard": {**FINGERPRINT["hard"], "cpu_brand": "Other CPU"}}
    _two_runs(path, other)
    assert main(["--store", str(path), "compare", "run-a", "run-b"]) == 4
    out = capsys.readouterr().out
    assert "NOT COMPARABLE" in out and "cpu_brand: 'Test CPU' vs 'Other CPU'" in out
    assert main(["--store", str(path), "compare", "run-a", "run-b", "--force", "--format", "md"]) == 0
    captured = capsys.readouterr()
    assert "NOT COMPARABLE, shown because of --force" in captured.out  # in the document
    assert captured.err.count("NOT COMPARABLE, shown because of --force") == 2  # above and below
    assert "0.900" in captured.out


def test_a_run_from_a_backend_unknown_here_imports_shows_reports_and_compares(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reports read parameters and defaults from the store, never from a backend class."""
    defaults = {"threads": None, "npu_tiles": 8, "npu_clock": "auto"}
    source = tmp_path / "other-machine.db"
    for run_id, tps in (("npu-1", 200.0), ("npu-2", 400.0)):
        write_run(source, run_id, [decode_case(tps, backend="acme-npu", defaults=defaults,
                                               npu_tiles=4, npu_clock="auto")])
        assert main(["--store", str(source), "export", run_id, "-o", str(tmp_path / f"{run_id}.json")]) == 0
    here = tmp_path / "here.db"
    assert main(["--store", str(here), "import", str(tmp_path / "npu-1.json"),
                 str(tmp_path / "npu-2.json")]) == 0
    capsys.readouterr()
    assert main(["--store", str(here), "show", "npu-1"]) == 0
    shown = capsys.readouterr().out
    assert "acme-npu" in shown and "npu_tiles" in shown  # 4 differs from the stored default 8
    assert "npu_clock" not in shown  # at its default in every case: not a column
    assert report(here, "npu-1", "npu-2", "-o", str(tmp_path / "r.md")) == 0
    assert "acme-npu" in (tmp_path / "r.md").read_text()
    assert main(["--store", str(here), "compare", "npu-1", "npu-2", "--format", "csv"]) == 0
    rows = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert rows["speed_ratio"].iloc[0] == pytest.approx(2.0, rel=0.01)
