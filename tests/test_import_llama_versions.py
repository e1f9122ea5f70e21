"""llama-bench's output format changed across llama.cpp versions; the output of each version with a
fixture imports (issue 16). The older fixtures are real outputs of llama-bench built from the
llama.cpp vendored in llama-cpp-python 0.2.90 (Aug 2024): SQL table `test`, flash_attn a bool,
use_mmap, per-backend booleans (cuda, vulkan, kompute, metal, sycl, gpu_blas, blas), rpc as a
string, no backends, no n_depth, no JSONL output (tests/fixtures/imports/llama-bench/
llama-cpp-python-0.2.90/SOURCE.md says how they were made). Each is checked field by field against
the raw file, so a field the parser drops fails a test."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from harness.cli.main import main
from results.export import run_document
from results.store import Store

LB = Path(__file__).parent / "fixtures" / "imports" / "llama-bench"
OLD = LB / "llama-cpp-python-0.2.90"
NEW_JSON = LB / "gemma-t2.json"
LEGACY_FLAGS = ("cuda", "vulkan", "kompute", "metal", "sycl", "gpu_blas", "blas")


def _docs(store_path: Path) -> list[dict[str, Any]]:
    db = Store(store_path, create=False)
    try:
        return [run_document(db, r["run_id"]) for r in db.runs()]
    finally:
        db.close()


def _import(store_path: Path, path: Path) -> dict[str, Any]:
    assert main(["--store", str(store_path), "import", str(path)]) == 0
    (doc,) = [d for d in _docs(store_path) if d["run"]["source"]["file"] == str(path.resolve())]
    return doc


def _sql_rows(path: Path) -> list[dict[str, Any]]:
    """The rows as sqlite3 stores them: what `llama-bench -o sql | sqlite3` makes."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(path.read_text())
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM test ORDER BY rowid")]
    finally:
        db.close()


def _flag(value: Any) -> bool:
    """A llama-bench boolean as JSON (true/false), CSV ("0"/"1") or SQL (0/1) write it."""
    return value is True or str(value) in ("1", "true")


def _check_common(doc: dict[str, Any], rows: list[dict[str, Any]], fmt: str) -> None:
    """What every old-format file gives, checked against its raw rows."""
    run, first = doc["run"], rows[0]
    source = run["source"]
    assert source["tool"] == "llama-bench" and source["format"] == fmt
    assert source["version"] == f"b{int(first['build_number'])}" and source["build"] == first["build_commit"]
    assert source["machine"]["cpu_info"] == first["cpu_info"]
    flags = {f: _flag(first[f]) for f in LEGACY_FLAGS}
    assert {f: _flag(source["machine"][f]) for f in LEGACY_FLAGS} == flags
    assert "backends" not in first and "n_depth" not in first and "load_mode" not in first  # the old layout
    assert run["fingerprint"]["hard"]["cpu_brand"] == first["cpu_info"]
    engines = run["fingerprint"]["hard"]["engines"]["llama.cpp"]
    assert engines["engine_version"] == source["version"] and engines["build_commit"] == first["build_commit"]
    # no flag set: llama-bench of this version printed its backend as "CPU"
    assert not any(_flag(first[f]) for f in LEGACY_FLAGS) and engines["backends"] == "CPU"
    assert len(doc["cases"]) == len(rows)
    for row, case in zip(rows, doc["cases"], strict=True):
        n_prompt, n_gen = int(row["n_prompt"]), int(row["n_gen"])
        assert (case["n_prompt"], case["n_gen"], case["n_depth"]) == (n_prompt, n_gen, 0)
        workload = "+".join(p for p in (f"pp{n_prompt}" if n_prompt else "",
                                        f"tg{n_gen}" if n_gen else "") if p)
        assert case["workload"] == workload
        params = case["params"]
        assert params["threads"] == int(row["n_threads"]) and params["n_batch"] == int(row["n_batch"])
        assert params["n_ubatch"] == int(row["n_ubatch"])
        assert params["cache_type_k"] == row["type_k"] and params["cache_type_v"] == row["type_v"]
        assert params["flash_attn"] == ("on" if _flag(row["flash_attn"]) else "off")
        assert "n_gpu_layers" not in params  # a CPU-only build: it has no effect
        assert case["model"] == row["model_filename"] and case["model_desc"] == row["model_type"]
        assert case["model_size_bytes"] == int(row["model_size"])
        assert case["model_n_params"] == int(row["model_n_params"])
        assert case["quant"] == row["model_type"].split(" ", 2)[2]
        assert case["engine"]["backends"] == "CPU"
        fields = case["engine"]["fields"]  # every field of the row kept, under its own name
        assert set(fields) == set(row) - {"samples_ns", "samples_ts"}
        assert _flag(fields["use_mmap"]) == _flag(row["use_mmap"])
        assert str(fields["rpc"]) == str(row["rpc"]) and fields["split_mode"] == row["split_mode"]
        when = dt.datetime.fromisoformat(row["test_time"].replace("Z", "+00:00")).timestamp()
        assert case["started_at"] == pytest.approx(when)


