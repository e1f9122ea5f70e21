"""Schema v7, the first Alembic revision: create the tables of a new store, or give a store made
before Alembic (v1–v6, by tokbench's add-column step) the columns it lacks.

Revision ID: 0007
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from results.schema import TABLES, meta

revision = "0007"
down_revision = None
branch_labels = None
depends_on = None

#: The columns of v7, frozen: a later revision adds its own, so this one must not create them.
V7 = {
    "runs": ["run_id", "started_at", "finished_at", "status", "command", "runner_pid", "host",
             "tokbench_version", "git_commit", "profile", "fingerprint", "contended", "source"],
    "cases": ["case_id", "run_id", "case_index", "backend", "model", "model_path", "model_id",
              "model_desc", "quant", "model_size_bytes", "model_file_bytes", "model_n_params",
              "workload", "n_prompt", "n_gen", "n_depth", "params", "param_defaults", "repetitions",
              "status", "error", "error_detail", "engine", "load_s", "model_reused", "peak_rss_bytes",
              "kv_cache_bytes", "memory", "started_at", "finished_at", "arm", "load", "client", "notes",
              "sweep", "aggregate"],
    "trials": ["case_id", "trial", "phase", "n_tokens", "duration_ns", "token_ns", "started_at"],
    "requests": ["case_id", "trial", "request", "request_id", "started_at", "start_ns", "status", "error",
                 "ttft_ns", "e2el_ns", "chunk_ns", "prompt_tokens", "prompt_expected", "output_tokens",
                 "output_expected", "cached_tokens", "counted_by", "conversation", "turn",
                 "client_process", "server_timings"],
}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    snapshot = sa.MetaData()
    for table in (meta, *(TABLES[name][0] for name in V7)):
        keep = V7.get(table.name)
        frozen = sa.Table(table.name, snapshot,
                          *(c._copy() for c in table.columns if keep is None or c.name in keep))
        for index in table.indexes:
            sa.Index(index.name, *(frozen.c[c.name] for c in index.columns))
    have = set(inspector.get_table_names())
    for name, frozen in snapshot.tables.items():
        if name in have:
            present = {c["name"] for c in inspector.get_columns(name)}
            for column in frozen.columns:
                if column.name not in present:
                    op.add_column(name, column._copy())
    snapshot.create_all(bind, checkfirst=True)  # the missing tables, with their indexes
