"""The llama.cpp backend through the real engine, the runner's fault handling, and the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import gguf
import pandas as pd
import pytest

import results
from harness.cli.main import main
from harness.execution.runner import Hooks, Runner
from harness.execution.suite import Suite, expand
from harness.execution.workloads import parse_workload
from results.store import Store
from tests.conftest import GEMMA

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def all_workloads_run(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    """One run of every workload kind on gemma and on the tiny GGUF (shared by several tests)."""
    store = tmp_path_factory.mktemp("run") / "results.db"
    rc = main(["--store", str(store), "run", "-m", f"{tiny_gguf},{GEMMA}",
               "-w", "pp64,tg16,pp64+tg16,tg16@d64", "-t", "2", "-r", "3", "--no-bandwidth"])
    assert rc == 0
    return store


def test_every_workload_gives_positive_rates(all_workloads_run: Path) -> None:
    cases = results.load(store=all_workloads_run)
    assert len(cases) == 2 * (1 + 1 + 2 + 1)  # pp+tg reports both phases
    assert (cases["status"] == "ok").all()
    assert (cases["tps_median"] > 0).all() and (cases["n_trials"] == 3).all()
    assert set(cases["test"]) == {"pp64", "tg16", "tg16@d64"}
    assert (cases["model_n_params"] > 0).all() and (cases["peak_rss_bytes"] > 0).all()
    assert (cases["kv_cache_bytes"] > 0).all()
    gemma = cases[cases["model"] == GEMMA]
    assert gemma["model_desc"].iloc[0].startswith("gemma3 270M")
    assert gemma["quant"].iloc[0] == "Q4_K_M"


def test_prefill_is_faster_per_token_than_decode(all_workloads_run: Path) -> None:
    cases = results.load(store=all_workloads_run)
    both = cases[cases["workload"] == "pp64+tg16"]  # both phases timed in the same trials
    for model, rows in both.groupby("model"):
        rate = dict(zip(rows["phase"], rows["tps_median"], strict=True))
        assert rate["pp"] > rate["tg"], model


def test_raw_trials_and_decode_timestamps_are_stored(all_workloads_run: Path) -> None:
    trials = results.load(level="trials", store=all_workloads_run)
    decode = trials[trials["phase"] == "tg"]
    assert len(decode) == 2 * 3 * 3  # 2 models × 3 decode workloads × 3 trials
    for stamps, duration in zip(decode["token_ns"], decode["duration_ns"], strict=True):
        assert len(stamps) == 16 and stamps == sorted(stamps) and stamps[-1] == duration
    assert (trials["duration_ns"] > 0).all()


def test_peak_rss_is_the_workers_own(tiny_gguf: Path, store_path: Path) -> None:
    """The runner's own memory must not leak into a worker's peak (ru_maxrss survives exec)."""
    import numpy as np

    ballast = np.ones(2**30 // 8)  # 1 GiB resident in the runner while it starts workers
    suite = Suite(expand(["llama.cpp"], [str(tiny_gguf)], [parse_workload("tg4")], {}, "test"),
                  repetitions=1)
    outcome = Runner(Store(store_path), suite, measure_bandwidth=False).run("test")
    (case,) = Store(store_path).cases(outcome.run_id)
    assert ballast.sum() > 0
    assert 0 < case["peak_rss_bytes"] < 2**30 * 0.8


def test_grid_runs_each_combination(tiny_gguf: Path, store_path: Path) -> None:
    rc = main(["--store", str(store_path), "run", "-m", str(tiny_gguf), "-w", "pp32,tg8",
               "-t", "1,2", "-r", "2", "--no-bandwidth"])
    assert rc == 0
    cases = results.load(store=store_path)
    got = sorted(zip(cases["param_threads"], cases["test"], strict=True))
    assert got == [(1, "pp32"), (1, "tg8"), (2, "pp32"), (2, "tg8")]


def test_suite_file_run(tiny_gguf: Path, store_path: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(f'repetitions = 2\n[[benchmark]]\nmodels = ["{tiny_gguf}"]\n'
                     'workloads = ["pp16", "tg4@d16"]\nthreads = [1, 2]\n')
    out = tmp_path / "run.json"
    assert main(["--store", str(store_path), "run", str(suite), "--no-bandwidth", "-o", str(out)]) == 0
    assert "case" in capsys.readouterr().out  # the progress bar and the table
    doc = json.loads(out.read_text())
    assert len(doc["cases"]) == 4 and all(len(c["trials"]) == 2 for c in doc["cases"])


class _Pids(Hooks):
    """Records the worker that serves each case."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}

    def worker_started(self, index: int, pid: int) -> None:
        self.pids[index] = pid


