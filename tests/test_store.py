import sqlite3
from pathlib import Path

import pytest

from harness.common.errors import TokbenchError
from results.schema import SCHEMA_VERSION
from results.store import Store


def _run(store: Store, run_id: str, started: float) -> None:
    store.add_run(run_id=run_id, started_at=started, status="complete", command="x")


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(TokbenchError, match="newer than this tokbench reads"):
        Store(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(TokbenchError, match="unreadable"):
        Store(path)


def test_resolve_run_references(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    with pytest.raises(TokbenchError, match="holds no runs"):
        store.resolve_run("last")
    _run(store, "20260101-000000-aaaa", 1.0)
    _run(store, "20260102-000000-bbbb", 2.0)
    assert store.resolve_run("last") == "20260102-000000-bbbb"
    assert store.resolve_run("last~1") == "20260101-000000-aaaa"
    assert store.resolve_run("20260101") == "20260101-000000-aaaa"
    with pytest.raises(TokbenchError, match="matches 2 runs"):
        store.resolve_run("2026")
    with pytest.raises(TokbenchError, match="does not exist"):
        store.resolve_run("last~5")


def test_trial_is_atomic(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    _run(store, "r1", 1.0)
    case_id = store.add_case(run_id="r1", case_index=0, backend="llama.cpp", model="m", workload="pp8",
                             n_prompt=8, n_gen=0, n_depth=0, params={}, repetitions=1, status="ok")
    with pytest.raises(KeyError):
        store.add_trial(case_id, 0, [{"phase": "pp", "n_tokens": 8, "duration_ns": 5}, {"phase": "tg"}])
    assert store.trials("r1") == []


def test_missing_store_for_readers(tmp_path: Path) -> None:
    with pytest.raises(TokbenchError, match="no result store"):
        Store(tmp_path / "absent.db", create=False)
