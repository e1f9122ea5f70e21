"""The result schema, declared once: the tables of both stores (SQLite, PostgreSQL), export
columns and JSON keys all come from here.

Bump SCHEMA_VERSION when a stored field changes meaning or a table changes shape, and add an
Alembic revision under results/migrations/versions (HEAD_REVISION names the newest); readers
refuse newer versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

SCHEMA_VERSION = 7  # v2: cases.arm (A/B runs); v3: cases.param_defaults, cases.model_reused;
# v4: serving cases (cases.load, cases.client, cases.notes, the requests table); v5: cases.sweep,
# requests.conversation/turn/client_process/server_timings; v6: runs.contended; v7: runs.source,
# cases.aggregate (imported runs)
HEAD_REVISION = "0007"  # the Alembic revision of SCHEMA_VERSION

TEXT, INT, REAL = "TEXT", "INTEGER", "REAL"


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # TEXT | INTEGER | REAL
    doc: str
    key: bool = False
    required: bool = False
    refs: str | None = None  # "table.column"

    @property
    def sql(self) -> str:
        """The column as SQLite declares it (what stores before Alembic were made with)."""
        refs = " REFERENCES {}({})".format(*self.refs.split(".")) if self.refs else ""
        return f"{self.type}{' PRIMARY KEY' if self.key else ''}{' NOT NULL' if self.required else ''}{refs}"


RUN_FIELDS = (
    Field("run_id", TEXT, "run identifier (UTC start time + random suffix)", key=True),
    Field("started_at", REAL, "UNIX time the run started", required=True),
    Field("finished_at", REAL, "UNIX time the run ended; NULL while running or if killed"),
    Field("status", TEXT, "running | complete | failed | interrupted", required=True),
    Field("command", TEXT, "the command line or suite file that started the run"),
    Field("runner_pid", INT, "pid of the runner, to tell a live run from a killed one"),
    Field("host", TEXT, "host name of the machine"),
    Field("tokbench_version", TEXT, "tokbench version"),
    Field("git_commit", TEXT, "git commit of the working directory under test, when known"),
    Field("profile", TEXT, "hardware/software profile (JSON)"),
    Field("fingerprint", TEXT, "hard and soft fingerprint fields (JSON)"),
    Field("contended", TEXT, "other tokbench runs live on this host during the run (JSON list)"),
    Field("source", TEXT, "an imported run: the tool, its version and build, the file and its sha256, "
                            "what the file says about the machine, and what it does not say (JSON); "
                            "NULL for a run tokbench measured"),
)

CASE_FIELDS = (
    Field("case_id", INT, "case identifier in this store", key=True),
    Field("run_id", TEXT, "run the case belongs to", required=True, refs="runs.run_id"),
    Field("case_index", INT, "position of the case in the run", required=True),
    Field("backend", TEXT, "backend name", required=True),
    Field("model", TEXT, "model source as given", required=True),
    Field("model_path", TEXT, "resolved model file"),
    Field("model_id", TEXT, "identity of the model's shape: size + sha256 of its header"),
    Field("model_desc", TEXT, "engine's description of the model (arch, size, quant)"),
    Field("quant", TEXT, "quantization (GGUF file type)"),
    Field("model_size_bytes", INT, "weights size reported by the engine"),
    Field("model_file_bytes", INT, "model file size on disk"),
    Field("model_n_params", INT, "parameter count reported by the engine"),
    Field("workload", TEXT, "workload name, e.g. pp512+tg128@d1024", required=True),
    Field("n_prompt", INT, "prompt tokens per trial", required=True),
    Field("n_gen", INT, "generated tokens per trial", required=True),
    Field("n_depth", INT, "context depth filled before timing", required=True),
    Field("params", TEXT, "case parameters, backend defaults filled in (JSON)", required=True),
    Field("param_defaults", TEXT, "the backend's default for each parameter, stored at run time so "
                                    "reports read which parameters were changed without the backend (JSON)"),
    Field("repetitions", INT, "trials requested", required=True),
    Field("status", TEXT, "pending | running | ok | error | interrupted", required=True),
    Field("error", TEXT, "one-line error for a failed case"),
    Field("error_detail", TEXT, "worker stderr tail or traceback of a failed case"),
    Field("engine", TEXT, "engine name, version and build info (JSON)"),
    Field("load_s", REAL, "model load time, seconds (not part of any trial); 0 when model_reused"),
    Field("model_reused", INT, "1: the case ran in a worker that had loaded the model for an "
                                     "earlier case (as llama-bench reuses it); 0: it loaded the model"),
    Field("peak_rss_bytes", INT, "peak resident memory of the worker"),
    Field("kv_cache_bytes", INT, "KV-cache size allocated by the engine"),
    Field("memory", TEXT, "all memory figures reported for the case (JSON)"),
    Field("started_at", REAL, "UNIX time the case started"),
    Field("finished_at", REAL, "UNIX time the case ended"),
    Field("arm", TEXT, "A or B in a `tokbench ab` run (NULL otherwise); the i-th A case pairs "
                         "with the i-th B case"),
    Field("load", TEXT, "serving cases: the load (concurrency or rate, arrivals, lengths, count or "
                          "duration, warm-up, endpoint) and the SLOs given (JSON); NULL for token workloads"),
    Field("client", TEXT, "serving cases: the load client's own CPU use per trial and whether it, "
                            "not the server, was the bottleneck (JSON)"),
    Field("notes", TEXT, "warnings about the case's figures (short outputs, prompt lengths off, "
                           "client-bound, tokens counted by tokenizer…) (JSON list)"),
    Field("sweep", TEXT, "a point of a sweep or capacity search: its search id, kind (sweep | "
                           "capacity), step, load level, and the rule that chose or ended it (JSON); "
                           "NULL for a case of a fixed grid"),
    Field("aggregate", TEXT, "an imported case whose file kept no per-trial samples: the statistics "
                               "the tool reported, under its own names (JSON); NULL otherwise"),
)

TRIAL_FIELDS = (
    Field("case_id", INT, "case the sample belongs to", required=True, refs="cases.case_id"),
    Field("trial", INT, "trial index within the case, from 0", required=True),
    Field("phase", TEXT, "pp (prefill) or tg (decode)", required=True),
    Field("n_tokens", INT, "tokens processed in the phase", required=True),
    Field("duration_ns", INT, "phase duration, monotonic clock, nanoseconds", required=True),
    Field("token_ns", TEXT, "decode: JSON list of each token's end time from phase start (ns)"),
    Field("started_at", REAL, "UNIX time the trial started"),
)

#: One row per request of a serving trial: what `vllm bench serve --save-detailed` keeps, and
#: every content chunk's arrival, so every serving metric is recomputed from the store.
REQUEST_FIELDS = (
    Field("case_id", INT, "case the request belongs to", required=True, refs="cases.case_id"),
    Field("trial", INT, "trial (one pass of the load) the request belongs to", required=True),
    Field("request", INT, "request index within the trial, in sending order", required=True),
    Field("request_id", TEXT, "the X-Request-Id header sent (a UUID), which servers such as vLLM "
                                "log, so a record joins the server's own log"),
    Field("started_at", REAL, "UNIX time the request was sent"),
    Field("start_ns", INT, "send time from the trial's start, monotonic ns"),
    Field("status", TEXT, "ok | error | cancelled (in flight when a timed load ended)", required=True),
    Field("error", TEXT, "one-line error of a failed request (HTTP status and body, or the "
                           "connection error)"),
    Field("ttft_ns", INT, "send → first chunk carrying generated content, ns"),
    Field("e2el_ns", INT, "send → last content chunk, ns"),
    Field("chunk_ns", TEXT, "arrival of every content chunk from the send, ns (JSON list)"),
    Field("prompt_tokens", INT, "prompt tokens, from the server's usage or the tokenizer"),
    Field("prompt_expected", INT, "prompt tokens the workload asked for"),
    Field("output_tokens", INT, "output tokens, from the server's usage or the tokenizer"),
    Field("output_expected", INT, "output tokens the workload asked for"),
    Field("cached_tokens", INT, "prompt tokens the server served from its prefix cache, "
                                      "where it states them"),
    Field("counted_by", TEXT, "usage (the server's) or tokenizer: where the token counts come from"),
    Field("conversation", INT, "multi-turn loads: the conversation the request belongs to"),
    Field("turn", INT, "multi-turn loads: the turn within its conversation, from 0 (its prompt "
                             "carries every earlier turn)"),
    Field("client_process", INT, "the load-client process that sent it, from 0"),
    Field("server_timings", TEXT, "the server's own account of the request where it gives one "
                                    "(llama-server `timings`, Ollama's durations): prompt_ms, "
                                    "decode_ms, cache_n… and its source (JSON)"),
)

#: Derived per (case, phase) statistics, computed by harness.common.stats from the stored trials.
STAT_FIELDS = (
    Field("phase", TEXT, "pp (prefill) or tg (decode)"),
    Field("test", TEXT, "llama-bench style test name for the phase, e.g. pp512, tg128@d1024"),
    Field("n_trials", INT, "trials measured"),
    Field("tps_mean", REAL, "mean of per-trial tokens/s"),
    Field("tps_stddev", REAL, "sample standard deviation of per-trial tokens/s"),
    Field("tps_median", REAL, "median of per-trial tokens/s"),
    Field("tps_ci_low", REAL, "95% order-statistic interval of the median, low end (NaN below 6 trials)"),
    Field("tps_ci_high", REAL, "95% order-statistic interval of the median, high end (NaN below 6 trials)"),
    Field("tps_min", REAL, "slowest trial, tokens/s"),
    Field("tps_max", REAL, "fastest trial, tokens/s"),
    Field("tps_cv", REAL, "coefficient of variation of per-trial tokens/s"),
)


def names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


# 64-bit integers (nanoseconds, bytes) on PostgreSQL; SQLite's INTEGER is already 64-bit, and only
# `INTEGER PRIMARY KEY` makes a SQLite key autoincrement.
_TYPES = {TEXT: sa.Text(), INT: sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
          REAL: sa.Double()}


def _column(f: Field) -> sa.Column:
    args: list = [sa.ForeignKey(f.refs)] if f.refs else []
    return sa.Column(f.name, _TYPES[f.type], *args, primary_key=f.key,
                     nullable=not (f.key or f.required), comment=f.doc)


metadata = sa.MetaData()
meta = sa.Table("meta", metadata, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text))
runs = sa.Table("runs", metadata, *(_column(f) for f in RUN_FIELDS))
cases = sa.Table("cases", metadata, *(_column(f) for f in CASE_FIELDS))
trials = sa.Table("trials", metadata, *(_column(f) for f in TRIAL_FIELDS))
requests = sa.Table("requests", metadata, *(_column(f) for f in REQUEST_FIELDS))
sa.Index("cases_run", cases.c.run_id)
sa.Index("trials_case", trials.c.case_id)
sa.Index("requests_case", requests.c.case_id)

#: Every stored table, parents first, with its fields.
TABLES: dict[str, tuple[sa.Table, tuple[Field, ...]]] = {
    "runs": (runs, RUN_FIELDS), "cases": (cases, CASE_FIELDS), "trials": (trials, TRIAL_FIELDS),
    "requests": (requests, REQUEST_FIELDS),
}
