"""`tokbench gate` on runs written straight into a store: every exit code, the thresholds file,
accepted regressions, fingerprints, and the JSON / JUnit / step-summary outputs parsed back."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.cli.main import main
from harness.common.errors import TokbenchError
from harness.gate.config import load_gate_config
from results.store import Store

FINGERPRINT = {
    "hard": {"cpu_brand": "Test CPU", "arch": "x86_64", "physical_cores": 2, "ram_gib": 24, "gpus": [],
             "engines": {"llama.cpp": {"engine": "llama-cpp-python", "engine_version": "0.3.36"}}},
    "soft": {"kernel": "6.1", "os": "Linux", "python": "CPython 3.12", "gpu_driver": None, "cuda": None},
}
PP, TG = 512, 128  # tokens per trial of the synthetic pp512+tg128 case


def _samples(median: float, cv: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(median, median * cv, n)


def write_run(store: Path, run_id: str, started: float, cases: list[dict[str, Any]],
              fingerprint: dict[str, Any] | None = None) -> str:
    """A run of pp512+tg128 cases whose trials have the given prefill and decode tok/s."""
    db = Store(store)
    db.add_run(run_id=run_id, started_at=started, status="complete", command="tokbench run test",
               fingerprint=fingerprint or FINGERPRINT)
    for index, spec in enumerate(cases):
        case_id = db.add_case(
            run_id=run_id, case_index=index, backend="llama.cpp", model="m.gguf", model_id="123-abc",
            workload="pp512+tg128", n_prompt=PP, n_gen=TG, n_depth=0,
            params={"threads": spec.get("threads", 2)}, repetitions=len(spec["pp"]),
            status=spec.get("status", "ok"), error=spec.get("error"), arm=spec.get("arm"),
        )
        for trial, (pp, tg) in enumerate(zip(spec["pp"], spec["tg"], strict=True)):
            db.add_trial(case_id, trial, [
                {"phase": "pp", "n_tokens": PP, "duration_ns": int(PP / pp * 1e9)},
                {"phase": "tg", "n_tokens": TG, "duration_ns": int(TG / tg * 1e9)},
            ], started_at=started + trial)
    db.close()
    return run_id


def case(pp_shift: float = 0.0, tg_shift: float = 0.0, cv: float = 0.01, n: int = 10, seed: int = 0,
         **extra: Any) -> dict[str, Any]:
    return {"pp": _samples(700 * (1 + pp_shift), cv, n, seed),
            "tg": _samples(48 * (1 + tg_shift), cv, n, seed + 1), **extra}


HISTORY = ("base-a", "base-b", "base-run")  # three baseline runs: run-to-run drift is measured


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    for i, run_id in enumerate(HISTORY):
        write_run(path, run_id, 0.8 + i / 10, [case(seed=100 * i)])
    return path


def gate(store: Path, *argv: str) -> int:
    return main(["--store", str(store), "gate", "--baseline", *HISTORY, *argv])


def test_same_speed_passes(store: Path) -> None:
    write_run(store, "cur-run", 2.0, [case(seed=10)])
    assert gate(store) == 0


def test_slowdown_is_a_regression(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10)])
    assert gate(store, "--current", "cur-run") == 1
    out = capsys.readouterr().out
    assert "REGRESSION: llama.cpp m.gguf pp512+tg128 threads=2 decode tok/s" in out
    assert "measured over 3 baseline runs" in out


def test_a_single_baseline_run_assumes_run_to_run_drift(store: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """One stored run cannot show its own drift: run_to_run_cv (4%) is assumed, which hides a
    10% slowdown that three runs expose; a quieter machine says so in the thresholds file."""
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10)])
    single = ["--store", str(store), "gate", "--baseline", "base-run"]
    assert main(single) == 0
    assert "4.0% assumed (run_to_run_cv; 1 baseline run, give ≥ 3 to measure it)" in capsys.readouterr().out
    assert main([*single, "--strict"]) == 3
    quiet = _config(tmp_path, 'run_to_run_cv = "1%"\n')
    assert main([*single, "--config", str(quiet)]) == 1
    write_run(store, "much-slower", 3.0, [case(tg_shift=-0.30, seed=10)])
    assert main([*single, "--current", "much-slower"]) == 1


def test_baseline_history_that_drifts_widens_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "drifty.db"
    for i, shift in enumerate((-0.06, 0.0, 0.06)):  # the same build, three jobs, ±6% apart
        write_run(path, f"base-{i}", 1.0 + i, [case(tg_shift=shift, seed=i)])
    write_run(path, "cur-run", 9.0, [case(tg_shift=-0.10, seed=10)])
    out = tmp_path / "g.json"
    argv = ["--store", str(path), "gate", "--baseline", "base-0", "base-1", "base-2", "--json", str(out)]
    assert main(argv) == 0
    decode = next(e for e in json.loads(out.read_text())["entries"] if e["metric"] == "decode")
    assert decode["verdict"] == "INCONCLUSIVE"
    drift = decode["statistics"]["drift"]
    assert drift["runs"] == 3 and drift["measured"] and drift["cv"] == pytest.approx(0.06, abs=0.01)
    assert decode["statistics"]["ci_low"] < 0.9 * (1 - 0.06)  # much wider than the trials' 1%
    assert len(decode["samples"]["baseline"]) == 30  # all three runs' trials


def test_one_incomparable_run_in_the_history_refuses(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = json.loads(json.dumps(FINGERPRINT))
    other["hard"]["physical_cores"] = 4
    write_run(store, "odd-run", 1.5, [case(seed=7)], fingerprint=other)
    write_run(store, "cur-run", 2.0, [case(seed=10)])
    assert gate(store, "odd-run", "--current", "cur-run") == 4
    assert "baseline run odd-run: hard fingerprint fields differ" in capsys.readouterr().out


def test_improvement_exits_zero(store: Path) -> None:
    write_run(store, "cur-run", 2.0, [case(pp_shift=+0.10, tg_shift=+0.10, seed=10)])
    out = Path(store.parent / "g.json")
    assert gate(store, "--json", str(out)) == 0
    assert {e["verdict"] for e in json.loads(out.read_text())["entries"]} == {"IMPROVED"}


def test_noise_is_inconclusive_and_blocks_only_with_strict(store: Path) -> None:
    write_run(store, "cur-run", 2.0, [case(cv=0.25, seed=10)])
    assert gate(store) == 0
    assert gate(store, "--strict") == 3


def test_a_failed_case_is_an_error(store: Path) -> None:
    write_run(store, "cur-run", 2.0, [case(seed=10, n=2, status="error", error="worker killed by SIGSEGV")])
    assert gate(store) == 2


@pytest.mark.parametrize("argv", [
    ["--current", "no-such-run"],
    ["--current", "base-run"],  # also a baseline
    ["base-a", "--current", "cur-run"],  # a baseline twice
    ["--current", "missing.json"],
    ["--config", "absent.toml"],
])
def test_bad_input_is_one_line_and_exit_2(store: Path, argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_run(store, "cur-run", 2.0, [case(seed=10)])
    assert gate(store, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokbench: error:") and "\n" not in err


def test_hard_fingerprint_mismatch_refuses(store: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    other = json.loads(json.dumps(FINGERPRINT))
    other["hard"]["cpu_brand"] = "Other CPU"
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.3, seed=10)], fingerprint=other)
    junit = tmp_path / "j.xml"
    assert gate(store, "--junit", str(junit)) == 4
    assert "cpu_brand: 'Test CPU' vs 'Other CPU'" in capsys.readouterr().out
    root = ET.parse(junit).getroot()
    assert len(root.findall(".//testcase")) == 2 and len(root.findall(".//testcase/skipped")) == 2


def test_soft_fingerprint_mismatch_only_warns(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = json.loads(json.dumps(FINGERPRINT))
    other["soft"]["kernel"] = "6.8"
    write_run(store, "cur-run", 2.0, [case(seed=10)], fingerprint=other)
    assert gate(store) == 0
    assert "soft fingerprint field differs, kernel: '6.1' vs '6.8'" in capsys.readouterr().out


def test_missing_baseline_is_exit_4(store: Path, tmp_path: Path) -> None:
    write_run(store, "cur-run", 2.0, [case(seed=10)])
    assert main(["--store", str(store), "gate", "--baseline", str(tmp_path / "baseline.json")]) == 4
    assert main(["--store", str(store), "gate", "--baseline", "last~5"]) == 4
    assert main(["--store", str(store), "gate"]) == 4  # not an A/B run, and no --baseline


def test_case_without_a_baseline_case(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(store, "cur-run", 2.0, [case(seed=10), case(seed=11, threads=1)])
    assert gate(store) == 0
    assert "2 case × metric(s) have no baseline" in capsys.readouterr().out
    assert gate(store, "--strict") == 3


def test_baseline_from_exported_files(store: Path, tmp_path: Path) -> None:
    files = [str(tmp_path / f"{run_id}.json") for run_id in HISTORY]
    for run_id, file in zip(HISTORY, files, strict=True):
        assert main(["--store", str(store), "export", run_id, "-o", file]) == 0
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10)])
    out = tmp_path / "g.json"
    assert main(["--store", str(store), "gate", "--baseline", *files[::-1], "--json", str(out)]) == 1
    assert json.loads(out.read_text())["baseline"]["runs"] == list(HISTORY)  # oldest first


def test_outputs_parse_back(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10), case(cv=0.3, seed=20, threads=1)])
    write_run(store, "base-2", 1.5, [case(seed=0), case(seed=1, threads=1)])
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    paths = {k: tmp_path / f"gate.{k}" for k in ("json", "xml", "md")}
    rc = main(["--store", str(store), "gate", "--baseline", "base-a", "base-b", "base-2",
               "--current", "cur-run",
               "--json", str(paths["json"]), "--junit", str(paths["xml"]), "--markdown", str(paths["md"])])
    assert rc == 1

    doc = json.loads(paths["json"].read_text())
    assert doc["format"] == "tokbench-gate" and doc["exit_code"] == 1
    assert doc["baseline"]["runs"] == ["base-a", "base-b", "base-2"]
    by = {(e["case"], e["metric"]): e for e in doc["entries"]}
    decode = by["llama.cpp m.gguf pp512+tg128 threads=2", "decode"]
    assert decode["verdict"] == "REGRESSION" and len(decode["samples"]["current"]) == 10
    assert decode["thresholds"]["fail"] == 0.05 and decode["statistics"]["ci_high"] < 0.95
    assert by["llama.cpp m.gguf pp512+tg128 threads=1", "decode"]["verdict"] == "INCONCLUSIVE"

    root = ET.parse(paths["xml"]).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "1"
    failed = [tc for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert [(tc.get("classname"), tc.get("name")) for tc in failed] == [
        ("llama.cpp m.gguf pp512+tg128 threads=2", "decode tok/s")]
    assert len([tc for tc in root.iter("testcase") if tc.find("skipped") is not None]) == 2

    text = summary.read_text()
    assert text.startswith("earlier step\n## tokbench gate: REGRESSION (exit 1)")
    table = [line for line in text.splitlines() if line.startswith("| llama.cpp")]
    assert len(table) == 4 and all(line.count(" | ") == 8 for line in table)
    assert "❌ REGRESSION" in text
    assert paths["md"].read_text() == text.removeprefix("earlier step\n")


# -- the thresholds file ------------------------------------------------------------------------
def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokbench-gate.toml"
    path.write_text(text)
    return path


def test_overrides_and_acceptances(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10)])
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    past = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    loose = _config(tmp_path, '[[override]]\ncase = "*threads=2"\nmetric = "decode"\nfail = "15%"\n')
    assert gate(store, "--config", str(loose)) == 0

    accepted = _config(tmp_path, f'[[accepted]]\ncase = "*pp512+tg128*"\nmetric = "decode"\n'
                                 f'reason = "new sampler, #42"\nexpires = {future}\n')
    assert gate(store, "--config", str(accepted)) == 0
    assert f"REGRESSION (accepted until {future}: new sampler, #42)" in capsys.readouterr().out

    expired = _config(tmp_path, f'[[accepted]]\ncase = "*"\nreason = "old"\nexpires = {past}\n')
    assert gate(store, "--config", str(expired)) == 1
    assert f"expired on {past} (old); it fails the gate again" in capsys.readouterr().out


def test_default_config_file_is_picked_up_from_the_working_directory(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(store, "cur-run", 2.0, [case(tg_shift=-0.10, seed=10)])
    monkeypatch.chdir(tmp_path)
    assert gate(store) == 1
    _config(tmp_path, 'fail = "20%"\nwarn = "10%"\n')
    assert gate(store) == 0


def test_config_values(tmp_path: Path) -> None:
    config = load_gate_config(_config(tmp_path, 'fail = "4%"\nmax_cv = 0.2\nmin_trials = 8\n'
                                                '[[override]]\ncase = "*tg128*"\nfail = "9%"\n'))
    assert config.defaults.fail == pytest.approx(0.04) and config.defaults.max_cv == 0.2
    assert config.thresholds("llama.cpp m tg128", "decode").fail == pytest.approx(0.09)
    assert config.thresholds("llama.cpp m pp512", "decode").fail == pytest.approx(0.04)
    assert config.thresholds("llama.cpp m tg128", "decode").min_trials == 8


@pytest.mark.parametrize(("text", "message"), [
    ('fial = "5%"\n', "unknown key 'fial' (did you mean 'fail'?)"),
    ("fail = 5\n", 'fail = 5 is not a percentage; write it as "5%" or 0.05'),
    ('warn = "8%"\n', "warn (8.0%) must not exceed fail (5.0%)"),
    ('[[override]]\nfail = "9%"\n', 'add case = "GLOB"'),
    ('[[override]]\ncase = "*"\nmetric = "speed"\n', "unknown metric 'speed'"),
    ('[[accepted]]\ncase = "*"\nexpires = 2030-01-01\n', "add reason ="),
    ('[[accepted]]\ncase = "*"\nreason = "x"\n', "add expires = YYYY-MM-DD"),
    ('[[accepted]]\ncase = "*"\nreason = "x"\nexpires = "soon"\n', "is not a date"),
    ("fail = [\n", "is not valid TOML"),
])
def test_config_errors_name_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TokbenchError, match=None) as info:
        load_gate_config(_config(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


# -- A/B runs ---------------------------------------------------------------------------------
def test_gate_without_baseline_compares_the_arms_of_an_ab_run(tmp_path: Path) -> None:
    path = tmp_path / "ab.db"
    write_run(path, "ab-run", 1.0, [case(seed=0, arm="A", threads=1),
                                    case(tg_shift=-0.2, seed=1, arm="B", threads=2)])
    out = tmp_path / "ab.json"
    assert main(["--store", str(path), "gate", "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["mode"] == "ab"
    assert [(e["case"], e["metric"], e["verdict"]) for e in doc["entries"]] == [
        ("llama.cpp m.gguf pp512+tg128 threads=1→2", "prefill", "PASS"),
        ("llama.cpp m.gguf pp512+tg128 threads=1→2", "decode", "REGRESSION"),
    ]


def test_ab_runs_pair_trial_i_of_each_arm(tmp_path: Path) -> None:
    """Both arms slowed alike, trial by trial (a neighbour's job comes and goes), B 7% slower:
    pairing keeps the shared drift out of the interval; the same samples unpaired cannot tell."""
    rng = np.random.default_rng(0)
    load = rng.choice([1.0, 0.88], 10) * rng.normal(1, 0.004, 10)  # the shared slowdown per pair
    arms = {arm: {"pp": 700 * f * load * rng.normal(1, 0.004, 10),
                  "tg": 48 * f * load * rng.normal(1, 0.004, 10), "arm": arm}
            for arm, f in (("A", 1.0), ("B", 0.93))}
    path = tmp_path / "ab.db"
    write_run(path, "ab-run", 1.0, [arms["A"], arms["B"]])
    out = tmp_path / "ab.json"
    assert main(["--store", str(path), "gate", "--json", str(out), "--config",
                 str(_config(tmp_path, "max_cv = 0.3\n"))]) == 1
    entries = json.loads(out.read_text())["entries"]
    assert [(e["verdict"], e["statistics"]["paired"]) for e in entries] == [("REGRESSION", True)] * 2
    from harness.gate.statistics import Thresholds, compare
    samples = entries[1]["samples"]
    unpaired = compare(samples["baseline"], samples["current"], Thresholds(max_cv=0.3))
    assert unpaired.verdict == "INCONCLUSIVE"


def test_old_stores_gain_the_arm_column(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE cases DROP COLUMN arm")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.execute("DROP TABLE alembic_version")  # a store from before Alembic
    db.commit()
    db.close()
    write_run(path, "r", 1.0, [case(arm="A")])
    assert Store(path).cases("r")[0]["arm"] == "A"


def test_show_lists_the_arms_of_an_ab_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ab.db"
    write_run(path, "ab-run", 1.0, [case(arm="A", threads=1), case(arm="B", threads=2)])
    assert main(["--store", str(path), "export", "ab-run", "--format", "md"]) == 0
    header, _, *body = capsys.readouterr().out.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    arms = [line.strip("|").split("|")[columns.index("arm")].strip() for line in body]
    assert arms == ["A", "A", "B", "B"]
