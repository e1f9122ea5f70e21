"""The result schema, declared once: SQLite tables, export columns and JSON keys all come from here.

Bump SCHEMA_VERSION when a stored field changes meaning or a table changes shape; add a
migration in results.store for older stores; readers refuse newer versions.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 7  # v2: cases.arm (A/B runs); v3: cases.param_defaults, cases.model_reused;
# v4: serving cases (cases.load, cases.client, cases.notes, the requests table); v5: cases.sweep,
# requests.conversation/turn/client_process/server_timings; v6: runs.contended; v7: runs.source,
# cases.aggregate (imported runs)


@dataclass(frozen=True)
class Field:
    name: str
    sql: str
    doc: str


RUN_FIELDS = (
    Field("run_id", "TEXT PRIMARY KEY", "run identifier (UTC start time + random suffix)"),
    Field("started_at", "REAL NOT NULL", "UNIX time the run started"),
    Field("finished_at", "REAL", "UNIX time the run ended; NULL while running or if killed"),
    Field("status", "TEXT NOT NULL", "running | complete | failed | interrupted"),
    Field("command", "TEXT", "the command line or suite file that started the run"),
    Field("runner_pid", "INTEGER", "pid of the runner, to tell a live run from a killed one"),
    Field("host", "TEXT", "host name of the machine"),
    Field("tokbench_version", "TEXT", "tokbench version"),
    Field("git_commit", "TEXT", "git commit of the working directory under test, when known"),
    Field("profile", "TEXT", "hardware/software profile (JSON)"),
    Field("fingerprint", "TEXT", "hard and soft fingerprint fields (JSON)"),
    Field("contended", "TEXT", "other tokbench runs live on this host during the run (JSON list)"),
    Field("source", "TEXT", "an imported run: the tool, its version and build, the file and its sha256, "
                            "what the file says about the machine, and what it does not say (JSON); "
                            "NULL for a run tokbench measured"),
)

CASE_FIELDS = (
    Field("case_id", "INTEGER PRIMARY KEY", "case identifier in this store"),
    Field("run_id", "TEXT NOT NULL REFERENCES runs(run_id)", "run the case belongs to"),
    Field("case_index", "INTEGER NOT NULL", "position of the case in the run"),
    Field("backend", "TEXT NOT NULL", "backend name"),
    Field("model", "TEXT NOT NULL", "model source as given"),
    Field("model_path", "TEXT", "resolved model file"),
    Field("model_id", "TEXT", "identity of the model's shape: size + sha256 of its header"),
    Field("model_desc", "TEXT", "engine's description of the model (arch, size, quant)"),
    Field("quant", "TEXT", "quantization (GGUF file type)"),
    Field("model_size_bytes", "INTEGER", "weights size reported by the engine"),
    Field("model_file_bytes", "INTEGER", "model file size on disk"),
    Field("model_n_params", "INTEGER", "parameter count reported by the engine"),
    Field("workload", "TEXT NOT NULL", "workload name, e.g. pp512+tg128@d1024"),
    Field("n_prompt", "INTEGER NOT NULL", "prompt tokens per trial"),
    Field("n_gen", "INTEGER NOT NULL", "generated tokens per trial"),
    Field("n_depth", "INTEGER NOT NULL", "context depth filled before timing"),
    Field("params", "TEXT NOT NULL", "case parameters, backend defaults filled in (JSON)"),
    Field("param_defaults", "TEXT", "the backend's default for each parameter, stored at run time so "
                                    "reports read which parameters were changed without the backend (JSON)"),
    Field("repetitions", "INTEGER NOT NULL", "trials requested"),
    Field("status", "TEXT NOT NULL", "pending | running | ok | error | interrupted"),
    Field("error", "TEXT", "one-line error for a failed case"),
    Field("error_detail", "TEXT", "worker stderr tail or traceback of a failed case"),
    Field("engine", "TEXT", "engine name, version and build info (JSON)"),
    Field("load_s", "REAL", "model load time, seconds (not part of any trial); 0 when model_reused"),
    Field("model_reused", "INTEGER", "1: the case ran in a worker that had loaded the model for an "
                                     "earlier case (as llama-bench reuses it); 0: it loaded the model"),
    Field("peak_rss_bytes", "INTEGER", "peak resident memory of the worker"),
    Field("kv_cache_bytes", "INTEGER", "KV-cache size allocated by the engine"),
    Field("memory", "TEXT", "all memory figures reported for the case (JSON)"),
    Field("started_at", "REAL", "UNIX time the case started"),
    Field("finished_at", "REAL", "UNIX time the case ended"),
    Field("arm", "TEXT", "A or B in a `tokbench ab` run (NULL otherwise); the i-th A case pairs "
                         "with the i-th B case"),
    Field("load", "TEXT", "serving cases: the load (concurrency or rate, arrivals, lengths, count or "
                          "duration, warm-up, endpoint) and the SLOs given (JSON); NULL for token workloads"),
    Field("client", "TEXT", "serving cases: the load client's own CPU use per trial and whether it, "
                            "not the server, was the bottleneck (JSON)"),
    Field("notes", "TEXT", "warnings about the case's figures (short outputs, prompt lengths off, "
                           "client-bound, tokens counted by tokenizer…) (JSON list)"),
    Field("sweep", "TEXT", "a point of a sweep or capacity search: its search id, kind (sweep | "
                           "capacity), step, load level, and the rule that chose or ended it (JSON); "
                           "NULL for a case of a fixed grid"),
    Field("aggregate", "TEXT", "an imported case whose file kept no per-trial samples: the statistics "
                               "the tool reported, under its own names (JSON); NULL otherwise"),
)

TRIAL_FIELDS = (
    Field("case_id", "INTEGER NOT NULL REFERENCES cases(case_id)", "case the sample belongs to"),
    Field("trial", "INTEGER NOT NULL", "trial index within the case, from 0"),
    Field("phase", "TEXT NOT NULL", "pp (prefill) or tg (decode)"),
    Field("n_tokens", "INTEGER NOT NULL", "tokens processed in the phase"),
    Field("duration_ns", "INTEGER NOT NULL", "phase duration, monotonic clock, nanoseconds"),
    Field("token_ns", "TEXT", "decode: JSON list of each token's end time from phase start (ns)"),
    Field("started_at", "REAL", "UNIX time the trial started"),
)

#: One row per request of a serving trial: what `vllm bench serve --save-detailed` keeps, and
#: every content chunk's arrival, so every serving metric is recomputed from the store.
REQUEST_FIELDS = (
    Field("case_id", "INTEGER NOT NULL REFERENCES cases(case_id)", "case the request belongs to"),
    Field("trial", "INTEGER NOT NULL", "trial (one pass of the load) the request belongs to"),
    Field("request", "INTEGER NOT NULL", "request index within the trial, in sending order"),
    Field("request_id", "TEXT", "the X-Request-Id header sent (a UUID), which servers such as vLLM "
                                "log, so a record joins the server's own log"),
    Field("started_at", "REAL", "UNIX time the request was sent"),
    Field("start_ns", "INTEGER", "send time from the trial's start, monotonic ns"),
    Field("status", "TEXT NOT NULL", "ok | error | cancelled (in flight when a timed load ended)"),
    Field("error", "TEXT", "one-line error of a failed request (HTTP status and body, or the "
                           "connection error)"),
    Field("ttft_ns", "INTEGER", "send → first chunk carrying generated content, ns"),
    Field("e2el_ns", "INTEGER", "send → last content chunk, ns"),
    Field("chunk_ns", "TEXT", "arrival of every content chunk from the send, ns (JSON list)"),
    Field("prompt_tokens", "INTEGER", "prompt tokens, from the server's usage or the tokenizer"),
    Field("prompt_expected", "INTEGER", "prompt tokens the workload asked for"),
    Field("output_tokens", "INTEGER", "output tokens, from the server's usage or the tokenizer"),
    Field("output_expected", "INTEGER", "output tokens the workload asked for"),
    Field("cached_tokens", "INTEGER", "prompt tokens the server served from its prefix cache, "
                                      "where it states them"),
    Field("counted_by", "TEXT", "usage (the server's) or tokenizer: where the token counts come from"),
    Field("conversation", "INTEGER", "multi-turn loads: the conversation the request belongs to"),
    Field("turn", "INTEGER", "multi-turn loads: the turn within its conversation, from 0 (its prompt "
                             "carries every earlier turn)"),
    Field("client_process", "INTEGER", "the load-client process that sent it, from 0"),
    Field("server_timings", "TEXT", "the server's own account of the request where it gives one "
                                    "(llama-server `timings`, Ollama's durations): prompt_ms, "
                                    "decode_ms, cache_n… and its source (JSON)"),
)

#: Derived per (case, phase) statistics, computed by harness.common.stats from the stored trials.
STAT_FIELDS = (
    Field("phase", "TEXT", "pp (prefill) or tg (decode)"),
    Field("test", "TEXT", "llama-bench style test name for the phase, e.g. pp512, tg128@d1024"),
    Field("n_trials", "INTEGER", "trials measured"),
    Field("tps_mean", "REAL", "mean of per-trial tokens/s"),
    Field("tps_stddev", "REAL", "sample standard deviation of per-trial tokens/s"),
    Field("tps_median", "REAL", "median of per-trial tokens/s"),
    Field("tps_ci_low", "REAL", "95% order-statistic interval of the median, low end (NaN below 6 trials)"),
    Field("tps_ci_high", "REAL", "95% order-statistic interval of the median, high end (NaN below 6 trials)"),
    Field("tps_min", "REAL", "slowest trial, tokens/s"),
    Field("tps_max", "REAL", "fastest trial, tokens/s"),
    Field("tps_cv", "REAL", "coefficient of variation of per-trial tokens/s"),
)


def names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


def create_table_sql(table: str, fields: tuple[Field, ...]) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} ({', '.join(f'{f.name} {f.sql}' for f in fields)})"
