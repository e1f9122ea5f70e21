"""Latency–throughput reports over stored serving sweeps: series grouping, the Pareto front, the
figures, the published serving points with their ceiling, and the report section."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest
from matplotlib import cbook

from harness.cli.main import main
from reports.serving_plots import (
    add_load,
    goodput_vs_load,
    latency_throughput,
    pareto,
    pareto_front,
    plain,
    published_serving,
    published_serving_points,
    sweep_points,
    sweep_table,
    workload_template,
)
from results.frames import serving_frame
from results.store import Store
from tests.report_runs import FINGERPRINT, PROFILE

MS = 1_000_000
OUT = 32
SLO = {"ttft": 150.0, "tpot": 40.0}
#: engine → (TTFT ms, TPOT ms) at concurrency c: both grow with the load, the second engine faster.
ENGINES = {"vllm-server": lambda c: (40 + 20 * c, 10 + 3 * c),
           "llama.cpp-server": lambda c: (60 + 40 * c, 15 + 6 * c)}
LEVELS = (8, 1, 4, 2)  # stored out of order: the series must sort them


def _records(c: int, ttft: float, tpot: float, n: int) -> list[dict]:
    out = []
    for i in range(n):
        jitter = 1 + 0.2 * i / n  # later requests slower: p99 > p50
        first = int(ttft * jitter * MS)
        chunks = [first + int(k * tpot * jitter * MS) for k in range(OUT)]
        out.append({"request": i, "start_ns": 0, "status": "ok", "ttft_ns": chunks[0], "e2el_ns": chunks[-1],
                    "chunk_ns": chunks, "output_tokens": OUT, "output_expected": OUT, "prompt_tokens": 128,
                    "prompt_expected": 128, "counted_by": "usage"})
    return out


def write_sweep(path: Path, run_id: str = "sweep-1", models: dict[str, str] | None = None,
                slo: dict[str, float] | None = SLO, levels: tuple[int, ...] = LEVELS,
                rates: tuple[int, ...] = (), params: dict[str, dict] | None = None) -> str:
    """Two engines × the concurrency levels of c{C}:in128:out32:n{4C}, as the runner stores them
    (a case with its load doc, then a trial with its request records), and one failed case; with
    `rates`, the first engine also at r{R}:in128:out32:n{4R}; `params`: engine parameters per backend."""
    store = Store(path)
    store.add_run(run_id=run_id, started_at=1.0, finished_at=60.0, status="complete",
                  command="tokbench run (test)", profile=PROFILE, fingerprint=FINGERPRINT)
    index = 0
    loads = [(b, lat, "c", c) for b, lat in ENGINES.items() for c in levels]
    loads += [("vllm-server", ENGINES["vllm-server"], "r", r) for r in rates]
    for backend, latency, kind, c in loads:
        model = (models or {}).get(backend, "LiquidAI/LFM2-1.2B")
        n = 4 * c
        case_id = store.add_case(
            run_id=run_id, case_index=index, backend=backend, model=model,
            workload=f"{kind}{c}:in128:out32:n{n}", n_prompt=128, n_gen=OUT, n_depth=0,
            params=(params or {}).get(backend, {}),
            repetitions=1, status="ok",
            load={"concurrency": c if kind == "c" else None, "rate": c if kind == "r" else None,
                  "input_len": [128, 128], "output_len": [OUT, OUT], "requests": n, "slo": slo or {}})
        ttft, tpot = latency(c)
        records = _records(c, ttft, tpot, n)
        e2el = max(r["e2el_ns"] for r in records)
        wall_ns = (n // c) * e2el if kind == "c" else max(int(n / c * 1.05e9), e2el)  # rate: ~offered
        store.add_trial(case_id, 0, [{"phase": "out", "n_tokens": n * OUT, "duration_ns": wall_ns}], 1.0,
                        records)
        index += 1
    store.add_case(run_id=run_id, case_index=index, backend="vllm-server", model="LiquidAI/LFM2-1.2B",
                   workload="c16:in128:out32:n64", n_prompt=128, n_gen=OUT, n_depth=0, params={},
                   repetitions=1, status="error", error="server died", load={"concurrency": 16})
    store.close()
    return run_id


def _frame(path: Path, run_id: str = "sweep-1") -> pd.DataFrame:
    store = Store(path)
    return add_load(serving_frame(store, run_id), store)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    write_sweep(path)
    return path


def test_workload_template_drops_load_and_length_of_measurement() -> None:
    assert workload_template("c16:in512:out128:n200") == ("concurrency", 16, "c*:in512:out128")
    assert workload_template("r2.5:const:in64:out16:dur30s:warm4:chat") == ("rate", 2.5,
                                                                           "r*:const:in64:out16:chat")
    assert workload_template("c4:in128:out32:prefix64:turns3")[2] == "c*:in128:out32:prefix64:turns3"
    assert workload_template("imported-bench:n10") == (None, None, "imported-bench")


def test_each_engine_is_one_series_in_load_order(sweep: Path) -> None:
    points = sweep_points(_frame(sweep))
    assert len(points) == 8  # the failed case is left out
    assert points["series"].nunique() == 2
    for backend, g in points.groupby("backend"):
        assert g["series"].nunique() == 1 and g["load"].tolist() == [1, 2, 4, 8]
        assert set(g["template"]) == {"c*:in128:out32"}
        assert g["label"].iloc[0] == backend  # only the backend differs between the two series
        tpot = g["tpot_p50"].to_numpy()
        assert (np.diff(tpot) > 0).all() and (g["ttft_p99"] > g["ttft_p50"]).all()
    vllm = points[points["backend"] == "vllm-server"].set_index("load")
    ttft, tpot = ENGINES["vllm-server"](4)
    assert vllm.loc[4, "tpot_p50"] == pytest.approx(tpot * 1.1, rel=0.02)
    assert vllm.loc[4, "ttft_p50"] == pytest.approx(ttft * 1.1, rel=0.02)


def test_the_load_comes_from_the_stored_doc_when_the_name_lacks_it() -> None:
    frame = pd.DataFrame({"run_id": ["r"] * 2, "backend": ["b"] * 2, "model": ["m"] * 2,
                          "status": ["ok"] * 2, "workload": ["custom:n20", "custom:n10"],
                          "concurrency": [2, 1], "rate": [None, None], "output_tps": [20.0, 10.0],
                          "tpot_p50": [5.0, 4.0]})
    points = sweep_points(frame)
    assert points["load"].tolist() == [1, 2] and set(points["load_kind"]) == {"concurrency"}
    assert points["series"].nunique() == 1 and set(points["template"]) == {"custom"}


def test_pareto_front_is_exactly_the_non_dominated_points() -> None:
    points = [(1, 10), (2, 8), (2, 5), (3, 3), (1, 9), (3, 3), (math.nan, 20), (0.5, 10)]
    # (2, 5) loses to (2, 8); (1, 9) to (1, 10); (0.5, 10) to (1, 10); equal points both stay;
    # a NaN is not on the front and does not push (1, 10) off it
    assert pareto_front(points).tolist() == [True, True, False, True, False, True, False, False]
    assert pareto_front([]).tolist() == []
    assert pareto_front([(5, 5)]).tolist() == [True]


def test_sweep_table_marks_the_front(sweep: Path) -> None:
    table = sweep_table(_frame(sweep))
    assert list(table.groupby("series", sort=False)["load"].apply(list)) == [[1, 2, 4, 8]] * 2
    vllm = table[table["backend"] == "vllm-server"]
    assert vllm["tps_per_user"].tolist() == pytest.approx((1000 / vllm["tpot_p50"]).tolist())
    # aggregate tok/s grows and per-user tok/s falls with load: every level is on the front
    assert vllm["pareto"].all()
    # goodput: every request meets ttft ≤ 150 ms, tpot ≤ 40 ms at c1 and c2, none at c8
    assert vllm["goodput_share"].tolist()[:2] == [1.0, 1.0] and vllm["goodput_share"].iloc[-1] == 0


def test_plots_are_png_and_none_without_a_sweep(sweep: Path, tmp_path: Path) -> None:
    frame = _frame(sweep)
    for png in (latency_throughput(frame), pareto(frame), goodput_vs_load(frame)):
        assert png is not None and png.startswith(b"\x89PNG")
    for draw in (latency_throughput, pareto, goodput_vs_load):
        assert draw(pd.DataFrame()) is None
        assert draw(frame[frame["workload"] == "c4:in128:out32:n16"]) is None  # one level per series
    no_slo = tmp_path / "no_slo.db"
    write_sweep(no_slo, slo=None)
    assert goodput_vs_load(_frame(no_slo)) is None and latency_throughput(_frame(no_slo)) is not None


def test_concurrency_and_rate_sweeps_are_separate_series(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    write_sweep(path, rates=(4, 1, 2))
    frame = _frame(path)
    points = sweep_points(frame)
    rate = points[points["load_kind"] == "rate"]
    assert rate["series"].nunique() == 1 and rate["load"].tolist() == [1, 2, 4]
    assert set(rate["template"]) == {"r*:in128:out32"} and points["series"].nunique() == 3
    assert rate["request_rate"].tolist() == pytest.approx([1 / 1.05, 2 / 1.05, 4 / 1.05], rel=0.01)
    labels = set(points["label"])
    assert labels == {"vllm-server · c*:in128:out32", "llama.cpp-server · c*:in128:out32",
                      "vllm-server · r*:in128:out32"}
    png = goodput_vs_load(frame)  # one panel per load kind
    assert png is not None and png.startswith(b"\x89PNG")


def test_two_runs_of_one_backend_are_told_apart_by_their_settings(tmp_path: Path) -> None:
    """llama-cpp-python's server and llama.cpp's own are one backend: the legend names the engine
    parameters that differ between the runs (not the run ids), and nothing that does not."""
    path = tmp_path / "results.db"
    write_sweep(path, "run-a", params={"llama.cpp-server": {"threads": 2, "parallel": 1}})
    write_sweep(path, "run-b", params={"llama.cpp-server": {"threads": 2, "parallel": 16,
                                                            "server_binary": "/opt/bin/llama-server"}})
    store = Store(path)
    frame = pd.concat([add_load(serving_frame(store, r), store) for r in ("run-a", "run-b")],
                      ignore_index=True)
    llama = frame[frame["backend"] == "llama.cpp-server"]
    assert set(sweep_points(llama)["label"]) == {
        "llama.cpp-server · parallel=1", "llama.cpp-server · parallel=16 server_binary=llama-server"}
    # vllm-server ran alike in both: only the run tells those two apart, so every label shows it
    assert set(sweep_points(frame)["label"]) == {
        "run-a · llama.cpp-server · parallel=1", "run-a · vllm-server",
        "run-b · llama.cpp-server · parallel=16 server_binary=llama-server", "run-b · vllm-server"}


def test_hostile_model_names_are_drawn_as_text(tmp_path: Path) -> None:
    hostile = r"org/m $x^2$ [/x] $\frac{$"  # four $: mathtext would parse it, and \frac{ fails
    raw = matplotlib.figure.Figure()
    raw.subplots().set_title(hostile)
    with pytest.raises(ValueError):
        raw.savefig(tmp_path / "raw.png")
    assert not cbook.is_math_text(plain(hostile))
    path = tmp_path / "hostile.db"
    write_sweep(path, models={"vllm-server": hostile, "llama.cpp-server": "[bold red]x[/bold red]"})
    frame = _frame(path)
    assert set(sweep_points(frame)["label"]) == {f"vllm-server · {hostile}",
                                                  "llama.cpp-server · [bold red]x[/bold red]"}
    for png in (latency_throughput(frame), pareto(frame), goodput_vs_load(frame)):
        assert png is not None and png.startswith(b"\x89PNG")


def test_published_serving_points_and_their_ceiling(sweep: Path) -> None:
    from reports import comparison as cmp

    figures, catalog = cmp.reference()
    published = cmp.published_roofline(figures, catalog)
    points = published_serving_points(published)
    h100 = points[points["device_key"] == "h100-sxm5"]
    assert h100["batch"].tolist() == [1, 1024]  # the single stream and the 1,024-concurrent figure
    assert h100["claimed_high"].tolist() == [293, 26800]
    assert (h100["claimed_high"] <= h100["ceiling_tps"]).all()
    figure = next(f for f in figures if f.metric == "aggregate_tps")
    curves = {"LFM2-24B-A2B on H100": cmp.ceiling_curve(figure, catalog[figure.device], [1, 16, 256, 1024])}
    png = published_serving(_frame(sweep), published, curves)
    assert png is not None and png.startswith(b"\x89PNG")
    assert published_serving(_frame(sweep), published.iloc[0:0], curves) is None


def report(store: Path, *argv: str) -> int:
    return main(["--store", str(store), "report", *argv])


SWEEP_PLOTS = ["serving_goodput.png", "serving_latency.png", "serving_pareto.png"]


def test_markdown_report_has_the_section_and_writes_its_plots(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert report(sweep, "last", "-o", str(out)) == 0
    text = out.read_text()
    assert "## Serving\n" in text  # the serving table stays
    serving = text.split("## Serving\n", 1)[1].split("\n## ", 1)[0]
    assert "\n- goodput: requests meeting every SLO (ttft ≤ 150 ms, tpot ≤ 40 ms)\n" in serving  # a list
    section = text.split("## Serving: latency–throughput", 1)[1].split("\n## ", 1)[0]
    assert section.count("| vllm-server ") == 4 and section.count("| llama.cpp-server ") == 4
    for name in SWEEP_PLOTS:
        assert f"(r_plots/{name})" in section
        assert (tmp_path / "r_plots" / name).read_bytes().startswith(b"\x89PNG")
    assert "not drawn: Aggregate tok/s vs concurrency" in section  # published: --against only
    assert text.index("## Serving\n") < text.index("## Serving: latency–throughput") < text.index("## Plots")


def test_html_report_embeds_the_serving_plots(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert report(sweep, "last", "--against", "published", "--format", "html", "-o", str(out)) == 0
    page = out.read_text()
    section = page.split("<h2>Serving: latency–throughput</h2>", 1)[1].split("<h2>", 1)[0]
    for title in ("Latency vs throughput", "Per-user vs aggregate tok/s", "Goodput vs offered load",
                  "Aggregate tok/s vs concurrency, with the published serving figures"):
        assert f'<img alt="{title}" src="data:image/png;base64,' in section
    assert "not drawn" not in section
    serving = page.split("<h2>Serving</h2>", 1)[1].split("<h2>", 1)[0]
    assert "<li>goodput: requests meeting every SLO (ttft ≤ 150 ms, tpot ≤ 40 ms)</li>" in serving


def test_csv_has_the_sweep_table(sweep: Path, tmp_path: Path) -> None:
    assert report(sweep, "last", "--format", "csv", "-o", str(tmp_path / "csv")) == 0
    table = pd.read_csv(tmp_path / "csv" / "serving_sweep.csv")
    assert len(table) == 8 and {"load", "output_tps", "ttft_p99", "tpot_p50", "goodput_rate",
                                "pareto"} <= set(table.columns)


def test_no_section_without_a_sweep(tmp_path: Path) -> None:
    path = tmp_path / "one.db"
    write_sweep(path, levels=(4,))
    out = tmp_path / "r.md"
    assert report(path, "last", "-o", str(out)) == 0
    text = out.read_text()
    assert "## Serving\n" in text and "latency–throughput" not in text
