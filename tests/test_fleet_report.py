"""`tokbench fleet`: the device × engine × model matrix over a store holding runs from several
machines. One real llama.cpp run on gemma; copies of it stand for the other hosts (their own
host, CPU, bandwidth and start time, the same measured trials, one copy twice as fast), so every
expected figure is computed here from the raw trials."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from harness.cli.main import main
from reports.fleet import parse_filters, select
from results.schema import CASE_FIELDS, RUN_FIELDS, names
from results.store import Store
from tests.conftest import GEMMA

RYZEN = "AMD RYZEN AI MAX+ 395 w/ Radeon 8060S"  # the catalog's ryzen-ai-max-plus-395
XEON = "Intel(R) Xeon(R) Platinum 8480+"
#: a host and model name that are HTML, Markdown, mathtext (`$\x$` does not parse) and a formula
HOSTILE = "=cmd()| a | <script>alert(1)</script> [/x] `tick` $\\x$ $x^2$ *b*"
DAY = 86400.0
T2021 = 1609459200.0  # 2021-01-01 UTC


def _copy(store: Store, run_id: str, new_id: str, host: str, cpu: str, bandwidth: float | None,
          started: float, speedup: float = 1.0, **case_changes: Any) -> None:
    """The run again as another machine's: its host, CPU, bandwidth and start time; its trials
    `speedup` times faster."""
    run = {k: v for k, v in store.run(run_id).items() if k in names(RUN_FIELDS)}
    profile = {**run["profile"], "cpu_brand": cpu,
               "memory_bandwidth": {"copy_gbps": bandwidth} if bandwidth else None}
    store.add_run(**{**run, "run_id": new_id, "host": host, "started_at": started,
                     "finished_at": started + 60, "profile": profile})
    for case in store.cases(run_id):
        fields = {k: v for k, v in case.items() if k in names(CASE_FIELDS) and k != "case_id"}
        case_id = store.add_case(**{**fields, "run_id": new_id, **case_changes})
        for t in store.trials(run_id, case["case_id"]):
            store.add_trial(case_id, t["trial"], [{**t, "duration_ns": round(t["duration_ns"] / speedup)}],
                            t["started_at"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with runs from five machines: this one (real, no bandwidth measured), alpha (a Ryzen
    AI Max+ 395: two gemma runs in 2021, the second twice as fast, and a synth:lfm2-1.2b run in
    2022), beta (a Xeon, 2022), a host whose every name is hostile (2022), and gamma, whose only
    case is an imported aggregate without samples."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.db"
    assert main(["--store", str(path), "run", "-m", GEMMA, "-w", "pp16+tg4", "-r", "2", "-t", "1",
                 "--no-bandwidth"]) == 0
    store = Store(path)
    real = store.resolve_run("last")
    _copy(store, real, "alpha-1", "alpha", RYZEN, 200.0, T2021 + 59 * DAY)
    _copy(store, real, "alpha-2", "alpha", RYZEN, 210.0, T2021 + 243 * DAY, speedup=2.0)
    _copy(store, real, "alpha-lfm2", "alpha", RYZEN, 200.0, T2021 + 424 * DAY,
          model="synth:lfm2-1.2b@Q4_K_M", model_desc="lfm2 1.2B Q4_K - Medium", model_path=None,
          model_id=None)
    _copy(store, real, "beta-1", "beta", XEON, 50.0, T2021 + 396 * DAY)
    _copy(store, real, "hostile-1", HOSTILE, "Hostile CPU", 100.0, T2021 + 516 * DAY, model_desc=HOSTILE)
    store.add_run(run_id="gamma-1", started_at=T2021 + 400 * DAY, status="complete", host="gamma",
                  command="imported", profile={"cpu_brand": "Gamma CPU"},
                  source={"tool": "llama-bench", "samples": False})
    store.add_case(run_id="gamma-1", case_index=0, backend="llama.cpp", model=GEMMA, workload="tg128",
                   n_prompt=0, n_gen=128, n_depth=0, params={"threads": 1}, repetitions=5, status="ok",
                   aggregate={"phase": "tg", "tps_mean": 40.0, "n_trials": 5})
    store.close()
    return path


def tokbench(*argv: str) -> int:
    return main(list(argv))


def matrix_csv(store: Path, capsys: pytest.CaptureFixture[str], *where: str) -> pd.DataFrame:
    capsys.readouterr()
    argv = [a for w in where for a in ("--where", w)]
    assert tokbench("--store", str(store), "fleet", *argv, "--format", "csv") == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False, na_values=[""])
    unguard = lambda v: v[1:] if isinstance(v, str) and v.startswith("'=") else v  # noqa: E731
    return frame.map(unguard)  # the formula guard of text cells, undone to compare names


def raw_tps(store: Store, run_ids: list[str], model_desc: str, phase: str) -> tuple[list[float], list[str]]:
    """Every trial's tok/s of the runs' cases of that model and phase, straight from the store,
    with the run each came from."""
    out, runs = [], []
    for run_id in run_ids:
        for case in store.cases(run_id):
            if case["model_desc"] != model_desc:
                continue
            for t in store.trials(run_id, case["case_id"]):
                if t["phase"] == phase:
                    out.append(t["n_tokens"] / (t["duration_ns"] / 1e9))
                    runs.append(run_id)
    return out, runs


# -- the matrix ----------------------------------------------------------------------------------------
@pytest.mark.engine
def test_one_row_per_device_engine_model_test(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = matrix_csv(fleet, capsys)
    key = ["host", "cpu", "gpu", "engine", "model", "quant", "test"]
    assert not matrix.duplicated(key).any()
    hosts = set(matrix["host"])  # and this machine's, which made the real run
    assert {"alpha", "beta", HOSTILE} < hosts and len(hosts) == 4 and "gamma" not in hosts
    tests = {"pp16 (pp16+tg4)", "tg4 (pp16+tg4)"}
    by_device = matrix.groupby(["host", "model"])["test"].agg(set)
    assert all(t == tests for t in by_device)
    assert len(matrix) == 2 * (4 + 1)  # gemma on four hosts, lfm2 on alpha, two tests each
    assert set(matrix["engine"]) == {matrix["engine"].iloc[0]}
    assert re.fullmatch(r"llama\.cpp \(llama-cpp-python [0-9.]+\)", matrix["engine"].iloc[0])
    assert (matrix["gpu"] == "none").all() and (matrix["peak_rss_bytes"] > 0).all()


@pytest.mark.engine
def test_medians_pool_every_trial_of_the_row(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = matrix_csv(fleet, capsys)
    store = Store(fleet, create=False)
    for _, row in matrix.iterrows():
        run_ids = row["runs"].split("; ")
        rates, _ = raw_tps(store, run_ids, row["model"], row["phase"])
        assert row["tps_median"] == pytest.approx(float(np.median(rates)), rel=1e-12)
        assert row["n_trials"] == len(rates) and row["n_runs"] == len(run_ids)
    alpha = matrix[(matrix["host"] == "alpha") & matrix["model"].str.startswith("gemma")]
    assert (alpha["n_runs"] == 2).all() and (alpha["n_trials"] == 4).all()
    # pooled, not a median of the two runs' medians (the second run is twice as fast)
    tg = alpha[alpha["phase"] == "tg"].iloc[0]
    medians = [np.median(raw_tps(store, [r], tg["model"], "tg")[0]) for r in ("alpha-1", "alpha-2")]
    assert tg["tps_median"] != pytest.approx(np.median(medians))


@pytest.mark.engine
def test_roofline_fraction_and_published_figures(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix = matrix_csv(fleet, capsys)
    store = Store(fleet, create=False)
    decode = matrix[matrix["phase"] == "tg"].set_index(["host", "model"])
    alpha = decode.loc["alpha"]
    row = alpha[alpha.index.str.startswith("gemma")].iloc[0]
    # each trial against its own run's ceiling: bandwidth (200 and 210 GB/s) ÷ bytes per token
    rates, runs = raw_tps(store, ["alpha-1", "alpha-2"], row.name, "tg")
    bandwidth = {"alpha-1": 200.0, "alpha-2": 210.0}
    fractions = [r / (bandwidth[run] * 1e9 / row["bytes_per_token"])
                 for r, run in zip(rates, runs, strict=True)]
    assert row["fraction"] == pytest.approx(float(np.median(fractions)))
    assert row["bandwidth_gbs"] == pytest.approx(205.0) and 0 < row["fraction"] < 1
    assert np.isnan(matrix.loc[(matrix["phase"] == "pp"), "fraction"]).all()  # decode only
    other = matrix[~matrix["host"].isin(["alpha", "beta", HOSTILE])]
    assert np.isnan(other["fraction"]).all()  # this machine's run measured no bandwidth
    # the published LFM2.5-1.2B figure for the Ryzen AI Max+ 395 (235 tok/s, Q4_K_M assumed)
    lfm2 = alpha.loc["lfm2 1.2B Q4_K - Medium"]
    assert lfm2["published_figure"] == "lfm2.5-1.2b-thinking/ryzen-ai-max-plus-395/decode"
    assert lfm2["measured_over_published"] == pytest.approx(lfm2["tps_median"] / 235)
    assert bool(lfm2["published_same_device"]) and lfm2["n_published"] > 1  # other devices listed too
    assert lfm2["fraction_over_published"] == pytest.approx(lfm2["fraction"] / lfm2["published_fraction"])
    beta = decode.loc[("beta", "gemma3 270M Q4_K - Medium")]
    assert pd.isna(beta["published"]) and pd.isna(beta["measured_over_published"])  # none for gemma


@pytest.mark.engine
def test_filters_select_exactly_their_hosts(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(fleet, create=False)

    def hosts(*where: str) -> set[str]:
        return {rd.run.get("host") for rd in select(store, parse_filters(where)).runs}

    everyone = hosts()
    assert len(everyone) == 4 and "gamma" not in everyone  # gamma: an aggregate without samples
    assert hosts("host=alpha") == {"alpha"}
    assert hosts("host=ALPHA", "host=beta") == {"alpha", "beta"}  # a key repeated: either value
    assert hosts("cpu=ryzen ai max") == {"alpha"} and hosts("cpu=xeon") == {"beta"}
    assert hosts("cpu=xeon", "host=alpha") == set()  # different keys: both
    assert hosts("until=2021-12-31") == {"alpha"}
    assert hosts("since=2022-01-01") == everyone  # alpha's lfm2 run is from 2022
    assert hosts("since=2022-01-01", "model=gemma") == everyone - {"alpha"}
    assert hosts("since=2021-03-01T00:00", "until=2021-03-02") == {"alpha"}
    assert hosts("gpu=none") == everyone and hosts("gpu=H100") == set()
    assert [rd.run_id for rd in select(store, parse_filters(["host=alpha", "until=2021-06-01"])).runs] == [
        "alpha-1"]
    matrix = matrix_csv(fleet, capsys, "cpu=xeon")
    assert set(matrix["host"]) == {"beta"} and len(matrix) == 2


@pytest.mark.engine
def test_aggregate_only_cases_are_left_out_and_said(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tokbench("--store", str(fleet), "fleet", "--where", "host=gamma") == 0
    captured = capsys.readouterr()
    assert "1 imported case phase(s) kept no per-trial samples" in captured.out
    assert "no run matches host=gamma" in captured.err


def test_unknown_filter_key_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "none.db")  # filters are checked before the store is opened
    assert tokbench("--store", store, "fleet", "--where", "colour=red") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tokbench: error: --where 'colour=red': unknown key")
    assert "valid keys: host, cpu, gpu, engine, backend, model, since, until, status" in err
    assert tokbench("--store", store, "fleet", "--where", "since=last tuesday") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "since='last tuesday': not an ISO date" in err
    assert tokbench("--store", store, "fleet", "--where", "host") == 2
    assert "give KEY=VALUE" in capsys.readouterr().err


# -- hostile names -------------------------------------------------------------------------------------
@pytest.mark.engine
def test_hostile_names_are_data_in_every_format(fleet: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    md, page, tables = tmp_path / "f.md", tmp_path / "f.html", tmp_path / "csv"
    for fmt, out in (("md", md), ("html", page), ("csv", tables)):
        assert tokbench("--store", str(fleet), "fleet", "--format", fmt, "-o", str(out)) == 0
    html_text = page.read_text()
    assert "<script" not in html_text.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert html_text.count('src="data:image/png;base64,') == 1
    text = md.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Markdown's own syntax is escaped: no link, code span, emphasis or $math$ from a host name
    inert = r"=cmd()\| a \| &lt;script&gt;alert(1)&lt;/script&gt; \[/x\] \`tick\` \$\\x\$ \$x^2\$ \*b\*"
    assert text.count(inert) >= 3  # the matrix (host and model), devices, runs
    assert "gemma3 270M Q4_K - Medium" in text  # intraword underscores left as written
    png = tmp_path / "f_plots" / "decode.png"
    assert png.read_bytes().startswith(b"\x89PNG")  # drawn: `$\x$` was not parsed as mathtext
    cells = [cell for f in tables.glob("*.csv") for row in csv.reader(f.open()) for cell in row]
    assert {f.name for f in tables.glob("*.csv")} == {"matrix.csv", "devices.csv", "runs.csv"}
    assert "'" + HOSTILE in cells
    assert not any(cell.startswith(("=", "+", "@")) for cell in cells)


@pytest.mark.engine
def test_the_same_report_from_a_postgres_fleet_store(fleet: Path, pg_url: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Every run pushed from the SQLite store into PostgreSQL gives the same matrix, byte for
    byte, hostile names included."""
    assert tokbench("--store", str(fleet), "push", "--all", "--to", pg_url) == 0
    capsys.readouterr()
    for where in ([], ["host=alpha", "since=2022-01-01"]):
        argv = [a for w in where for a in ("--where", w)]
        assert tokbench("--store", str(fleet), "fleet", *argv, "--format", "csv") == 0
        lite = capsys.readouterr().out
        assert tokbench("--store", pg_url, "fleet", *argv, "--format", "csv") == 0
        assert capsys.readouterr().out == lite and lite.count("\n") > 2
