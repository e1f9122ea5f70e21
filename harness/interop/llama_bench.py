"""llama-bench results in and out: its JSON, JSONL, CSV and SQL outputs (and an SQLite database
made from the SQL, as compare-llama-bench.py reads it), and tokbench runs written in them.

One llama-bench row is one test: pp (n_gen 0), tg (n_prompt 0), or pg (both, timed together,
llama-bench's `-pg`), at a depth. JSON and JSONL keep each repetition's time (`samples_ns`), which
become trials; CSV and SQL keep only the mean and standard deviation, so such a run says it holds
aggregates only. Every field of the row is kept in the case's `engine` (under "fields"), so an
imported run exports back to llama-bench's format unchanged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from harness.interop import documents
from harness.interop.documents import FormatError, Source
from harness.interop.formats import Format
from results.export import FORMULA_START

TOOL = "llama-bench"
#: Fields every llama-bench version since samples were added writes, and an importer needs.
REQUIRED = ("model_filename", "model_type", "n_prompt", "n_gen", "n_threads")
#: Per-backend flags that llama-bench wrote before its `backends` field (2024 builds, as vendored in
#: llama-cpp-python 0.2.90), in the order its get_backend() tested them, with the name it printed for
#: each (cuda: CUDA, ROCm or MUSA, by how it was built, which the file does not say).
LEGACY_BACKENDS = {"cuda": None, "vulkan": "Vulkan", "kompute": "Kompute", "metal": "Metal", "sycl": "SYCL",
                   "gpu_blas": "GPU BLAS", "blas": "BLAS"}
#: Fields that describe the build and the machine, not the test: a change starts another run.
RUN_FIELDS = ("build_commit", "build_number", "cpu_info", "gpu_info", "backends", *LEGACY_BACKENDS)
INT_FIELDS = {"build_number", "n_batch", "n_ubatch", "n_threads", "poll", "model_size", "model_n_params",
              "n_gpu_layers", "main_gpu", "n_prompt", "n_gen", "n_depth", "avg_ns", "stddev_ns",
              "no_op_offload", "n_cpu_moe", "fit_target", "fit_min_ctx", "flash_attn"}
BOOL_FIELDS = {"f16_kv", "no_kv_offload", "cpu_strict", "embeddings", "no_host", "repack", "use_mmap",
               *LEGACY_BACKENDS}
FLOAT_FIELDS = {"avg_ts", "stddev_ts"}
_FLASH_ATTN = {-1: "auto", 0: "off", 1: "on"}
_QUANT_SUFFIX = {" - Small": "_S", " - Medium": "_M", " - Large": "_L"}
SQL_TABLES = ("llama_bench", "test")  # the table's name now, and before llama.cpp renamed it


# -- reading rows ----------------------------------------------------------------------------------
def _typed(field: str, value: Any) -> Any:
    """A CSV or SQL cell as llama-bench's JSON writes it."""
    if value is None or not isinstance(value, str):
        return value
    try:
        if field in INT_FIELDS:
            return int(value)
        if field in BOOL_FIELDS:
            return value.strip().lower() in ("1", "true")
        if field in FLOAT_FIELDS:
            return float(value)
    except ValueError:
        return value
    return value


def _json_rows(path: Path) -> list[dict[str, Any]]:
    rows = documents.json_document(path, "llama-bench -o json writes one array")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise FormatError(path, "top level", "a JSON array of llama-bench test objects")
    return rows


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in documents.jsonl_objects(path, "llama-bench test object")]


