"""The PostgreSQL fleet store against a real server started by the tests (tests/pg_server.py):
one schema for both stores, Alembic's migration of old SQLite stores, every reader on either
store, push/pull (idempotent, whole runs only, a killed connection leaving no half run), several
writers at once, least-privilege roles, TLS, and credentials never stored or printed."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import results
from harness.cli.main import main
from harness.common.errors import TokbenchError
from results import migrations
from results.schema import HEAD_REVISION, SCHEMA_VERSION, TABLES
from results.store import Store
from tests.conftest import GEMMA
from tests.pg_server import SUPERPASS, PgServer
from tests.report_runs import decode_case, write_run

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TINY_RUN = ["run", "-m", GEMMA, "-w", "pp16+tg4", "-r", "3", "-t", "1", "--no-bandwidth"]


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli.main", *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _columns(store: Store) -> dict[str, list[str]]:
    inspector = sa.inspect(store.conn)
    return {t: [c["name"] for c in inspector.get_columns(t)] for t in TABLES}


# -- one schema, migrated by Alembic --------------------------------------------------------------
def test_the_schema_head_is_alembics_head() -> None:
    assert migrations.head() == HEAD_REVISION


def test_postgres_and_sqlite_stores_have_one_schema(pg_url: str, tmp_path: Path) -> None:
    pg, lite = Store(pg_url), Store(tmp_path / "r.db")
    declared = {t: [f.name for f in fields] for t, (_, fields) in TABLES.items()}
    assert _columns(pg) == _columns(lite) == declared
    durations = pg.conn.execute(sa.text(
        "SELECT data_type FROM information_schema.columns WHERE table_name = 'trials' "
        "AND column_name = 'duration_ns'")).scalar()
    assert durations == "bigint"  # nanoseconds overflow a 32-bit integer after 2.1 s
    comment = pg.conn.execute(sa.text("SELECT col_description('runs'::regclass, 1)")).scalar()
    assert comment == TABLES["runs"][1][0].doc  # the fleet database documents itself
    for s in (pg, lite):
        assert s.conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION


def test_a_store_from_before_alembic_is_migrated(tmp_path: Path) -> None:
    """A v5 store as tokbench's add-column step made it (its own DDL, no alembic_version) gains
    v6's and v7's columns and keeps its rows."""
    path = tmp_path / "v5.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('schema_version', '5')")
    for name, (_, fields) in TABLES.items():
        old = [f for f in fields if f.name not in ("contended", "source", "aggregate")]
        db.execute(f"CREATE TABLE {name} ({', '.join(f'{f.name} {f.sql}' for f in old)})")
    db.execute("INSERT INTO runs (run_id, started_at, status) VALUES ('old', 1.0, 'complete')")
    db.commit()
    db.close()
    store = Store(path)
    assert {"contended", "source"} <= set(_columns(store)["runs"])
    assert "aggregate" in _columns(store)["cases"]
    assert [r["run_id"] for r in store.runs()] == ["old"]
    row = store.conn.execute(sa.text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    assert row == str(SCHEMA_VERSION)


def test_a_store_newer_than_this_tokbench_is_refused(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    Store(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    assert main(["--store", pg_url, "runs"]) == 2
    assert "newer than this tokbench reads" in capsys.readouterr().err


# -- every reader on PostgreSQL, a run written straight to it ------------------------------------
@pytest.mark.engine
def test_runs_measured_into_postgres_and_every_reader(pg_url: str, tmp_path: Path) -> None:
    for _ in range(2):
        done = _cli("--store", pg_url, *TINY_RUN)
        assert done.returncode == 0, done.stderr
        assert SUPERPASS not in done.stdout + done.stderr
    store = Store(pg_url, create=False)
    runs = store.runs()
    assert [r["status"] for r in runs] == ["complete", "complete"]
    assert all(SUPERPASS not in r["command"] and ":***@" in r["command"] for r in runs)
    frame = results.load(store=pg_url)
    assert sorted(frame["phase"]) == ["pp", "tg"] and set(frame["n_trials"]) == {3}
    assert len(results.load(level="trials", store=pg_url)) == 6
    outputs = {}
    for argv in (["runs"], ["show", "last"], ["export", "last", "--format", "json"],
                 ["report", "last~1", "last", "--format", "md"], ["compare", "last~1", "last"],
                 ["gate", "--baseline", "last~1", "--current", "last"]):
        done = _cli("--store", pg_url, *argv)
        assert done.returncode in ((0, 3) if argv[0] == "gate" else (0,)), (argv, done.stderr)
        assert SUPERPASS not in done.stdout + done.stderr
        outputs[argv[0]] = done.stdout
    assert runs[1]["run_id"] in outputs["runs"]
    exported = json.loads(outputs["export"])
    assert [len(c["trials"]) for c in exported["cases"]] == [6]  # 3 trials × pp, tg
    assert "pp16" in outputs["compare"] and "tg4" in outputs["compare"]


# -- push and pull -------------------------------------------------------------------------------
def test_push_pull_round_trip_is_idempotent(pg_url: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    local, back = tmp_path / "laptop.db", tmp_path / "analysis.db"
    write_run(local, "20261203-100000-aaaaaaaa", [decode_case(50.0), decode_case(40.0, n_depth=256)])
    write_run(local, "20261203-110000-bbbbbbbb", [decode_case(45.0)], started=2.0)
    assert main(["--store", str(local), "push", "last~1", "last", "--to", pg_url]) == 0
    assert "copied" in capsys.readouterr().out
    counts = {t: _count(pg_url, t) for t in ("runs", "cases", "trials")}
    n_trials = sum(len(Store(local).trials(r["run_id"])) for r in Store(local).runs())
    assert counts == {"runs": 2, "cases": 3, "trials": n_trials} and n_trials > 3
    assert main(["--store", str(local), "push", "--all", "--to", pg_url]) == 0  # nothing new
    assert main(["--store", str(local), "push", "last", "--to", pg_url]) == 0
    assert "already in" in capsys.readouterr().out
    assert {t: _count(pg_url, t) for t in counts} == counts
    assert main(["--store", str(back), "pull", "2026", "--from", pg_url]) == 2  # ambiguous prefix
    assert main(["--store", str(back), "pull", "--all", "--from", pg_url]) == 0
    for run_id in ("20261203-100000-aaaaaaaa", "20261203-110000-bbbbbbbb"):
        a, b = Store(local), Store(back)
        assert b.run(run_id) == a.run(run_id)
        strip = [{k: v for k, v in c.items() if k != "case_id"} for c in a.cases(run_id)]
        assert [{k: v for k, v in c.items() if k != "case_id"} for c in b.cases(run_id)] == strip
        assert ([{k: v for k, v in t.items() if k != "case_id"} for t in b.trials(run_id)]
                == [{k: v for k, v in t.items() if k != "case_id"} for t in a.trials(run_id)])
    capsys.readouterr()
    assert main(["--store", str(back), "report", "last", "--format", "md"]) == 0
    assert "tg16" in capsys.readouterr().out


def test_a_running_run_is_not_pushed(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "r.db"
    store = Store(local)
    store.add_run(run_id="live", started_at=1.0, status="running", runner_pid=os.getpid(),
                  host=os.uname().nodename)
    assert main(["--store", str(local), "push", "live", "--to", pg_url]) == 1
    assert "still running" in capsys.readouterr().out
    assert _count(pg_url, "runs") == 0


def _big_serving_run(path: Path) -> None:
    write_run(path, "20261203-120000-cccccccc", [decode_case(50.0)] * 30)
    store = Store(path)
    case_id = store.cases("20261203-120000-cccccccc")[-1]["case_id"]
    store.add_trial(case_id, 99, [], requests=[
        {"request": i, "status": "ok", "ttft_ns": 1000 + i, "e2el_ns": 9000 + i} for i in range(200)])


def test_a_push_killed_mid_transaction_leaves_no_half_run(pg_url: str, pg_server: PgServer,
                                                         tmp_path: Path) -> None:
    local = tmp_path / "r.db"
    _big_serving_run(local)
    Store(pg_url).close()  # the tables exist, so the lock below has something to hold
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")  # the push waits mid-run
        push = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "--store", str(local), "push",
                                 "last", "--to", pg_url], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        pid, deadline = None, time.monotonic() + 60
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.05)
            row = pg_server.sql("SELECT pid FROM pg_stat_activity WHERE application_name = 'tokbench' "
                                "AND wait_event_type = 'Lock'", database=pg_url.rsplit("/", 1)[1])
            pid = int(row) if row else None
        assert pid is not None, "the push never reached the requests table"
        pg_server.sql(f"SELECT pg_terminate_backend({pid})")
        holder.rollback()
    out, err = push.communicate(timeout=60)
    assert push.returncode == 1 and not err  # the run not pushed, said in one line
    assert len(out.strip().splitlines()) == 1 and "fleet store" in out and SUPERPASS not in out
    assert [_count(pg_url, t) for t in ("runs", "cases", "trials", "requests")] == [0, 0, 0, 0]
    assert main(["--store", str(local), "push", "last", "--to", pg_url]) == 0  # later, whole
    assert [_count(pg_url, t) for t in ("runs", "cases", "requests")] == [1, 30, 200]


@pytest.mark.engine
def test_several_writers_at_once_lose_nothing(pg_url: str, tmp_path: Path) -> None:
    """Three runs measured into the fleet store at once, while two machines push the same run:
    every trial of every run is there, and the pushed run once."""
    local = tmp_path / "laptop.db"
    write_run(local, "20261203-130000-dddddddd", [decode_case(50.0)] * 5)
    Store(pg_url).close()
    runs = [subprocess.Popen([sys.executable, "-m", "harness.cli.main", "--store", pg_url, "run", "-m",
                              GEMMA, "-w", "tg4", "-r", "4", "-t", "1", "--no-bandwidth"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    pushes = [subprocess.Popen([sys.executable, "-m", "harness.cli.main", "--store", str(local), "push",
                                "last", "--to", pg_url], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in [*runs, *pushes]:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = Store(pg_url, create=False)
    measured = [r for r in store.runs() if r["run_id"] != "20261203-130000-dddddddd"]
    assert len(measured) == 3 and all(r["status"] == "complete" for r in measured)
    assert [len(store.trials(r["run_id"])) for r in measured] == [4, 4, 4]
    assert len(store.cases("20261203-130000-dddddddd")) == 5
    assert _count(pg_url, "runs") == 4


@pytest.mark.engine
def test_a_run_keeps_its_trials_when_the_fleet_is_unreachable(pg_url: str, pg_server: PgServer,
                                                              tmp_path: Path) -> None:
    """`run --push`: the fleet refuses the connection (the role lost its login mid-run), so the
    run stays in the local store, says how to push it, and a later push sends it whole."""
    Store(pg_url).close()
    pg_server.sql("CREATE ROLE offline_pusher LOGIN PASSWORD 'pusher-pw-1'")  # roles span databases
    db = pg_url.rsplit("/", 1)[1]
    pg_server.sql(_grants("offline_pusher"), database=db)
    url = pg_server.url("offline_pusher", "pusher-pw-1", db)
    local = tmp_path / "local.db"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "--store", str(local), "run", "-m",
                             GEMMA, "-w", "tg8", "-r", "6", "-t", "1", "--no-bandwidth", "--push", url],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (local.exists() and _local_trials(local)):
        time.sleep(0.2)
    pg_server.sql("ALTER ROLE offline_pusher NOLOGIN")  # the fleet goes away mid-run
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "not pushed" in out and "push it later" in out and "pusher-pw-1" not in out + err
    assert _count(pg_url, "runs") == 0
    assert _local_trials(local) == 6
    pg_server.sql("ALTER ROLE offline_pusher LOGIN")
    assert main(["--store", str(local), "push", "last", "--to", url]) == 0
    assert _count(pg_url, "trials") == 6


def _local_trials(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM trials").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


# -- security ------------------------------------------------------------------------------------
def _grants(role: str) -> str:
    """The pushing role's grants, exactly as the README's Fleet section gives them."""
    block = re.search(r"```sql\n(-- a pushing machine.*?)```", README, re.S)
    assert block, "the README's Fleet section lost its least-privilege SQL"
    return block.group(1).replace("lab_pusher", role)


def test_least_privilege_roles(pg_url: str, pg_server: PgServer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """The README's pushing role (INSERT and SELECT) is enough to push; a read-only role reads
    every report and cannot write, in one line."""
    Store(pg_url).close()
    db = pg_url.rsplit("/", 1)[1]
    pg_server.sql("CREATE ROLE lab_pusher LOGIN PASSWORD 'pusher-pw-2'")
    pg_server.sql("CREATE ROLE lab_reader LOGIN PASSWORD 'reader-pw-2'")
    pg_server.sql(_grants("lab_pusher"), database=db)
    pg_server.sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO lab_reader", database=db)
    local = tmp_path / "r.db"
    write_run(local, "20261203-140000-eeeeeeee", [decode_case(50.0), decode_case(20.0)])
    pusher = pg_server.url("lab_pusher", "pusher-pw-2", db)
    reader = pg_server.url("lab_reader", "reader-pw-2", db)
    assert main(["--store", str(local), "push", "last", "--to", pusher]) == 0
    assert main(["--store", str(local), "push", "last", "--to", pusher]) == 0  # and sees it is there
    write_run(local, "20261203-150000-ffffffff", [decode_case(40.0)], started=2.0)
    capsys.readouterr()
    assert main(["--store", str(local), "push", "last", "--to", reader]) == 1
    out = capsys.readouterr().out
    assert "permission denied" in out and "reader-pw-2" not in out
    for argv in (["runs"], ["show", "last"], ["report", "last"], ["export", "last"]):
        assert main(["--store", reader, *argv]) == 0, argv
    assert "reader-pw-2" not in "".join(capsys.readouterr())
    with psycopg.connect(pusher) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM trials")  # pushing machines cannot erase the fleet's history


def test_credentials_are_masked_in_every_error(pg_server: PgServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    wrong = pg_server.url(password="not-the-password-xyz")
    assert main(["--store", wrong, "runs"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "not-the-password-xyz" not in err and ":***@" in err and "password authentication failed" in err
    in_query = f"postgresql://127.0.0.1:{pg_server.port}/postgres?user=x&password=query-secret-77"
    assert main(["--store", in_query, "runs"]) == 2
    assert "query-secret-77" not in capsys.readouterr().err
    assert main(["--store", "postgresql://h/", "runs"]) == 2
    assert "names no database" in capsys.readouterr().err


def test_tls_through_sslmode(pg_url: str) -> None:
    store = Store(pg_url + "?sslmode=require")
    assert store.conn.execute(sa.text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar()
    assert main(["--store", pg_url + "?sslmode=verify-full&sslrootcert=/nonexistent.crt", "runs"]) == 2


@pytest.mark.engine
def test_a_run_into_postgres_outlives_its_connection_being_killed(pg_url: str, pg_server: PgServer) -> None:
    """The runner's connection to the fleet store is terminated mid-run (as a server restart or a
    network cut would): the next write reconnects, and not a trial is lost."""
    Store(pg_url).close()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "--store", pg_url, "run", "-m", GEMMA,
                             "-w", "tg16", "-r", "12", "-t", "1", "--no-bandwidth"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = pg_url.rsplit("/", 1)[1]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _count(pg_url, "trials") < 2:
        time.sleep(0.1)
    killed = pg_server.sql("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           f"WHERE application_name = 'tokbench' AND datname = '{db}'")
    at_kill = _count(pg_url, "trials")
    _, err = proc.communicate(timeout=300)
    assert killed == "1" and 2 <= at_kill < 12  # the runner's one connection, mid-run
    assert proc.returncode == 0, err
    store = Store(pg_url, create=False)
    (run,) = store.runs()
    assert run["status"] == "complete"
    assert sorted(t["trial"] for t in store.trials(run["run_id"])) == list(range(12))


def test_the_password_can_come_from_a_pgpass_file(pg_url: str, pg_server: PgServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's ~/.pgpass (here through $PGPASSFILE): a URL without a password connects, and the
    store's location shows no secret."""
    Store(pg_url).close()
    db = pg_url.rsplit("/", 1)[1]
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{pg_server.port}:{db}:tokbench_admin:{SUPERPASS}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    bare = f"postgresql://tokbench_admin@127.0.0.1:{pg_server.port}/{db}"
    store = Store(bare)
    assert store.path == bare and store.runs() == []
    pgpass.write_text("")
    with pytest.raises(TokbenchError, match="password"):
        Store(bare)
