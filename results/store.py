"""SQLite result store (WAL): every trial is committed as it finishes, so a killed run keeps it.

Several runs may write one store at once; a writer waits for another's transaction up to
$TOKBENCH_LOCK_TIMEOUT seconds (default 30), then fails with one line. Readers open a store
they cannot write (a read-only mount or file) read-only, without migrating it."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.common import cache
from harness.common.errors import TokbenchError
from results.schema import (
    CASE_FIELDS,
    REQUEST_FIELDS,
    RUN_FIELDS,
    SCHEMA_VERSION,
    TRIAL_FIELDS,
    create_table_sql,
    names,
)

_JSON_COLUMNS = {"profile", "fingerprint", "params", "param_defaults", "engine", "memory", "token_ns",
                 "load", "client", "notes", "chunk_ns", "sweep", "server_timings", "contended",
                 "source", "aggregate"}


def default_path() -> Path:
    """$TOKBENCH_STORE, else $XDG_DATA_HOME/tokbench/results.db."""
    if os.environ.get("TOKBENCH_STORE"):
        return Path(os.environ["TOKBENCH_STORE"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tokbench" / "results.db"


class _CannotWrite(TokbenchError):
    """The store refused a write: read-only, full, or unwritable (not a lock held too long)."""


def lock_timeout_s() -> float:
    """How long a writer waits for a lock another process holds ($TOKBENCH_LOCK_TIMEOUT)."""
    return cache.lock_timeout_s(30.0)


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


class Store:
    """The results database. Open with Store(path); readers and the runner share one format."""

    def __init__(self, path: str | Path | None = None, *, create: bool = True) -> None:
        self.path = Path(path) if path else default_path()
        if not self.path.exists() and not create:
            raise TokbenchError(f"no result store at {self.path}: run a benchmark first, or pass --store")
        self.read_only = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=lock_timeout_s(), isolation_level=None)
            self.db.row_factory = sqlite3.Row
            with self._writing():
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except (_CannotWrite, OSError) as exc:
            if create or not self._open_read_only():
                raise exc if isinstance(exc, TokbenchError) else TokbenchError(
                    f"result store {self.path} cannot be opened ({exc}): pass another --store"
                ) from None
        except sqlite3.DatabaseError as exc:
            raise TokbenchError(
                f"result store {self.path} is unreadable ({exc}): pass another --store"
            ) from None

    def _open_read_only(self) -> bool:
        """Open for reading only, when the store cannot be written: as it is if its WAL files can
        be made, else as immutable (nothing else can be writing a read-only file)."""
        uri = self.path.resolve().as_uri()
        for mode in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                db = sqlite3.connect(uri + mode, uri=True, timeout=lock_timeout_s())
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except sqlite3.DatabaseError:
                continue
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise TokbenchError(
                    f"result store {self.path} is read-only and has schema "
                    f"v{row[0] if row else '?'}, not v{SCHEMA_VERSION}: copy it somewhere writable "
                    "and open the copy (tokbench migrates it)") from None
            db.row_factory = sqlite3.Row
            self.db, self.read_only = db, True
            return True
        return False

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """SQLite's write errors as one line each: a lock held too long, a read-only or full disk."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TokbenchError(
                    f"result store {self.path}: {exc} (another process held it over "
                    f"{lock_timeout_s():g} s); retry, or raise TOKBENCH_LOCK_TIMEOUT") from None
            raise _CannotWrite(f"result store {self.path} cannot be written ({exc}): free space, "
                               "fix its permissions or pass another --store") from None

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise TokbenchError(
                f"result store {self.path} has schema v{version}, newer than this tokbench reads "
                f"(v{SCHEMA_VERSION}): upgrade tokbench"
            )
        with self.transaction():
            self.db.execute(create_table_sql("runs", RUN_FIELDS))
            self.db.execute(create_table_sql("cases", CASE_FIELDS))
            self.db.execute(create_table_sql("trials", TRIAL_FIELDS))
            self.db.execute(create_table_sql("requests", REQUEST_FIELDS))
            self._add_missing_columns()
            self.db.execute("CREATE INDEX IF NOT EXISTS requests_case ON requests(case_id)")
            self.db.execute("CREATE INDEX IF NOT EXISTS trials_case ON trials(case_id)")
            self.db.execute("CREATE INDEX IF NOT EXISTS cases_run ON cases(run_id)")
            self.db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def _add_missing_columns(self) -> None:
        """Forward migration for fields added since a store was created (nullable columns)."""
        for table, fields in (("runs", RUN_FIELDS), ("cases", CASE_FIELDS), ("trials", TRIAL_FIELDS),
                              ("requests", REQUEST_FIELDS)):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for f in fields:
                if f.name not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {f.name} {f.sql}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing writes; nested uses join the outermost transaction."""
        if self.db.in_transaction:
            yield
            return
        with self._writing():
            self.db.execute("BEGIN IMMEDIATE")
        try:
            with self._writing():
                yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        with self._writing():
            self.db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------
    @staticmethod
    def _encode(values: dict[str, Any]) -> dict[str, Any]:
        return {
            k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v
            for k, v in values.items()
        }

    def _insert(self, table: str, allowed: list[str], values: dict[str, Any]) -> int:
        unknown = set(values) - set(allowed)
        if unknown:
            raise ValueError(f"unknown {table} fields: {sorted(unknown)}")
        values = self._encode(values)
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        with self._writing():
            cur = self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", values)
        return int(cur.lastrowid)

    def _update(self, table: str, key: str, key_value: Any, values: dict[str, Any]) -> None:
        values = self._encode(values)
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self._writing():
            self.db.execute(f"UPDATE {table} SET {sets} WHERE {key} = :_key",
                            {**values, "_key": key_value})

    def add_run(self, **values: Any) -> None:
        self._insert("runs", names(RUN_FIELDS), values)

    def update_run(self, run_id: str, **values: Any) -> None:
        self._update("runs", "run_id", run_id, values)

    def add_case(self, **values: Any) -> int:
        return self._insert("cases", names(CASE_FIELDS), values)

    def update_case(self, case_id: int, **values: Any) -> None:
        self._update("cases", "case_id", case_id, values)

    def add_trial(self, case_id: int, trial: int, samples: Iterable[dict[str, Any]],
                  started_at: float | None = None,
                  requests: Iterable[dict[str, Any]] = ()) -> None:
        """Store one trial's phase samples, and a serving trial's request records, atomically."""
        allowed = names(REQUEST_FIELDS)
        with self.transaction():
            for r in requests:
                self._insert("requests", allowed, {"case_id": case_id, "trial": trial,
                                                   **{k: v for k, v in r.items() if k in allowed}})
            for s in samples:
                self._insert("trials", names(TRIAL_FIELDS), {
                    "case_id": case_id, "trial": trial, "phase": s["phase"],
                    "n_tokens": s["n_tokens"], "duration_ns": s["duration_ns"],
                    "token_ns": s.get("token_ns") or None, "started_at": started_at,
                })

    # -- reading -------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM cases c WHERE c.run_id = r.run_id) AS n_cases, "
            "(SELECT COUNT(*) FROM cases c WHERE c.run_id = r.run_id AND c.status != 'ok') AS n_failed "
            "FROM runs r ORDER BY started_at"
        ).fetchall()
        return [_decode(r) for r in rows]

    def has_run(self, run_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None

    def resolve_run(self, ref: str) -> str:
        """A run id from `last`, `last~N`, a full id or a unique prefix."""
        ids = [r[0] for r in self.db.execute("SELECT run_id FROM runs ORDER BY started_at")]
        if not ids:
            raise TokbenchError(f"result store {self.path} holds no runs yet: run a benchmark first")
        if ref == "last" or ref.startswith("last~"):
            back = int(ref[5:] or 0) if ref != "last" else 0
            if back >= len(ids):
                raise TokbenchError(f"run {ref!r} does not exist: the store holds {len(ids)} runs")
            return ids[-1 - back]
        matches = [i for i in ids if i.startswith(ref)]
        if len(matches) != 1:
            what = "matches no run" if not matches else f"matches {len(matches)} runs"
            raise TokbenchError(f"run {ref!r} {what}: see `tokbench runs`")
        return matches[0]

    def run(self, run_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _decode(row)

    def cases(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM cases WHERE run_id = ? ORDER BY case_index", (run_id,)
        ).fetchall()
        return [_decode(r) for r in rows]

    def case(self, case_id: int) -> dict[str, Any]:
        return _decode(self.db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone())

    def _case_rows(self, table: str, run_id: str, order: str, case_id: int | None = None
                   ) -> list[dict[str, Any]]:
        """Rows of a per-case table (trials, requests) for one run (or one of its cases), in case
        order, then `order`."""
        where, args = ("c.run_id = ?", (run_id,)) if case_id is None else ("c.case_id = ?", (case_id,))
        rows = self.db.execute(
            f"SELECT x.* FROM {table} x JOIN cases c ON c.case_id = x.case_id "
            f"WHERE {where} ORDER BY c.case_index, {order}", args
        ).fetchall()
        return [_decode(r) for r in rows]

    def trials(self, run_id: str, case_id: int | None = None) -> list[dict[str, Any]]:
        return self._case_rows("trials", run_id, "x.trial, x.rowid", case_id)

    def requests(self, run_id: str, case_id: int | None = None) -> list[dict[str, Any]]:
        return self._case_rows("requests", run_id, "x.trial, x.request", case_id)

    def run_state(self, run: dict[str, Any]) -> str:
        """The run's status, telling a live run from one whose runner died."""
        if run["status"] != "running":
            return run["status"]
        if run.get("host") == os.uname().nodename and run.get("runner_pid"):
            try:
                os.kill(run["runner_pid"], 0)
                return "running"
            except ProcessLookupError:
                pass
            except PermissionError:
                return "running"
        return "incomplete"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(2).hex()