def _csv_rows(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    for n, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise FormatError(path, f"line {n}", f"{len(reader.fieldnames or [])} comma-separated "
                              "values, as in the header line (the file may be truncated)")
        rows.append({k: _typed(k, v) for k, v in row.items()})
    return rows


def _deny_all_but_sql_output(action: int, *args: Any) -> int:
    """sqlite3 authorizer for the SQL script: what llama-bench writes (CREATE TABLE, INSERT) and
    nothing else, so a hostile script cannot ATTACH a file, load an extension or run a pragma."""
    allowed = {sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ,
               sqlite3.SQLITE_SELECT, sqlite3.SQLITE_TRANSACTION}
    if action == sqlite3.SQLITE_UPDATE and args[0] == "sqlite_master":
        return sqlite3.SQLITE_OK  # CREATE TABLE records itself in the schema table
    return sqlite3.SQLITE_OK if action in allowed else sqlite3.SQLITE_DENY


def _table_rows(path: Path, db: sqlite3.Connection) -> list[dict[str, Any]]:
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    table = next((t for t in SQL_TABLES if t in names), None)
    if table is None:
        raise FormatError(path, "tables", f"a table named {' or '.join(SQL_TABLES)} (llama-bench -o sql); "
                          f"found {', '.join(sorted(names)) or 'none'}")
    db.row_factory = sqlite3.Row
    return [{k: _typed(k, row[k]) for k in row.keys()}  # noqa: SIM118 (sqlite3.Row)
            for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]


def _sql_rows(path: Path, text: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(":memory:")
    db.set_authorizer(_deny_all_but_sql_output)
    try:
        db.executescript(text)
    except sqlite3.DatabaseError as exc:
        raise FormatError(path, "SQL", f"llama-bench's CREATE TABLE and INSERT statements ({exc})") from None
    try:
        return _table_rows(path, db)
    finally:
        db.close()


def _sqlite_rows(path: Path) -> list[dict[str, Any]]:
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return _table_rows(path, db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise FormatError(path, "SQLite", f"a readable database with llama-bench's table ({exc})") from None


# -- rows → runs ------------------------------------------------------------------------------------
def _quant(model_type: str) -> str | None:
    """Q4_K_M from llama.cpp's model description 'gemma3 270M Q4_K - Medium'."""
    words = model_type.split(" ", 2)
    if len(words) < 3:
        return None
    quant = words[2]
    for long, short in _QUANT_SUFFIX.items():
        quant = quant.replace(long, short)
    return quant.replace(" ", "_") or None


def _backends(row: dict[str, Any]) -> str | None:
    """The build's backends: the `backends` field, or for an older llama-bench the name it printed
    for its per-backend flags ("CPU" where none is set); None where the file does not tell."""
    if "backends" in row or not any(f in row for f in LEGACY_BACKENDS):
        return row.get("backends")
    first = next((f for f in LEGACY_BACKENDS if row.get(f)), None)
    return "CPU" if first is None else LEGACY_BACKENDS[first]


def _offloads(row: dict[str, Any]) -> bool:
    """Whether n_gpu_layers has an effect: the build has a GPU backend, or the test used RPC servers
    (an older llama-bench's `rpc`, written "0" or "1")."""
    if "backends" not in row and any(f in row for f in LEGACY_BACKENDS):
        return (any(row.get(f) for f in LEGACY_BACKENDS if f != "blas")
                or str(row.get("rpc", "0")).strip().lower() not in ("0", "false", ""))
    return str(row.get("backends") or "CPU") not in ("CPU", "BLAS", "CPU,BLAS")


def _params(row: dict[str, Any]) -> dict[str, Any]:
    """The llama.cpp backend's parameters, from the row (what tokbench's llama.cpp backend calls them).
    n_gpu_layers is left out when the build has no GPU backend, where it has no effect (this
    llama-bench writes -1 by default, tokbench 99: both mean every layer)."""
    fa = row.get("flash_attn")
    flash = _FLASH_ATTN.get(fa, str(fa)) if isinstance(fa, int) and not isinstance(fa, bool) else (
        ("on" if fa else "off") if isinstance(fa, bool) else fa)
    params = {"threads": row["n_threads"], "n_batch": row.get("n_batch"), "n_ubatch": row.get("n_ubatch"),
              "n_gpu_layers": row.get("n_gpu_layers"), "flash_attn": flash,
              "cache_type_k": row.get("type_k"), "cache_type_v": row.get("type_v"), "batch": 1}
    if not _offloads(row):
        params.pop("n_gpu_layers")
    return {k: v for k, v in params.items() if v is not None}


def _model_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The model as the row describes it; its identity (size + header hash) is filled at import
    when its file is readable here (harness.interop.identity)."""
    return {"model": str(row["model_filename"]), "model_desc": row.get("model_type"),
            "model_size_bytes": row.get("model_size"), "model_n_params": row.get("model_n_params"),
            "quant": _quant(str(row.get("model_type") or ""))}


def _phase(row: dict[str, Any]) -> tuple[str, int]:
    n_prompt, n_gen = row["n_prompt"], row["n_gen"]
    if n_prompt and n_gen:
        return "pg", n_prompt + n_gen
    return ("pp", n_prompt) if n_prompt else ("tg", n_gen)


def _case(path: Path, n: int, row: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in REQUIRED if f not in row]
    if missing:
        raise FormatError(path, f"test {n}", f"missing {', '.join(missing)}: not a llama-bench result")
    phase, n_tokens = _phase(row)
    depth = int(row.get("n_depth") or 0)
    workload = ("+".join(p for p in (f"pp{row['n_prompt']}" if row["n_prompt"] else "",
                                     f"tg{row['n_gen']}" if row["n_gen"] else "") if p)
                + (f"@d{depth}" if depth else ""))
    when = documents.parse_time(row.get("test_time"))
    fields = {k: v for k, v in row.items() if k not in ("samples_ns", "samples_ts")}
    engine = {"engine": TOOL, "engine_version": f"b{row['build_number']}" if "build_number" in row else None,
              "build_commit": row.get("build_commit"), "backends": _backends(row), "fields": fields}
    model = _model_fields(row)
    notes = []
    if phase == "pg":
        notes.append("llama-bench's pg test times prefill and decode together: its t/s is "
                     "(n_prompt + n_gen) / total time, not comparable with pp or tg")
    common = dict(backend="llama.cpp", workload=workload, n_prompt=row["n_prompt"], n_gen=row["n_gen"],
                  n_depth=depth, params=_params(row), engine=engine, started_at=when, finished_at=when,
                  notes=notes, **model)
    samples = row.get("samples_ns")
    if samples is not None:
        if not isinstance(samples, list) or not samples or not all(
                isinstance(s, int) and s > 0 for s in samples):
            raise FormatError(path, f"test {n} samples_ns", "a list of positive integers (ns per repetition)")
        return documents.case(trials=[documents.trial(i, phase, n_tokens, ns)
                                      for i, ns in enumerate(samples)], **common)
    if "avg_ts" not in row:
        raise FormatError(path, f"test {n}", "samples_ns or avg_ts: a llama-bench result")
    aggregate = {"phase": phase, "tps_mean": row["avg_ts"], "tps_stddev": row.get("stddev_ts"),
                 "n_trials": None, "avg_ns": row.get("avg_ns"), "stddev_ns": row.get("stddev_ns")}
    return documents.case(aggregate=aggregate, **common)


def _test_key(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items()
                       if k not in ("test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
                                    "samples_ns", "samples_ts")}, sort_keys=True, default=str)


def _split_runs(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One llama-bench invocation per run: a new run starts where the build or machine changes,
    or where a test repeats (outputs appended to one file, or a database of many builds)."""
    runs: list[list[dict[str, Any]]] = []
    seen: set[str] = set()
    ident: tuple[Any, ...] | None = None
    for row in rows:
        this = tuple(row.get(f) for f in RUN_FIELDS)
        key = _test_key(row)
        if this != ident or key in seen:
            runs.append([])
            seen, ident = set(), this
        runs[-1].append(row)
        seen.add(key)
    return runs


def _runs(path: Path, source: Source, rows: list[dict[str, Any]], samples: bool) -> list[dict[str, Any]]:
    docs, n = [], 0
    for index, group in enumerate(_split_runs(rows)):
        first = group[0]
        cases = []
        for row in group:
            n += 1
            cases.append(_case(path, n, row))
        run_source = Source(**{**source.as_dict(), "unknown": list(source.unknown)})
        run_source.version = f"b{first['build_number']}" if first.get("build_number") is not None else None
        run_source.build = first.get("build_commit")
        # a JSON row without samples_ns (a llama-bench before them) imports as its aggregates
        has_samples = samples and all(r.get("samples_ns") is not None for r in group)
        run_source.samples = has_samples
        run_source.machine = {k: first[k] for k in ("cpu_info", "gpu_info", "backends", *LEGACY_BACKENDS)
                              if k in first}
        run_source.unknown += ["host", "architecture", "physical cores", "RAM", "OS and kernel"]
        if not has_samples:
            run_source.unknown.append("per-repetition samples and the repetition count (CSV and SQL keep "
                                      "only the mean and standard deviation)" if not samples else
                                      "per-repetition samples and the repetition count (the file's rows "
                                      "have no samples_ns, only the mean and standard deviation)")
        hard: dict[str, Any] = {"engines": {"llama.cpp": {k: v for k, v in cases[0]["engine"].items()
                                                          if k != "fields"}}}
        if first.get("cpu_info"):
            hard["cpu_brand"] = first["cpu_info"]
        times = [c["started_at"] for c in cases if c["started_at"] is not None]
        docs.append(documents.run(run_source, index, cases, started_at=min(times) if times else None,
                                  finished_at=max(times) if times else None, hard=hard))
    return docs


# -- formats -------------------------------------------------------------------------------------------
def _looks_like_row(text: bytes) -> bool:
    return b'"model_filename"' in text and b'"n_prompt"' in text and b'"build_commit"' in text


def _sniff_json(path: Path, head: bytes) -> bool:
    return head.lstrip()[:1] == b"[" and _looks_like_row(head)


def _sniff_jsonl(path: Path, head: bytes) -> bool:
    return head.lstrip()[:1] == b"{" and _looks_like_row(head.lstrip().split(b"\n", 1)[0])


def _sniff_csv(path: Path, head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    return first.startswith(b"build_commit,") and b"model_filename" in first and b"avg_ts" in first


def _sniff_sql(path: Path, head: bytes) -> bool:
    return any(head.lstrip().startswith(f"CREATE TABLE IF NOT EXISTS {t} (".encode()) for t in SQL_TABLES)


def _sniff_sqlite(path: Path, head: bytes) -> bool:
    if not head.startswith(b"SQLite format 3\x00"):
        return False
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False
    return bool(names & set(SQL_TABLES)) and "runs" not in names  # a tokbench store is not this


def _read_json(path: Path, source: Source) -> list[dict[str, Any]]:
    return _runs(path, source, _json_rows(path), samples=True)


def _read_jsonl(path: Path, source: Source) -> list[dict[str, Any]]:
    return _runs(path, source, _jsonl_rows(path), samples=True)


def _read_csv(path: Path, source: Source) -> list[dict[str, Any]]:
    return _runs(path, source, _csv_rows(path, documents.read_text(path)), samples=False)


def _read_sql(path: Path, source: Source) -> list[dict[str, Any]]:
    return _runs(path, source, _sql_rows(path, documents.read_text(path)), samples=False)


def _read_sqlite(path: Path, source: Source) -> list[dict[str, Any]]:
    return _runs(path, source, _sqlite_rows(path), samples=False)


FORMATS = [
    Format("llama-bench JSON", TOOL, _sniff_json, _read_json),
    Format("llama-bench JSONL", TOOL, _sniff_jsonl, _read_jsonl),
    Format("llama-bench CSV", TOOL, _sniff_csv, _read_csv),
    Format("llama-bench SQL", TOOL, _sniff_sql, _read_sql),
    Format("llama-bench SQLite database", TOOL, _sniff_sqlite, _read_sqlite),
]


# -- export ------------------------------------------------------------------------------------------
#: Field order of llama-bench's own output (this llama.cpp's), which the exporters write.
FIELDS = ("build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type",
          "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "cpu_mask", "cpu_strict",
          "poll", "type_k", "type_v", "n_gpu_layers", "n_cpu_moe", "split_mode", "main_gpu",
          "no_kv_offload", "flash_attn", "devices", "tensor_split", "tensor_buft_overrides", "load_mode",
          "lazy_mode", "embeddings", "no_op_offload", "no_host", "repack", "fit_target", "fit_min_ctx",
          "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts")
#: What llama-bench writes for the fields a tokbench run has no value for (its defaults on a CPU, with
#: n_gpu_layers given, as tokbench always gives it: then llama-bench fits nothing, fit_* are 0).
_DEFAULTS = {"cpu_mask": "0x0", "cpu_strict": False, "poll": 50, "n_cpu_moe": 0, "split_mode": "layer",
             "main_gpu": 0, "no_kv_offload": False, "devices": "auto", "tensor_split": "0.00",
             "tensor_buft_overrides": "none", "lazy_mode": "off", "embeddings": False, "no_op_offload": 0,
             "no_host": False, "repack": True, "fit_target": 0, "fit_min_ctx": 0}


def _iso(t: float | None) -> str:
    import datetime as dt

    if t is None:
        return ""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stats(ns: list[int], n_tokens: int) -> dict[str, Any]:
    ts = [n_tokens * 1e9 / x for x in ns]
    mean_ns, mean_ts = sum(ns) // len(ns), sum(ts) / len(ts)  # llama-bench's integer mean of ns

    def sd(xs: list[float], m: float) -> float:
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0

    return {"avg_ns": round(mean_ns), "stddev_ns": round(sd([float(x) for x in ns], mean_ns)),
            "avg_ts": mean_ts, "stddev_ts": sd(ts, mean_ts), "samples_ns": list(ns), "samples_ts": ts}


def _current_layout(fields: dict[str, Any]) -> dict[str, Any]:
    """An older llama-bench's fields that this one writes under another name or type, where the
    meaning is the same: use_mmap as load_mode, flash_attn's bool as 0/1, the per-backend flags as
    backends (left to the default where they do not name it: a cuda build)."""
    out: dict[str, Any] = {}
    if "use_mmap" in fields and "load_mode" not in fields:
        out["load_mode"] = "mmap" if fields["use_mmap"] else "none"
    if isinstance(fields.get("flash_attn"), bool):
        out["flash_attn"] = int(fields["flash_attn"])
    if "backends" not in fields and _backends(fields) is not None:
        out["backends"] = _backends(fields)
    return out


def export_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One llama-bench row per llama.cpp case × timed phase of a run document, in llama-bench's field
    order. A row imported from llama-bench comes back as it was; a tokbench case fills what it knows:
    the engine's commit as build_commit, its CPU from the run's profile, and llama-bench's CPU
    defaults for the rest. Cases of other engines, failed cases and serving cases have no llama-bench
    form and are left out."""
    run = doc["run"]
    profile = run.get("profile") or {}
    rows = []
    for case in doc["cases"]:
        if case.get("backend") not in ("llama.cpp",) or case.get("status") != "ok" or case.get("load"):
            continue
        engine = case.get("engine") or {}
        fields = dict(engine.get("fields") or {})
        by_phase: dict[str, list[tuple[int, int]]] = {}
        for t in case.get("trials") or []:
            by_phase.setdefault(t["phase"], []).append((t["n_tokens"], t["duration_ns"]))
        params = case.get("params") or {}
        for phase, samples in by_phase.items():
            n_prompt = case["n_prompt"] if phase in ("pp", "pg") else 0
            n_gen = case["n_gen"] if phase in ("tg", "pg") else 0
            row = dict(_DEFAULTS)
            row.update({
                "build_commit": engine.get("ggml_commit") or "unknown",
                "build_number": 0, "cpu_info": profile.get("cpu_brand") or "",
                "gpu_info": ", ".join(g.get("name", "") for g in profile.get("gpus") or []),
                "backends": "CPU", "model_filename": case.get("model_path") or case["model"],
                "model_type": case.get("model_desc") or "", "model_size": case.get("model_size_bytes") or 0,
                "model_n_params": case.get("model_n_params") or 0, "n_batch": params.get("n_batch"),
                "n_ubatch": params.get("n_ubatch"), "n_threads": params.get("threads"),
                "type_k": params.get("cache_type_k"), "type_v": params.get("cache_type_v"),
                "n_gpu_layers": params.get("n_gpu_layers"),
                "flash_attn": {v: k for k, v in _FLASH_ATTN.items()}.get(params.get("flash_attn"), -1),
                "load_mode": "mmap" if params.get("mmap", True) else "none",
            })
            row.update(n_prompt=n_prompt, n_gen=n_gen, n_depth=case.get("n_depth") or 0,
                       test_time=_iso(case.get("started_at")))
            row.update(_stats([ns for _, ns in samples], samples[0][0]))
            row.update({k: v for k, v in fields.items() if k in FIELDS})  # an imported row, as it was
            row.update(_current_layout(fields))  # … or an older llama-bench's, in this one's fields
            rows.append({**{k: row.get(k) for k in FIELDS}, "samples_ns": row["samples_ns"],
                         "samples_ts": row["samples_ts"]})
    return rows


def write_json(doc: dict[str, Any]) -> str:
    return json.dumps(export_rows(doc), indent=2) + "\n"


def write_jsonl(doc: dict[str, Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in export_rows(doc))


def write_csv(doc: dict[str, Any]) -> str:
    """llama-bench's CSV: its fields without the samples, the header bare and every value quoted, as
    llama-bench writes them."""
    out = io.StringIO()
    out.write(",".join(FIELDS) + "\n")  # llama-bench writes its header unquoted
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for r in export_rows(doc):
        writer.writerow([_csv_value(r[k]) for k in FIELDS])
    return out.getvalue()


def _csv_value(v: Any) -> str:
    """As llama-bench writes it; text that a spreadsheet would run as a formula gets a leading '."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.6f}"
    text = "" if v is None else str(v)
    return "'" + text if isinstance(v, str) and text.startswith(FORMULA_START) else text

