"""Writers for stored runs (json, jsonl, csv) and the importer for tokbench's JSON document.

The JSON document holds everything stored for a run (profile, cases, raw trials), so a run
exported on one machine imports losslessly into another store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.common.errors import TokbenchError
from results.frames import cases_frame
from results.schema import CASE_FIELDS, REQUEST_FIELDS, RUN_FIELDS, SCHEMA_VERSION, TRIAL_FIELDS, names
from results.store import Store

FORMAT = "tokbench-run"


def run_document(store: Store, run_id: str) -> dict[str, Any]:
    """The whole run: run fields, and each case with its raw trial samples and, for a serving
    case, its request records."""
    trials_by_case: dict[int, list[dict[str, Any]]] = {}
    for t in store.trials(run_id):
        trials_by_case.setdefault(t["case_id"], []).append(
            {k: t[k] for k in names(TRIAL_FIELDS) if k != "case_id"}
        )
    requests_by_case: dict[int, list[dict[str, Any]]] = {}
    for r in store.requests(run_id):
        requests_by_case.setdefault(r["case_id"], []).append(
            {k: r[k] for k in names(REQUEST_FIELDS) if k != "case_id"}
        )
    cases = []
    for case in store.cases(run_id):
        row = {k: case[k] for k in names(CASE_FIELDS) if k not in ("case_id", "run_id")}
        row["trials"] = trials_by_case.get(case["case_id"], [])
        if case["case_id"] in requests_by_case:
            row["requests"] = requests_by_case[case["case_id"]]
        cases.append(row)
    run = store.run(run_id)
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "run": {k: run[k] for k in names(RUN_FIELDS)},
        "cases": cases,
    }


def _clean(value: Any) -> Any:
    """NaN → None, so JSON output stays standard."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(store: Store, run_id: str) -> str:
    return json.dumps(run_document(store, run_id), indent=1)


def write_jsonl(store: Store, run_id: str) -> str:
    rows = cases_frame(store, run_id).to_dict(orient="records")
    return "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in rows)


def write_csv(store: Store, run_id: str) -> str:
    return csv_text(cases_frame(store, run_id))


WRITERS: dict[str, Callable[[Store, str], str]] = {
    "json": write_json,
    "jsonl": write_jsonl,
    "csv": write_csv,
}


def read_document(path: str | Path) -> dict[str, Any]:
    """A run document exported as JSON, checked; refuses foreign files and newer schemas."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TokbenchError(f"run file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise TokbenchError(f"run file {path} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TokbenchError(
            f"run file {path} is not a tokbench run (export one with `tokbench export RUN --format json`)"
        )
    version = doc.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TokbenchError(
            f"run file {path} has schema v{version}, newer than this tokbench reads "
            f"(v{SCHEMA_VERSION}): upgrade tokbench"
        )
    return doc


def store_document(store: Store, doc: dict[str, Any]) -> bool:
    """Insert a run document (exported, or built by an importer) in one transaction, so an
    interrupted import leaves no half run. False, and nothing written, when its run id is stored."""
    run = doc["run"]
    if store.has_run(run["run_id"]):
        return False
    with store.transaction():
        store.add_run(**{k: v for k, v in run.items() if k in names(RUN_FIELDS)})
        for case in doc["cases"]:
            fields = {k: v for k, v in case.items() if k not in ("trials", "requests")}
            case_id = store.add_case(run_id=run["run_id"], **fields)
            for t in case.get("trials", []):
                store.add_trial(case_id, t["trial"], [t], t.get("started_at"))
            requests = case.get("requests") or []
            for trial in sorted({r["trial"] for r in requests}):
                store.add_trial(case_id, trial, [], requests=[r for r in requests if r["trial"] == trial])
    return True


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(frame: pd.DataFrame) -> str:
    """CSV of a frame whose text cells cannot run as spreadsheet formulas: a string that starts
    with = + - @ (or a tab or CR) gets a leading ' (OWASP's advice); numbers stay numbers."""
    def guard(v: object) -> object:
        return "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v

    text_columns = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    return frame.assign(**{c: frame[c].map(guard) for c in text_columns}).to_csv(index=False)