def test_cases_of_one_model_share_a_worker_that_loads_it_once(gemma_path: Path, store_path: Path) -> None:
    workloads = [parse_workload(w) for w in ("pp32", "tg8", "pp64", "tg16")]
    grid = expand(["llama.cpp"], [GEMMA], workloads, {"threads": [1, 2]}, "test")
    hooks = _Pids()
    outcome = Runner(Store(store_path), Suite(grid, repetitions=2), hooks, measure_bandwidth=False).run("t")
    rows = Store(store_path).cases(outcome.run_id)
    assert [r["status"] for r in rows] == ["ok"] * 8
    assert len(set(hooks.pids.values())) == 1  # threads is a context parameter: one load serves all
    assert [r["model_reused"] for r in rows] == [0] + [1] * 7
    assert rows[0]["load_s"] > 0 and all(r["load_s"] == 0 for r in rows[1:])
    assert all(r["model_desc"] == rows[0]["model_desc"] for r in rows)
    assert all(r["memory"]["peak_rss_scope"] == "case" for r in rows)
    assert [r["params"]["threads"] for r in rows] == [1] * 4 + [2] * 4  # each case its own context
    assert len(Store(store_path).trials(outcome.run_id)) == 8 * 2  # 8 cases × 2 trials, one phase each

    isolated = Store(store_path)
    hooks = _Pids()
    outcome = Runner(isolated, Suite(grid[:3], repetitions=1, isolate=True), hooks,
                     measure_bandwidth=False).run("t")
    assert len(set(hooks.pids.values())) == 3
    assert [r["model_reused"] for r in isolated.cases(outcome.run_id)] == [0, 0, 0]


def test_a_parameter_that_reloads_the_model_starts_a_new_worker(tiny_gguf: Path, store_path: Path) -> None:
    grid = expand(["llama.cpp"], [str(tiny_gguf)], [parse_workload("tg4"), parse_workload("pp8")],
                  {"mmap": [True, False], "threads": [1]}, "test")
    hooks = _Pids()
    outcome = Runner(Store(store_path), Suite(grid, repetitions=1), hooks, measure_bandwidth=False).run("t")
    rows = Store(store_path).cases(outcome.run_id)
    assert [(r["params"]["mmap"], r["model_reused"]) for r in rows] == [(True, 0), (True, 1),
                                                                         (False, 0), (False, 1)]
    assert hooks.pids[0] == hooks.pids[1] != hooks.pids[2] == hooks.pids[3]


@pytest.fixture
def bogus(tmp_path: Path) -> Path:
    """A valid GGUF of an architecture llama.cpp does not know: it refuses to load it."""
    path = tmp_path / "bogus-arch.gguf"
    writer = gguf.GGUFWriter(str(path), "nosucharch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_model_that_fails_to_load_is_not_retried_for_each_case(bogus: Path, store_path: Path) -> None:
    hooks = _Pids()
    suite = Suite(expand(["llama.cpp"], [str(bogus)], [parse_workload("tg4"), parse_workload("pp8")],
                         {}, "test"), repetitions=1)
    outcome = Runner(Store(store_path), suite, hooks, measure_bandwidth=False).run("t")
    rows = Store(store_path).cases(outcome.run_id)
    assert [r["status"] for r in rows] == ["error", "error"] and len(hooks.pids) == 1
    assert "could not load" in rows[0]["error"] and "could not load" in rows[1]["error"]
    assert "not retried: the same model load failed for case 1" in rows[1]["error"]


class _Saboteur(Hooks):
    """Sends a signal to chosen workers after their first trial."""

    def __init__(self, plan: dict[int, signal.Signals]) -> None:
        self.plan, self.pids = plan, {}

    def worker_started(self, index: int, pid: int) -> None:
        self.pids[index] = pid

    def trial_done(self, index: int, trial: int) -> None:
        if trial == 0 and index in self.plan:
            os.kill(self.pids[index], self.plan[index])


def test_crashed_hung_and_killed_workers_become_error_records(gemma_path: Path, store_path: Path) -> None:
    cases = expand(["llama.cpp"], [GEMMA], [parse_workload("tg12")], {"threads": [2]}, "test") * 5
    # a generous timeout: the healthy cases must finish even on a loaded 2-core runner
    suite = Suite(cases, repetitions=3, timeout_s=40)
    plan = {1: signal.SIGSEGV, 2: signal.SIGSTOP, 3: signal.SIGKILL}
    store = Store(store_path)
    outcome = Runner(store, suite, _Saboteur(plan), measure_bandwidth=False).run("test")
    assert outcome.status == "failed" and [f[0] for f in outcome.failed] == [1, 2, 3]
    rows = store.cases(outcome.run_id)
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "ok"]
    assert "killed by SIGSEGV after 1/3 trials" in rows[1]["error"]
    assert "timed out after 40 s (1/3 trials done)" in rows[2]["error"]
    # a kill -9 is not called out of memory: the kernel counted no OOM kill
    assert "killed by SIGKILL (not out of memory" in rows[3]["error"]
    # one model load served case 0 and case 1; each fault ended its worker and a fresh one
    # (a new load) took the next case
    assert [r["model_reused"] for r in rows] == [0, 1, 0, 0, 0]
    trials = pd.DataFrame(store.trials(outcome.run_id))
    per_case = trials.groupby("case_id").size().tolist()
    assert per_case == [3, 1, 1, 1, 3]  # the trial finished before each fault is kept


