"""The result store: a SQLite file (WAL) on one machine, or a PostgreSQL database for a fleet,
through one SQLAlchemy Core schema (results.schema) that Alembic migrates.

Every trial is committed as it finishes, so a killed run keeps it. Several runs may write one
store at once; on SQLite a writer waits for another's transaction up to $TOKBENCH_LOCK_TIMEOUT
seconds (default 30), then fails with one line. Readers open a SQLite store they cannot write
(a read-only mount or file) read-only, without migrating it. A PostgreSQL URL's password is never
printed: errors show the URL masked."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from harness.common import cache
from harness.common.errors import TokbenchError
from results import schema
from results.schema import HEAD_REVISION, SCHEMA_VERSION, TABLES, names

_JSON_COLUMNS = {"profile", "fingerprint", "params", "param_defaults", "engine", "memory", "token_ns",
                 "load", "client", "notes", "chunk_ns", "sweep", "server_timings", "contended",
                 "source", "aggregate"}
T = TypeVar("T")
_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def default_path() -> Path:
    """$XDG_DATA_HOME/tokbench/results.db (the default when neither --store nor $TOKBENCH_STORE)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tokbench" / "results.db"


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(_PG_SCHEMES)


def masked(location: str | Path) -> str:
    """A store's location fit to print: a URL's password (in it or in its query) as ***."""
    if not is_url(location):
        return str(location)
    try:
        url = sa.engine.make_url(str(location))
    except sa.exc.ArgumentError:
        return "postgresql://***"
    query = {k: ("***" if k == "password" else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


class _Lost(TokbenchError):
    """The connection to a PostgreSQL store was cut (a killed backend, a restart, the network)."""


class _CannotWrite(TokbenchError):
    """The store refused a write: read-only, full, or unwritable (not a lock held too long)."""


def lock_timeout_s() -> float:
    """How long a writer waits for a lock another process holds ($TOKBENCH_LOCK_TIMEOUT)."""
    return cache.lock_timeout_s(30.0)


def _decode(row: sa.Row) -> dict[str, Any]:
    out = dict(row._mapping)
    for key in _JSON_COLUMNS & out.keys():
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


def _sqlite_engine(target: str, uri: bool = False) -> sa.Engine:
    """SQLite through the sqlite3 module as tokbench always opened it: its own lock timeout, and
    transactions begun by the store (BEGIN IMMEDIATE), never implicitly."""
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(target, timeout=lock_timeout_s(), isolation_level=None, uri=uri,
                               check_same_thread=False)

    return sa.create_engine("sqlite://", creator=connect, isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool)


def _pg_engine(url: str) -> sa.Engine:
    """PostgreSQL through psycopg 3; credentials from the URL, $PGPASSWORD or ~/.pgpass (libpq),
    TLS through `sslmode` in the URL."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise TokbenchError(f"store URL {masked(url)} is malformed: write "
                            "postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=require]") from None
    if not parsed.database:
        raise TokbenchError(f"store URL {masked(url)} names no database: write "
                            "postgresql://USER@HOST[:PORT]/DATABASE")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise TokbenchError("a postgresql:// store needs psycopg: pip install 'tokbench[fleet]'") from None
    return sa.create_engine(parsed.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT",
                            poolclass=sa.pool.NullPool,
                            connect_args={"connect_timeout": 10, "application_name": "tokbench"})


class Store:
    """The results database. Open with Store(path or postgresql:// URL); readers and the runner
    share one format."""

    def __init__(self, location: str | Path | None = None, *, create: bool = True) -> None:
        location = location or os.environ.get("TOKBENCH_STORE") or default_path()
        self.is_pg = is_url(location)
        self.path: Path | str = masked(location) if self.is_pg else Path(location)
        self.read_only = False
        self._depth = 0
        self._secret = str(location) if self.is_pg else ""
        if self.is_pg:
            self._open_pg(str(location))
        else:
            self._open_sqlite(create)

    # -- opening ---------------------------------------------------------------------------------
    def _open_sqlite(self, create: bool) -> None:
        assert isinstance(self.path, Path)
        if not self.path.exists() and not create:
            raise TokbenchError(f"no result store at {self.path}: run a benchmark first, or pass --store")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = _sqlite_engine(str(self.path)).connect()
            with self._writing():
                self.conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                self.conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                self._migrate()
        except (_CannotWrite, OSError) as exc:
            if create or not self._open_read_only():
                raise exc if isinstance(exc, TokbenchError) else TokbenchError(
                    f"result store {self.path} cannot be opened ({exc}): pass another --store"
                ) from None
        except sa.exc.DatabaseError as exc:
            raise TokbenchError(
                f"result store {self.path} is unreadable ({exc.orig}): pass another --store"
            ) from None

    def _open_read_only(self) -> bool:
        """Open for reading only, when the store cannot be written: as it is if its WAL files can
        be made, else as immutable (nothing else can be writing a read-only file)."""
        assert isinstance(self.path, Path)
        uri = self.path.resolve().as_uri()
        for mode in ("?mode=ro", "?mode=ro&immutable=1"):
            try:
                conn = _sqlite_engine(uri + mode, uri=True).connect()
                meta, revision = self._versions(conn)
            except sa.exc.DatabaseError:
                continue
            if meta != SCHEMA_VERSION or revision not in (None, HEAD_REVISION):
                raise TokbenchError(
                    f"result store {self.path} is read-only and has schema "
                    f"v{meta or '?'}, not v{SCHEMA_VERSION}: copy it somewhere writable "
                    "and open the copy (tokbench migrates it)") from None
            self.conn, self.read_only = conn, True
            return True
        return False

    def _open_pg(self, url: str) -> None:
        try:
            self.conn = _pg_engine(url).connect()
        except sa.exc.DBAPIError as exc:
            raise TokbenchError(f"fleet store {self.path} cannot be reached ({self._clean(exc)}): "
                                "check the URL, the server and the credentials") from None
        self._migrate()

    def _clean(self, exc: sa.exc.DBAPIError) -> str:
        """The driver's message in one line, with no secret of the URL in it."""
        text = " ".join(str(exc.orig).split())
        password = sa.engine.make_url(self._secret).password if self._secret else None
        return text.replace(str(password), "***") if password else text

    @staticmethod
    def _versions(conn: sa.Connection) -> tuple[int | None, str | None]:
        """(meta's schema_version, Alembic's revision), None where a table is missing."""
        tables = set(sa.inspect(conn).get_table_names())
        meta = revision = None
        if "meta" in tables:
            row = conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
            meta = int(row[0]) if row else None
        if "alembic_version" in tables:
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
            revision = row[0] if row else None
        return meta, revision

    def _migrate(self) -> None:
        """Bring the store to HEAD_REVISION with Alembic (an old SQLite store gains its missing
        columns); one migrator at a time; refuse a store newer than this tokbench."""
        with self.transaction():
            if self.is_pg:  # concurrent first openers of an empty fleet database wait for one
                self.conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7462622)")
            meta, revision = self._versions(self.conn)
            if meta == SCHEMA_VERSION and revision == HEAD_REVISION:
                return
            from results import migrations  # alembic: only when there is something to do

            if (meta or 0) > SCHEMA_VERSION or not migrations.known(revision):
                raise TokbenchError(
                    f"result store {self.path} has schema v{meta} (revision {revision}), newer than "
                    f"this tokbench reads (v{SCHEMA_VERSION}): upgrade tokbench")
            migrations.upgrade(self.conn)
            self.conn.execute(sa.delete(schema.meta).where(schema.meta.c.key == "schema_version"))
            self.conn.execute(sa.insert(schema.meta).values(key="schema_version", value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        self.conn.close()

    # -- transactions ----------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The database's write errors as one line each: a lock held too long, a read-only or full
        disk, a lost connection or a missing privilege."""
        try:
            yield
        except sa.exc.DBAPIError as exc:
            message = self._clean(exc)
            if isinstance(exc, sa.exc.OperationalError) and ("locked" in message or "busy" in message):
                raise TokbenchError(
                    f"result store {self.path}: {message} (another process held it over "
                    f"{lock_timeout_s():g} s); retry, or raise TOKBENCH_LOCK_TIMEOUT") from None
            if self.is_pg:
                kind = _Lost if exc.connection_invalidated else TokbenchError
                raise kind(f"fleet store {self.path} failed: {message}") from None
            if isinstance(exc, sa.exc.OperationalError):
                raise _CannotWrite(f"result store {self.path} cannot be written ({message}): free space, "
                                   "fix its permissions or pass another --store") from None
            raise

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing writes; nested uses join the outermost transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._writing():
            self.conn.exec_driver_sql("BEGIN" if self.is_pg else "BEGIN IMMEDIATE")
        self._depth = 1
        try:
            with self._writing():
                yield
        except BaseException:
            self._depth = 0
            try:
                self.conn.exec_driver_sql("ROLLBACK")
            except sa.exc.SQLAlchemyError:  # the connection is gone, and its transaction with it
                self.conn.rollback()  # (the next use reconnects)
            raise
        self._depth = 0
        with self._writing():
            self.conn.exec_driver_sql("COMMIT")

    # -- writing ---------------------------------------------------------------------------------
    @staticmethod
    def _encode(values: dict[str, Any]) -> dict[str, Any]:
        return {
            k: json.dumps(v) if k in _JSON_COLUMNS and v is not None else v
            for k, v in values.items()
        }

    def _insert(self, table: str, values: dict[str, Any]) -> Any:
        """Insert one row; its primary key (case_id for a case)."""
        t, fields = TABLES[table]
        unknown = set(values) - set(names(fields))
        if unknown:
            raise ValueError(f"unknown {table} fields: {sorted(unknown)}")
        with self._writing():
            result = self.conn.execute(sa.insert(t), self._encode(values))
        key = result.inserted_primary_key
        return key[0] if key else None

    def _update(self, table: str, key: str, key_value: Any, values: dict[str, Any]) -> None:
        t = TABLES[table][0]
        with self._writing():
            self.conn.execute(sa.update(t).where(t.c[key] == sa.bindparam("_key")),
                              {**self._encode(values), "_key": key_value})

    def _reconnecting(self, write: Callable[[], T]) -> T:
        """Run a write; if the connection to a PostgreSQL store was cut, once more on a new one
        (a runner measuring into the fleet store outlives a killed backend or a server restart).
        Not inside a larger transaction: the database dropped its earlier writes."""
        try:
            return write()
        except _Lost:
            if self._depth:
                raise
            with suppress(sa.exc.SQLAlchemyError):
                self.conn.rollback()
            return write()

    def add_run(self, **values: Any) -> None:
        self._reconnecting(lambda: self._insert("runs", values))

    def update_run(self, run_id: str, **values: Any) -> None:
        self._reconnecting(lambda: self._update("runs", "run_id", run_id, values))

    def add_case(self, **values: Any) -> int:
        return int(self._reconnecting(lambda: self._insert("cases", values)))

    def update_case(self, case_id: int, **values: Any) -> None:
        self._reconnecting(lambda: self._update("cases", "case_id", case_id, values))

    def add_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert many rows of a table at once (a copied run's trials or requests)."""
        if rows:
            t, fields = TABLES[table]
            unknown = set().union(*rows) - set(names(fields))
            if unknown:
                raise ValueError(f"unknown {table} fields: {sorted(unknown)}")
            with self._writing():
                self.conn.execute(sa.insert(t), [self._encode(r) for r in rows])

    def claim(self, run_id: str) -> None:
        """Inside a transaction: hold the run id until it ends, so two writers of one run take
        turns (SQLite's BEGIN IMMEDIATE already does; PostgreSQL takes an advisory lock)."""
        if self.is_pg:
            with self._writing():
                self.conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": run_id})

    def add_trial(self, case_id: int, trial: int, samples: Iterable[dict[str, Any]],
                  started_at: float | None = None,
                  requests: Iterable[dict[str, Any]] = ()) -> None:
        """Store one trial's phase samples, and a serving trial's request records, atomically."""
        allowed = names(schema.REQUEST_FIELDS)
        samples, requests = list(samples), list(requests)

        def write() -> None:
            with self.transaction():
                for r in requests:  # one by one: records differ in the fields they carry
                    self._insert("requests", {"case_id": case_id, "trial": trial,
                                              **{k: v for k, v in r.items() if k in allowed}})
                for s in samples:
                    self._insert("trials", {
                        "case_id": case_id, "trial": trial, "phase": s["phase"],
                        "n_tokens": s["n_tokens"], "duration_ns": s["duration_ns"],
                        "token_ns": s.get("token_ns") or None, "started_at": started_at,
                    })

        self._reconnecting(write)

    # -- reading ---------------------------------------------------------------------------------
    def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self._writing():
            return [_decode(r) for r in self.conn.execute(sa.text(sql), params)]

    def runs(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT r.*, (SELECT COUNT(*) FROM cases c WHERE c.run_id = r.run_id) AS n_cases, "
            "(SELECT COUNT(*) FROM cases c WHERE c.run_id = r.run_id AND c.status != 'ok') AS n_failed "
            "FROM runs r ORDER BY started_at")

    def run_ids(self) -> set[str]:
        return {r["run_id"] for r in self._rows("SELECT run_id FROM runs")}

    def has_run(self, run_id: str) -> bool:
        return bool(self._rows("SELECT 1 AS one FROM runs WHERE run_id = :r", r=run_id))

    def resolve_run(self, ref: str) -> str:
        """A run id from `last`, `last~N`, a full id or a unique prefix."""
        ids = [r["run_id"] for r in self._rows("SELECT run_id FROM runs ORDER BY started_at")]
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
        return self._rows("SELECT * FROM runs WHERE run_id = :r", r=run_id)[0]

    def cases(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM cases WHERE run_id = :r ORDER BY case_index", r=run_id)

    def case(self, case_id: int) -> dict[str, Any]:
        return self._rows("SELECT * FROM cases WHERE case_id = :c", c=case_id)[0]

    def _case_rows(self, table: str, run_id: str, order: str, case_id: int | None = None
                   ) -> list[dict[str, Any]]:
        """Rows of a per-case table (trials, requests) for one run (or one of its cases), in case
        order, then `order`."""
        where, key = ("c.run_id = :k", run_id) if case_id is None else ("c.case_id = :k", case_id)
        return self._rows(f"SELECT x.* FROM {table} x JOIN cases c ON c.case_id = x.case_id "
                          f"WHERE {where} ORDER BY c.case_index, {order}", k=key)

    def trials(self, run_id: str, case_id: int | None = None) -> list[dict[str, Any]]:
        return self._case_rows("trials", run_id, "x.trial, x.phase", case_id)

    def requests(self, run_id: str, case_id: int | None = None) -> list[dict[str, Any]]:
        return self._case_rows("requests", run_id, "x.trial, x.request", case_id)

    def run_state(self, run: dict[str, Any]) -> str:
        """The run's status, telling a live run from one whose runner died (on this host; a
        fleet store's run of another host still being written is "running elsewhere")."""
        if run["status"] != "running":
            return run["status"]
        if run.get("host") and run["host"] != os.uname().nodename:
            return "running elsewhere"
        if run.get("runner_pid"):
            try:
                os.kill(run["runner_pid"], 0)
                return "running"
            except ProcessLookupError:
                pass
            except PermissionError:
                return "running"
        return "incomplete"


def new_run_id() -> str:
    """UTC start time and 32 random bits: unique across the machines of a fleet store."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + os.urandom(4).hex()