def test_old_json_keeps_every_sample(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = json.loads((OLD / "tiny-llama-t2.json").read_text())
    doc = _import(store_path, OLD / "tiny-llama-t2.json")
    assert "llama-bench JSON" in capsys.readouterr().out
    _check_common(doc, raw, "llama-bench JSON")
    assert doc["run"]["source"]["samples"] is True
    assert {type(r["flash_attn"]) for r in raw} == {bool}  # the old type: a bool, not -1/0/1
    assert {r["flash_attn"] for r in raw} == {False, True}  # -fa 0,1: both map
    for row, case in zip(raw, doc["cases"], strict=True):
        assert [t["duration_ns"] for t in case["trials"]] == row["samples_ns"]
        phase = "pg" if row["n_prompt"] and row["n_gen"] else "pp" if row["n_prompt"] else "tg"
        assert {t["phase"] for t in case["trials"]} == {phase}
        assert {t["n_tokens"] for t in case["trials"]} == {row["n_prompt"] + row["n_gen"]}
        assert case["repetitions"] == len(row["samples_ns"]) and case["aggregate"] is None
        assert case["engine"]["fields"]["flash_attn"] is row["flash_attn"]


@pytest.mark.parametrize("name", ["tiny-llama-t2.csv", "tiny-llama-t2.sql"])
def test_old_csv_and_sql_are_aggregates(name: str, store_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = OLD / name
    if name.endswith(".csv"):
        rows: list[dict[str, Any]] = list(csv.DictReader(path.open()))
        fmt = "llama-bench CSV"
    else:
        assert path.read_text().startswith("CREATE TABLE IF NOT EXISTS test (")  # the table's old name
        rows, fmt = _sql_rows(path), "llama-bench SQL"
    doc = _import(store_path, path)
    assert "aggregates only" in capsys.readouterr().out
    _check_common(doc, rows, fmt)
    assert doc["run"]["source"]["samples"] is False
    assert {_flag(r["flash_attn"]) for r in rows} == {False, True}
    for row, case in zip(rows, doc["cases"], strict=True):
        assert case["trials"] == []
        agg = case["aggregate"]
        assert agg["tps_mean"] == pytest.approx(float(row["avg_ts"]))
        assert agg["tps_stddev"] == pytest.approx(float(row["stddev_ts"]))
        assert agg["avg_ns"] == int(row["avg_ns"]) and agg["stddev_ns"] == int(row["stddev_ns"])
        assert agg["phase"] == ("pg" if int(row["n_prompt"]) and int(row["n_gen"])
                                else "pp" if int(row["n_prompt"]) else "tg")


def test_old_sqlite_database(store_path: Path, tmp_path: Path) -> None:
    """The database compare-llama-bench.py of that time read: the SQL piped into sqlite3, table `test`."""
    db_path = tmp_path / "llama-bench.sqlite"
    db = sqlite3.connect(db_path)
    db.executescript((OLD / "tiny-llama-t2.sql").read_text())
    db.close()
    doc = _import(store_path, db_path)
    _check_common(doc, _sql_rows(OLD / "tiny-llama-t2.sql"), "llama-bench SQLite database")


def test_old_json_without_samples_is_aggregates(store_path: Path, tmp_path: Path) -> None:
    """A row with no samples_ns (as before llama-bench kept them) imports as its aggregates, and the
    run says so, rather than as a run with samples and no trials."""
    raw = json.loads((OLD / "tiny-llama-t2.json").read_text())
    bare = tmp_path / "no-samples.json"
    bare.write_text(json.dumps([{k: v for k, v in r.items() if k not in ("samples_ns", "samples_ts")}
                                for r in raw], indent=2))
    doc = _import(store_path, bare)
    assert doc["run"]["source"]["samples"] is False
    assert any("samples_ns" in u for u in doc["run"]["source"]["unknown"])
    for row, case in zip(raw, doc["cases"], strict=True):
        assert case["trials"] == [] and case["aggregate"]["avg_ns"] == row["avg_ns"]


def test_old_gpu_build_keeps_n_gpu_layers(store_path: Path, tmp_path: Path) -> None:
    """In the old layout a GPU build is told by its flags, not by `backends`: n_gpu_layers then has an
    effect and is kept. (The fixture's rows with the Metal flag set, as a Metal build writes them.)"""
    raw = json.loads((OLD / "tiny-llama-t2.json").read_text())
    metal = tmp_path / "metal.json"
    metal.write_text(json.dumps([{**r, "metal": True} for r in raw], indent=2))
    doc = _import(store_path, metal)
    assert doc["cases"][0]["params"]["n_gpu_layers"] == raw[0]["n_gpu_layers"]
    assert doc["cases"][0]["engine"]["backends"] == "Metal"
    assert doc["run"]["source"]["machine"]["metal"] is True


def test_show_and_compare_old_against_new(store_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The old version's run beside the current version's: show reads it, compare runs (other model:
    no case matches; other build: the fingerprint differs, so compare refuses and --force shows)."""
    raw = json.loads((OLD / "tiny-llama-t2.json").read_text())
    old = _import(store_path, OLD / "tiny-llama-t2.json")["run"]["run_id"]
    new = _import(store_path, NEW_JSON)["run"]["run_id"]
    capsys.readouterr()
    assert main(["--store", str(store_path), "show", old]) == 0
    out = capsys.readouterr().out
    assert "llama-bench JSON" in out and raw[0]["build_commit"] in out
    assert f"{raw[0]['avg_ts']:.2f}" in out
    assert main(["--store", str(store_path), "compare", old, new]) == 4
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "build_commit" in captured.out + captured.err
    assert "backends" not in captured.out + captured.err  # the old flags read as "CPU", as the new file says
    assert main(["--store", str(store_path), "compare", old, new, "--force", "--format", "csv"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(out[out.index("case,"):].splitlines()))
    assert rows and {r["status"] for r in rows} == {"only in A", "only in B"}


def test_old_run_exports_in_the_current_layout(store_path: Path, tmp_path: Path) -> None:
    """Exported as llama-bench JSONL, an old run's rows take this llama-bench's fields where the
    meaning is the same (use_mmap → load_mode, flash_attn bool → 0/1, flags → backends), keep their
    samples, and import back with the same parameters."""
    raw = json.loads((OLD / "tiny-llama-t2.json").read_text())
    doc = _import(store_path, OLD / "tiny-llama-t2.json")
    out = tmp_path / "old.jsonl"
    assert main(["--store", str(store_path), "export", doc["run"]["run_id"], "--format", "llama-bench-jsonl",
                 "-o", str(out)]) == 0
    exported = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(exported) == len(raw)
    for row, ex in zip(raw, exported, strict=True):
        assert ex["samples_ns"] == row["samples_ns"] and ex["avg_ns"] == row["avg_ns"]
        assert ex["flash_attn"] == int(row["flash_attn"]) and type(ex["flash_attn"]) is int
        assert ex["load_mode"] == ("mmap" if row["use_mmap"] else "none")
        assert ex["backends"] == "CPU" and ex["build_commit"] == row["build_commit"]
        assert (ex["n_prompt"], ex["n_gen"], ex["n_depth"]) == (row["n_prompt"], row["n_gen"], 0)
    again = _import(store_path, out)
    assert [c["params"] for c in again["cases"]] == [c["params"] for c in doc["cases"]]