def test_engine_that_rejects_the_model_gives_an_error_record(tiny_gguf: Path, bogus: Path,
                                                              store_path: Path) -> None:
    rc = main(["--store", str(store_path), "run", "-m", f"{bogus},{tiny_gguf}", "-w", "tg4",
               "-r", "1", "--no-bandwidth"])
    assert rc == 1
    rows = Store(store_path).cases(Store(store_path).resolve_run("last"))
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "could not load" in rows[0]["error"]


def test_run_killed_midway_keeps_finished_trials(store_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli.main", "--store", str(store_path), "run", "-m", GEMMA,
         "-w", "tg16", "-r", "200", "-t", "2", "--no-bandwidth"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    n_trials = 0
    while time.monotonic() < deadline and n_trials < 3:
        time.sleep(0.5)
        if store_path.exists():
            store = Store(store_path)
            runs = store.runs()
            n_trials = len(store.trials(runs[0]["run_id"])) if runs else 0
            store.close()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert n_trials >= 3
    store = Store(store_path)
    run = store.runs()[0]
    assert store.run_state(run) == "incomplete"
    assert len(store.trials(run["run_id"])) >= n_trials
    cases = results.load(store=store_path)
    assert cases["n_trials"].iloc[0] >= 3 and cases["tps_median"].iloc[0] > 0


def test_show_says_a_run_is_incomplete(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(store_path)
    store.add_run(run_id="r1", started_at=1.0, status="running", command="x",
                  runner_pid=2**22 + 12345, host=os.uname().nodename)
    assert main(["--store", str(store_path), "show", "last"]) == 0
    assert "run is incomplete" in capsys.readouterr().out


def test_export_import_round_trip(all_workloads_run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "run.json"
    assert main(["--store", str(all_workloads_run), "export", "last", "-o", str(exported)]) == 0
    other = tmp_path / "other.db"
    assert main(["--store", str(other), "import", str(exported)]) == 0
    before = results.load(store=all_workloads_run).drop(columns="case_id")
    after = results.load(store=other).drop(columns="case_id")
    pd.testing.assert_frame_equal(before, after)
    assert main(["--store", str(other), "import", str(exported)]) == 0  # a duplicate adds nothing
    assert results.load(store=other).drop(columns="case_id").equals(after)
    assert len(Store(other, create=False).runs()) == 1


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "md"])
def test_tabular_exports(all_workloads_run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"run.{fmt}"
    assert main(["--store", str(all_workloads_run), "export", "last", "--format", fmt, "-o", str(out)]) == 0
    text = out.read_text()
    if fmt == "csv":
        df = pd.read_csv(out)
        assert len(df) == 10 and {"tps_mean", "tps_stddev", "tps_ci_low", "param_threads"} <= set(df.columns)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        assert len(rows) == 10 and all(r["tps_median"] > 0 for r in rows)
    else:
        lines = text.splitlines()
        columns = [c.strip() for c in lines[0].strip("|").split("|")]
        assert columns[:7] == ["model", "size", "params", "backend", "threads", "test", "t/s"]
        assert len(lines) == 2 + 10 and "±" in lines[2]


def test_missing_engine_is_a_clear_error(tmp_path: Path, tiny_gguf: Path, store_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare-venv"
    venv.create(bare, with_pip=False)  # another interpreter, without llama-cpp-python
    rc = main(["--store", str(store_path), "run", "-m", str(tiny_gguf), "-w", "tg4",
               "--python", str(bare / "bin" / "python"), "--no-bandwidth"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokbench: error: llama.cpp backend needs llama-cpp-python")
    assert "pip install 'tokbench[llama]'" in err and "\n" not in err


def test_profile_reports_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--json", "--no-bandwidth"]) == 0
    doc = json.loads(capsys.readouterr().out)
    engine = doc["profile"]["engines"]["llama.cpp"]
    assert engine["engine"] == "llama-cpp-python" and "CPU :" in engine["system_info"]
    assert engine["ggml_commit"] and engine["ggml_version"]
    assert doc["profile"]["physical_cores"] >= 1 and doc["profile"]["ram_bytes"] > 0
    assert doc["fingerprint"]["hard"]["engines"]["llama.cpp"]["engine_version"] == engine["engine_version"]
    assert "kernel" in doc["fingerprint"]["soft"]


def test_report_over_a_real_run_reads_bytes_from_the_gguf(all_workloads_run: Path, tiny_gguf: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "csv"
    assert main(["--store", str(all_workloads_run), "report", "last", "--against", "published",
                 "--format", "csv", "-o", str(out)]) == 0
    roof = pd.read_csv(out / "measured_roofline.csv")
    assert (roof["shape_from"] == "from the GGUF's tensors").all()
    tiny = roof[(roof["model"] == str(tiny_gguf)) & (roof["test"] == "tg16")].iloc[0]
    assert tiny["bytes_per_token"] == 723_520 + 512 * 8.5  # as hand-computed in test_roofline.py
    assert roof["ceiling_tps"].isna().all()  # the run was made with --no-bandwidth: no ceiling
