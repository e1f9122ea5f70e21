"""What the store costs per trial commit: plain sqlite3 (as tokbench wrote before SQLAlchemy),
tokbench's Store on SQLite (SQLAlchemy Core), and tokbench's Store on a PostgreSQL server on
loopback (started here with tests/pg_server.py).

Each writer commits N trials of one decode case, each trial as the runner writes it: a pp and a tg
sample (the tg one with its 128 per-token times), in one transaction. The writers take turns in
R rounds so the machine's noise hits them alike; the figure is the median per-trial commit time
over rounds, with the range.

    python benchmarks/store_overhead.py --trials 300 --rounds 5 --out benchmarks/store_overhead_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results.store import Store
from tests import pg_server

SAMPLES = [{"phase": "pp", "n_tokens": 512, "duration_ns": 812_345_678},
           {"phase": "tg", "n_tokens": 128, "duration_ns": 2_123_456_789,
            "token_ns": [16_000_000 * (i + 1) for i in range(128)]}]
CASE = dict(case_index=0, backend="llama.cpp", model="m", workload="pp512+tg128", n_prompt=512,
            n_gen=128, n_depth=0, params={"threads": 2}, repetitions=1, status="running")


def plain_sqlite(path: Path, trials: int) -> list[float]:
    """The pre-SQLAlchemy writer: sqlite3, WAL, one BEGIN IMMEDIATE … COMMIT per trial."""
    Store(path).close()  # the same tables
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO runs (run_id, started_at, status) VALUES ('r', 0, 'running')")
    case_id = db.execute("INSERT INTO cases (run_id, case_index, backend, model, workload, n_prompt, "
                         "n_gen, n_depth, params, repetitions, status) VALUES "
                         "('r', 0, 'b', 'm', 'w', 1, 1, 0, '{}', 1, 'running')").lastrowid
    times = []
    for trial in range(trials):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for s in SAMPLES:
            db.execute("INSERT INTO trials (case_id, trial, phase, n_tokens, duration_ns, token_ns, "
                       "started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (case_id, trial, s["phase"], s["n_tokens"], s["duration_ns"],
                        json.dumps(s.get("token_ns")) if s.get("token_ns") else None, time.time()))
        db.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    db.close()
    return times


def tokbench_store(location: Any, trials: int) -> list[float]:
    store = Store(location)
    run_id = f"r-{os.urandom(4).hex()}"
    store.add_run(run_id=run_id, started_at=0.0, status="running")
    case_id = store.add_case(run_id=run_id, **CASE)
    times = []
    for trial in range(trials):
        t0 = time.perf_counter()
        store.add_trial(case_id, trial, SAMPLES, started_at=time.time())
        times.append(time.perf_counter() - t0)
    store.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    server = pg_server.start()
    rows: dict[str, list[float]] = {"plain sqlite3": [], "Store, SQLite": [], "Store, PostgreSQL": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                server.sql(f"CREATE DATABASE bench_{r}")
                writers = {
                    "plain sqlite3": (plain_sqlite, Path(tmp) / f"plain{r}.db"),
                    "Store, SQLite": (tokbench_store, str(Path(tmp) / f"store{r}.db")),
                    "Store, PostgreSQL": (tokbench_store, server.url(database=f"bench_{r}")),
                }
                order = list(writers) if r % 2 == 0 else list(reversed(writers))
                for name in order:
                    writer, where = writers[name]
                    rows[name].append(statistics.median(writer(where, args.trials)) * 1e6)
    finally:
        pg_server.stop(server)
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                              "cpu": _cpu(), "trials": args.trials, "rounds": args.rounds, "writers": {}}
    base = statistics.median(rows["plain sqlite3"])
    for name, per_round in rows.items():
        med = statistics.median(per_round)
        result["writers"][name] = {"median_us": round(med, 1), "min_us": round(min(per_round), 1),
                                   "max_us": round(max(per_round), 1), "vs_plain": round(med / base, 2),
                                   "rounds_us": [round(x, 1) for x in per_round]}
        print(f"{name:18s} {med:8.1f} µs per trial commit  [{min(per_round):.1f}, {max(per_round):.1f}]"
              f"  ×{med / base:.2f} plain sqlite3")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def _cpu() -> str:
    try:
        import cpuinfo

        return str(cpuinfo.get_cpu_info().get("brand_raw"))
    except Exception:  # a label only
        return platform.processor()


if __name__ == "__main__":
    main()
