"""Importing llama-bench (JSON, JSONL, CSV, SQL, SQLite) and llama-batched-bench (JSONL) outputs,
exporting tokbench runs in llama-bench's formats, and comparing across the tools.

The fixtures are real outputs of the tools built from the llama.cpp that llama-cpp-python vendors
(tests/fixtures/imports/llama-bench/SOURCE.md says how each was made)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.cli.main import main
from results.export import run_document
from results.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
LB = FIXTURES / "llama-bench"
ROOT = Path(__file__).resolve().parent.parent


def _store(path: Path) -> Store:
    return Store(path, create=False)


def _docs(store_path: Path) -> list[dict]:
    db = _store(store_path)
    try:
        return [run_document(db, r["run_id"]) for r in db.runs()]
    finally:
        db.close()


def test_json_keeps_every_sample_and_the_provenance(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = json.loads((LB / "gemma-t2.json").read_text())
    assert main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")]) == 0
    out = capsys.readouterr().out
    assert "llama-bench JSON" in out and f"{len(raw)} cases" in out
    (doc,) = _docs(store_path)
    source = doc["run"]["source"]
    assert source["tool"] == "llama-bench" and source["samples"] is True
    assert source["version"] == f"b{raw[0]['build_number']}" and source["build"] == raw[0]["build_commit"]
    assert source["machine"] == {k: raw[0][k] for k in ("cpu_info", "gpu_info", "backends")}
    assert source["file"] == str((LB / "gemma-t2.json").resolve()) and len(source["sha256"]) == 64
    assert doc["run"]["fingerprint"]["hard"]["cpu_brand"] == raw[0]["cpu_info"]
    assert {"physical_cores", "ram_gib", "arch"} <= set(doc["run"]["fingerprint"]["unknown"])
    assert len(doc["cases"]) == len(raw)
    for row, case in zip(raw, doc["cases"], strict=True):
        assert [t["duration_ns"] for t in case["trials"]] == row["samples_ns"]
        phase = "pg" if row["n_prompt"] and row["n_gen"] else "pp" if row["n_prompt"] else "tg"
        assert {t["phase"] for t in case["trials"]} == {phase}
        assert case["params"]["threads"] == row["n_threads"] and case["params"]["n_batch"] == row["n_batch"]
        assert case["model_desc"] == row["model_type"] and case["model_size_bytes"] == row["model_size"]
        assert case["model_n_params"] == row["model_n_params"] and case["n_depth"] == row["n_depth"]
        # every field of the test is kept, as written
        kept = {k: v for k, v in row.items() if k not in ("samples_ns", "samples_ts")}
        assert case["engine"]["fields"] == kept
        when = dt.datetime.fromisoformat(row["test_time"].replace("Z", "+00:00"))
        assert case["started_at"] == when.timestamp()


def test_show_and_report_an_imported_run(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                         ) -> None:
    raw = json.loads((LB / "gemma-t2.json").read_text())
    main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")])
    capsys.readouterr()
    run_id = _docs(store_path)[0]["run"]["run_id"]
    assert main(["--store", str(store_path), "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "imported from" in out and "llama-bench JSON" in out and raw[0]["cpu_info"] in out
    tg = next(r for r in raw if r["n_gen"] and not r["n_prompt"])
    assert f"{tg['avg_ts']:.2f}" in out  # llama-bench's own mean of its samples
    report = tmp_path / "report.md"
    assert main(["--store", str(store_path), "report", run_id, "-o", str(report)]) == 0
    assert f"tg{tg['n_gen']}" in report.read_text()


def test_jsonl_with_two_invocations_is_two_runs(store_path: Path) -> None:
    lines = [json.loads(x) for x in (LB / "gemma-t2-twice.jsonl").read_text().splitlines()]
    assert main(["--store", str(store_path), "import", str(LB / "gemma-t2-twice.jsonl")]) == 0
    docs = _docs(store_path)
    assert len(docs) == 2 and [len(d["cases"]) for d in docs] == [len(lines) // 2] * 2
    first, second = (sorted(t["duration_ns"] for c in d["cases"] for t in c["trials"]) for d in docs)
    assert first == sorted(ns for r in lines[: len(lines) // 2] for ns in r["samples_ns"])
    assert second == sorted(ns for r in lines[len(lines) // 2:] for ns in r["samples_ns"])


def test_import_twice_adds_nothing(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")]) == 0
    assert main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")]) == 0
    assert "already in the store; skipped" in capsys.readouterr().out
    assert len(_docs(store_path)) == 1


@pytest.mark.parametrize("name", ["gemma-t2.csv", "gemma-t2.sql"])
def test_csv_and_sql_are_aggregates_and_refused_as_a_gate_baseline(
        name: str, store_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--store", str(store_path), "import", str(LB / name)]) == 0
    assert "aggregates only" in capsys.readouterr().out
    (doc,) = _docs(store_path)
    rows = list(csv.DictReader((LB / "gemma-t2.csv").open())) if name.endswith(".csv") else None
    assert doc["run"]["source"]["samples"] is False
    for i, case in enumerate(doc["cases"]):
        assert case["trials"] == [] and case["aggregate"]["tps_mean"] > 0
        if rows:
            assert case["aggregate"]["tps_mean"] == pytest.approx(float(rows[i]["avg_ts"]))
            assert case["aggregate"]["avg_ns"] == int(rows[i]["avg_ns"])
    main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")])  # with samples
    current = next(d for d in _docs(store_path) if d["run"]["source"]["samples"])["run"]["run_id"]
    rc = main(["--store", str(store_path), "gate", "--baseline", doc["run"]["run_id"], "--current", current])
    assert rc == 4
    assert "keeps only aggregates" in capsys.readouterr().out


def test_sqlite_database_as_compare_llama_bench_reads_it(store_path: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "llama-bench.sqlite"
    db = sqlite3.connect(db_path)
    db.executescript((LB / "gemma-t2.sql").read_text())  # what `llama-bench -o sql | sqlite3 db` makes
    db.close()
    assert main(["--store", str(store_path), "import", str(db_path)]) == 0
    (doc,) = _docs(store_path)
    assert doc["run"]["source"]["format"] == "llama-bench SQLite database"
    assert len(doc["cases"]) == (LB / "gemma-t2.sql").read_text().count("INSERT INTO")


def test_hostile_sql_cannot_touch_the_filesystem(store_path: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "planted.db"
    sql = (LB / "gemma-t2.sql").read_text() + f"ATTACH DATABASE '{target}' AS x;\nCREATE TABLE x.t (a);\n"
    bad = tmp_path / "bad.sql"
    bad.write_text(sql)
    assert main(["--store", str(store_path), "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "SQL" in err and "Traceback" not in err
    assert not target.exists()


@pytest.mark.parametrize("cut", ["json", "jsonl", "csv"])
def test_truncated_files_give_one_line(cut: str, store_path: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    src = LB / {"json": "gemma-t2.json", "jsonl": "gemma-t2-twice.jsonl", "csv": "gemma-t2.csv"}[cut]
    text = src.read_text()
    bad = tmp_path / f"cut.{cut}"
    bad.write_text(text[: len(text) * 2 // 3])
    assert main(["--store", str(store_path), "import", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "line" in err
    assert not store_path.exists() or _docs(store_path) == []


def test_foreign_file_names_what_is_read(store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                         ) -> None:
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"hello": "world"}')
    assert main(["--store", str(store_path), "import", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "no format tokbench imports" in err and "llama-bench JSON" in err


def test_batched_bench_jsonl(store_path: Path, gemma_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = FIXTURES / "llama-batched-bench" / "gemma-t2.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    assert main(["--store", str(store_path), "import", str(src), "--model", str(gemma_path)]) == 0
    (doc,) = _docs(store_path)
    assert len(doc["cases"]) == len(rows)
    for row, case in zip(rows, doc["cases"], strict=True):
        assert case["params"]["batch"] == row["pl"] and case["params"]["threads"] == row["n_threads"]
        by_phase = {t["phase"]: t for t in case["trials"]}
        assert by_phase["tg"]["n_tokens"] == row["tg"] * row["pl"]
        assert by_phase["tg"]["duration_ns"] == round(row["t_tg"] * 1e9)
        assert by_phase["pp"]["n_tokens"] == row["pp"] * (1 if row["is_pp_shared"] else row["pl"])
        assert case["model_id"]  # identified from the file given with --model
    assert "model" not in doc["run"]["source"]["unknown"]


@pytest.mark.engine
def test_compare_llama_bench_with_tokbench(store_path: Path, tmp_path: Path, gemma_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """llama-bench and tokbench on the same model, workload and threads, back to back: the imported
    run and tokbench's match case by case across the tools, and compare shows the speed ratio with
    its interval."""
    binary = ROOT / ".tools" / "bin" / "llama-bench"
    if not binary.exists():
        pytest.fail("no .tools/bin/llama-bench: run scripts/build-llama-tools llama-bench")
    # -ngl 99 -lm mmap: tokbench's defaults, so llama.cpp's compare script pairs the rows below
    out = subprocess.run([str(binary), "-m", str(gemma_path), "-t", "1", "-p", "32", "-n", "8", "-r", "6",
                          "-ngl", "99", "-lm", "mmap", "-o", "json"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    (tmp_path / "lb.json").write_text(out)
    assert main(["--store", str(store_path), "import", str(tmp_path / "lb.json")]) == 0
    imported = _docs(store_path)[0]
    assert all(c["model_id"] for c in imported["cases"])  # the file's model is read here
    assert main(["--store", str(store_path), "run", "-m", str(gemma_path), "-w", "pp32,tg8", "-t", "1",
                 "-r", "6", "--no-bandwidth"]) == 0
    capsys.readouterr()
    ours = next(d for d in _docs(store_path) if not d["run"].get("source"))
    assert main(["--store", str(store_path), "compare", imported["run"]["run_id"], ours["run"]["run_id"],
                 "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "across tools" in captured.out + captured.err
    rows = list(csv.DictReader(captured.out[captured.out.index("case,"):].splitlines()))
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}  # both cases matched
    assert {r["metric"] for r in rows} == {"prefill tok/s", "decode tok/s"}
    for r in rows:
        assert float(r["ci_low"]) <= float(r["speed_ratio"]) <= float(r["ci_high"])
        assert 1 / 3 < float(r["speed_ratio"]) < 3  # the same llama.cpp on the same CPU

    # llama.cpp's own compare-llama-bench.py reads tokbench's export beside llama-bench's output
    exported = tmp_path / "tokbench.jsonl"
    assert main(["--store", str(store_path), "export", ours["run"]["run_id"], "--format", "llama-bench-jsonl",
                 "-o", str(exported)]) == 0
    lb_rows, tb_rows = json.loads(out), [json.loads(x) for x in exported.read_text().splitlines()]
    for r in tb_rows:  # the CPU as ggml names it, which py-cpuinfo may spell otherwise
        r["cpu_info"] = lb_rows[0]["cpu_info"]
    both = tmp_path / "both.jsonl"
    both.write_text("".join(json.dumps(r) + "\n" for r in [*lb_rows, *tb_rows]))
    n = min(len(lb_rows[0]["build_commit"]), len(tb_rows[0]["build_commit"]))  # the script cuts to this
    script = _compare_script(tmp_path)
    result = subprocess.run([sys.executable, str(script), "-t", "llama-bench", "-i", str(both),
                             "-b", lb_rows[0]["build_commit"][:n], "-c", tb_rows[0]["build_commit"][:n],
                             "-o", "tsv"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [[c.strip() for c in line.split("\t")] for line in result.stdout.splitlines() if line.strip()]
    test = table[0].index("Test")
    assert table[0][-1] == "Speedup" and sorted(row[test] for row in table[1:]) == ["pp32", "tg8"]
    assert all(1 / 3 < float(row[-1]) < 3 for row in table[1:])


def test_export_round_trips_and_compare_llama_bench_reads_it(
        store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A run exported as llama-bench JSONL carries llama-bench's fields and samples, imports back,
    and llama.cpp's own compare-llama-bench.py reads it beside llama-bench's output."""
    main(["--store", str(store_path), "import", str(LB / "gemma-t2.json")])
    run_id = _docs(store_path)[0]["run"]["run_id"]
    out = tmp_path / "export.jsonl"
    assert main(["--store", str(store_path), "export", run_id, "--format", "llama-bench-jsonl",
                 "-o", str(out)]) == 0
    raw = json.loads((LB / "gemma-t2.json").read_text())
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["samples_ns"] for r in exported] == [r["samples_ns"] for r in raw]
    assert list(exported[0])[:42] == list(raw[0])[:42]  # llama-bench's field order
    assert exported[0]["avg_ns"] == raw[0]["avg_ns"]
    script = _compare_script(tmp_path)
    # the script compares builds: the same rows under another commit (of the same length, as the
    # script wants) stand for a second build
    base = raw[0]["build_commit"]
    other_commit = "f" * len(base)
    both = tmp_path / "both.jsonl"
    both.write_text(out.read_text() + "".join(json.dumps({**r, "build_commit": other_commit}) + "\n"
                                              for r in exported))
    result = subprocess.run([sys.executable, str(script), "-t", "llama-bench", "-i", str(both), "-b", base,
                             "-c", other_commit, "--output", "tsv"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    table = [[c.strip() for c in line.split("\t")] for line in result.stdout.splitlines() if line.strip()]
    assert table[0][-1] == "Speedup" and len(table) - 1 == len(raw)  # one row per test
    assert all(float(row[-1]) == 1.0 for row in table[1:])  # identical rows: speedup 1


def _compare_script(tmp_path: Path) -> Path:
    """compare-llama-bench.py from the llama.cpp sources vendored in llama-cpp-python's sdist, which
    scripts/build-llama-tools keeps in .tools/src."""
    sdists = sorted((ROOT / ".tools" / "src").glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        pytest.fail("no llama-cpp-python sdist in .tools/src: run scripts/build-llama-tools")
    with tarfile.open(sdists[-1]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("scripts/compare-llama-bench.py"))
        dest = tmp_path / "compare-llama-bench.py"
        with tar.extractfile(member) as f, dest.open("wb") as out:  # type: ignore[union-attr]
            shutil.copyfileobj(f, out)
    return dest


def test_batched_bench_shows_and_reports(store_path: Path, tmp_path: Path, gemma_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    src = FIXTURES / "llama-batched-bench" / "gemma-t2.jsonl"
    rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
    assert main(["--store", str(store_path), "import", str(src)]) == 0
    assert "names no model" in capsys.readouterr().out
    (doc,) = _docs(store_path)
    assert main(["--store", str(store_path), "show", doc["run"]["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "llama-batched-bench JSONL" in out and f"{rows[-1]['speed_tg']:.2f}" in out  # its own t/s
    report = tmp_path / "r.md"
    assert main(["--store", str(store_path), "report", doc["run"]["run_id"], "-o", str(report)]) == 0
    assert "pp64" in report.read_text()
    # stated at a second import: another run, now identified by its file
    assert main(["--store", str(store_path), "import", str(src), "--model", str(gemma_path)]) == 0
    assert len(_docs(store_path)) == 2
