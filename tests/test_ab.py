"""`tokbench ab`: arm specs, the ABBA order, and a real llama.cpp A/B with two thread counts."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pandas as pd
import pytest

import results
from harness.cli.main import main
from harness.common.errors import TokbenchError
from harness.execution.ab import abba, pairs, parse_arm
from harness.execution.suite import Suite, expand
from harness.execution.workloads import parse_workload


def test_abba_order_balances_the_arms() -> None:
    assert "".join(abba(5)) == "ABBAABBAAB"
    for n in range(1, 12):
        order = abba(n)
        assert order.count("A") == order.count("B") == n


def test_arm_specs() -> None:
    arm = parse_arm("B", f"python={sys.executable} threads=2 n-batch=512 model=other.gguf")
    assert arm.python == sys.executable and arm.model == "other.gguf"
    assert dict(arm.params) == {"threads": 2, "n_batch": 512}
    assert parse_arm("A", "").params == ()


@pytest.mark.parametrize(("spec", "message"), [
    ("threads", "'threads' is not key=value"),
    ("thread=2", "unknown key 'thread' (did you mean 'threads'?)"),
    ("threads=0", "threads must be ≥ 1"),
    ("threads=1 threads=2", "threads is given twice"),
    ("python=/no/such/python", "interpreter /no/such/python does not exist"),
    ('model="unclosed', "No closing quotation"),
])
def test_bad_arm_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(TokbenchError) as info:
        parse_arm("A", spec)
    assert message in str(info.value) and str(info.value).startswith(f"--a {spec!r}")


def test_arms_apply_to_every_case_and_duplicates_collapse() -> None:
    cases = expand(["llama.cpp"], ["m.gguf"], [parse_workload("pp64"), parse_workload("tg16")],
                   {"threads": [1, 2]}, "test")
    got = pairs(Suite(cases), parse_arm("A", "threads=1"), parse_arm("B", "threads=2 model=n.gguf"))
    assert [(a.param_dict["threads"], b.param_dict["threads"], b.model, a.workload.name) for a, b in got] == [
        (1, 2, "n.gguf", "pp64"), (1, 2, "n.gguf", "tg16")]


def test_ab_refuses_fewer_trials_than_the_gate_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ab", "--a", "threads=1", "--b", "threads=2", "-r", "3"]) == 2
    assert "-r/--repetitions 3 is below min_trials 6" in capsys.readouterr().err


def test_ab_takes_a_suite_files_repetitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text('repetitions = 4\n[[benchmark]]\nmodels = ["m.gguf"]\nworkloads = ["tg8"]\n')
    assert main(["ab", "--a", "threads=1", "--b", "threads=2", str(suite)]) == 2
    assert "-r/--repetitions 4 is below min_trials 6" in capsys.readouterr().err


def slow_python(folder: Path) -> Path:
    """An arm interpreter whose llama.cpp is three times as slow (benchmarks/slowdown_worker.py
    at a 2/3 slowdown: a busy-wait after every prefill and every decoded token, twice as long as
    that span took). Anything but the worker (the probe cache's site-packages query) runs as
    plain Python."""
    worker = Path(__file__).resolve().parent.parent / "benchmarks" / "slowdown_worker.py"
    path = folder / "python-3x-slower"
    path.write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m backends.worker" ]; then\n'
                    f'  TOKBENCH_BENCH_SLOWDOWN=0.6666667 exec {sys.executable} {worker}\nfi\n'
                    f'exec {sys.executable} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.engine
@pytest.mark.parametrize(("slowed", "verdict", "exit_code"), [("B", "REGRESSION", 1), ("A", "IMPROVED", 0)])
def test_real_ab_calls_a_three_times_slower_arm(store_path: Path, tmp_path: Path, tiny_gguf: Path,
                                                slowed: str, verdict: str, exit_code: int) -> None:
    """One arm's llama.cpp made 3× slower: B slower is a REGRESSION (exit 1) of prefill and
    decode, A slower an improvement of B (exit 0), on any machine and under heavy load."""
    out = tmp_path / "ab.json"
    slow = f"python={slow_python(tmp_path)} threads=1"
    arms = {"A": "threads=1", "B": "threads=1", slowed: slow}
    # a tiny model's trials are short, so a loaded machine's noise can pass the default "too
    # noisy" limit (10%); 50% still keeps the noise floor clear of a 3× slowdown
    config = tmp_path / "tokbench-gate.toml"
    config.write_text("max_cv = 0.5\n")
    rc = main(["--store", str(store_path), "ab", "--a", arms["A"], "--b", arms["B"], "-m", str(tiny_gguf),
               "-w", "pp1024+tg256", "-r", "6", "--no-bandwidth", "--config", str(config),
               "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == doc["exit_code"] == exit_code
    assert [(e["metric"], e["verdict"]) for e in doc["entries"]] == [("prefill", verdict),
                                                                      ("decode", verdict)]
    for e in doc["entries"]:
        assert (len(e["samples"]["baseline"]), len(e["samples"]["current"])) == (6, 6)
        assert e["statistics"]["paired"]  # trial i of A with trial i of B
        ratio = e["statistics"]["ratio"]  # B's speed over A's: 1/3 or 3 by construction (less
        assert (0.1 < ratio < 0.5) if slowed == "B" else (2 < ratio < 10)  # exact under load)

    cases = results.load(store=store_path)
    assert set(cases["arm"]) == {"A", "B"} and (cases["status"] == "ok").all()
    trials = results.load(level="trials", store=store_path)
    trials = trials[trials["phase"] == "pp"].merge(
        pd.DataFrame(results.Store(store_path).cases(doc["current"]["run_id"]))[["case_id", "arm"]])
    order = "".join(trials.sort_values("started_at")["arm"])
    assert order == "ABBAABBAABBA"  # trials interleaved in ABBA blocks, as stored


@pytest.mark.engine
def test_real_ab_loads_each_arms_model_once(store_path: Path, tiny_gguf: Path) -> None:
    """Each arm keeps its worker across the cases that share its model load, as `run` does."""
    rc = main(["--store", str(store_path), "ab", "--a", "threads=1", "--b", "threads=2", "-m", str(tiny_gguf),
               "-w", "tg4,pp8,tg8", "-r", "6", "--no-bandwidth"])
    assert rc in (0, 1, 3)
    store = results.Store(store_path)
    rows = store.cases(store.resolve_run("last"))
    assert [(r["arm"], r["status"], r["model_reused"]) for r in rows] == [
        ("A", "ok", 0), ("B", "ok", 0), ("A", "ok", 1), ("B", "ok", 1), ("A", "ok", 1), ("B", "ok", 1)]
    assert all(r["load_s"] == 0 for r in rows[2:]) and rows[0]["load_s"] > 0 < rows[1]["load_s"]


@pytest.mark.engine
def test_real_gate_against_a_history_of_runs(store_path: Path, tmp_path: Path, tiny_gguf: Path) -> None:
    """Four real llama.cpp runs of one build: the newest judged against the three before it,
    which measure the run-to-run drift; one earlier run alone can only assume it."""
    files = []
    for i in range(4):
        files.append(tmp_path / f"run{i}.json")
        assert main(["--store", str(store_path), "run", "-m", str(tiny_gguf), "-w", "pp64+tg16", "-t", "1",
                     "-r", "6", "--no-bandwidth", "-o", str(files[-1])]) == 0
    out = tmp_path / "gate.json"
    rc = main(["--store", str(store_path), "gate", "--baseline", *map(str, files[:3]),
               "--current", str(files[3]), "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == doc["exit_code"] and rc in (0, 1)  # comparable, judged whichever way the noise fell
    assert len(doc["baseline"]["runs"]) == 3
    for e in doc["entries"]:
        assert e["statistics"]["drift"]["measured"] and e["statistics"]["drift"]["runs"] == 3
        assert not e["statistics"]["paired"]
        assert (len(e["samples"]["baseline"]), len(e["samples"]["current"])) == (18, 6)

    main(["--store", str(store_path), "gate", "--baseline", str(files[2]), "--current", str(files[3]),
          "--json", str(out)])
    assert {e["statistics"]["drift"]["measured"] for e in json.loads(out.read_text())["entries"]} == {False}
