"""Run documents built from another tool's output: the one shape every importer returns.

An importer reads a file and returns run documents in the shape `results.export.run_document`
gives (``{"run": {...}, "cases": [...]}``), so everything that reads stored runs (show, report,
compare, gate) reads an imported run the same way. What is imported differs from what tokbench
measured in three ways, each stated in the document rather than guessed:

- ``run["source"]``: the tool, its version and build, the file and its sha256, what the file says
  about the machine, and which facts it does not give (``unknown``);
- a case without per-trial samples carries the tool's own ``aggregate`` instead of trials, and the
  gate refuses it as a baseline;
- a model that cannot be identified by its file matches by name, and the case's notes say so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError

#: Hard fingerprint fields (harness.hardware.profile.FINGERPRINT_FIELDS) and what they mean, so
#: an importer can fill the ones its file states and list the others as unknown.
MACHINE_FIELDS = ("cpu_brand", "arch", "physical_cores", "ram_gib", "gpus")
#: The model of a case whose file does not name it; `tokbench import --model` states it.
MODEL_NOT_STATED = "(model not stated in the file)"


class FormatError(TokbenchError):
    """A file that is not what its format says: names the file, the line or key, and what was expected."""

    def __init__(self, path: str | Path, where: str, expected: str) -> None:
        super().__init__(f"{path}: {where}: {expected}")


@dataclass
class Source:
    """Where an imported run came from. A field the file does not state is None, never a guess."""

    tool: str  # "llama-bench", "llama-batched-bench", "vllm bench serve", "guidellm", "aiperf", …
    format: str  # the file format as detected, e.g. "llama-bench JSONL"
    file: str  # absolute path of the file imported
    sha256: str  # of the whole file: importing the same bytes twice adds nothing
    version: str | None = None  # the tool's version as the file states it
    build: str | None = None  # the tool's build commit or number as the file states it
    machine: dict[str, Any] = field(default_factory=dict)  # what the file says about the machine, as written
    command: str | None = None  # the command line, where the file records it
    samples: bool = True  # False: the file holds only aggregates (no per-trial samples)
    unknown: list[str] = field(default_factory=list)  # facts tokbench records that the file does not give

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ns(seconds: float) -> int:
    """Seconds, as the files give them, to the integer nanoseconds tokbench stores."""
    return round(seconds * 1e9)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"byte {exc.start}", "UTF-8 text") from None


def json_document(path: Path, what: str) -> Any:
    """The file's JSON value; one line naming the line and column where it is not JSON. `what`:
    what the file should hold, for that message."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"line {exc.lineno} column {exc.colno}",
                          f"invalid JSON ({exc.msg}); the file may be truncated: {what}") from None


def jsonl_objects(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines file; one line naming the line
    where a line is not a JSON object. `what`: what one line holds, for that message."""
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"line {n}", f"invalid JSON ({exc.msg}): one {what} per line "
                              "(the file may be truncated)") from None
        if not isinstance(obj, dict):
            raise FormatError(path, f"line {n}", f"a JSON object ({what})")
        out.append((n, obj))
    return out


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_id_for(source: Source, index: int) -> str:
    """Deterministic: the same file imports under the same ids, so a second import is a no-op."""
    slug = "".join(c if c.isalnum() else "-" for c in source.tool.lower()).strip("-")
    return f"import-{slug}-{source.sha256[:12]}-{index}"


def parse_time(value: Any) -> float | None:
    """UNIX seconds from an ISO-8601 string (a trailing Z is UTC) or a number; None if neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    return None


def run(source: Source, index: int, cases: list[dict[str, Any]], *, started_at: float | None,
        finished_at: float | None = None, host: str | None = None,
        hard: dict[str, Any] | None = None, soft: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete run document. `hard` holds the machine and engine facts the file states, keyed as
    tokbench's fingerprint keys them (MACHINE_FIELDS, "engines"); every hard field it leaves out is
    listed in the fingerprint's "unknown", which comparisons skip with a warning instead of refusing.
    Without a time in the file, the file's modification time stands in, and `unknown` says so."""
    path = Path(source.file)
    if started_at is None:
        started_at = path.stat().st_mtime
        if "start time" not in source.unknown:
            source.unknown.append("start time (the file's modification time stands in)")
    hard = dict(hard or {})
    unknown_hard = [f for f in (*MACHINE_FIELDS, "engines") if f not in hard]
    for i, case in enumerate(cases):
        case.setdefault("case_index", i)
    return {
        "run": {
            "run_id": run_id_for(source, index),
            "started_at": started_at,
            "finished_at": finished_at if finished_at is not None else started_at,
            "status": "complete",
            "command": source.command or f"imported from {path.name} ({source.format})",
            "runner_pid": None,
            "host": host,
            "tokbench_version": None,
            "git_commit": None,
            "profile": None,
            "fingerprint": {"hard": hard, "soft": dict(soft or {}), "unknown": unknown_hard},
            "contended": None,
            "source": source.as_dict(),
        },
        "cases": cases,
    }


def case(*, backend: str, model: str, workload: str, n_prompt: int, n_gen: int, n_depth: int = 0,
         params: dict[str, Any] | None = None, trials: list[dict[str, Any]] | None = None,
         requests: list[dict[str, Any]] | None = None, aggregate: dict[str, Any] | None = None,
         load: dict[str, Any] | None = None, notes: list[str] | None = None, **fields: Any
         ) -> dict[str, Any]:
    """One case. `trials`: phase samples as trial(); `requests`: serving request records with the
    keys of results.schema.REQUEST_FIELDS (trial, request, status, ttft_ns, e2el_ns, chunk_ns,
    prompt_tokens, output_tokens…); `aggregate`: what the tool reported where it kept no samples
    (free-form, the tool's own statistic names, units in the key); `fields`: any other case field
    (model_desc, quant, model_size_bytes, model_n_params, model_id, engine, memory…)."""
    if not trials and not requests and aggregate is None:
        raise ValueError("an imported case needs trials, requests or an aggregate")
    n_trials = len({t["trial"] for t in trials or []} | {r["trial"] for r in requests or []})
    return {
        "backend": backend, "model": model, "workload": workload,
        "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth,
        "params": params or {}, "param_defaults": None,
        "repetitions": fields.pop("repetitions", None) or n_trials or 1,
        "status": fields.pop("status", "ok"), "load": load, "notes": notes or None,
        "aggregate": aggregate, "trials": trials or [], "requests": requests or [],
        **fields,
    }


def trial(index: int, phase: str, n_tokens: int, duration_ns: int, started_at: float | None = None,
          token_ns: list[int] | None = None) -> dict[str, Any]:
    """One phase sample: `phase` pp (prefill), tg (decode) or out (a serving trial's output tokens
    over its wall time)."""
    return {"trial": index, "phase": phase, "n_tokens": int(n_tokens), "duration_ns": int(duration_ns),
            "token_ns": token_ns, "started_at": started_at}


def this_host() -> str:
    return socket.gethostname()


def state_model(doc: dict[str, Any], model: str) -> None:
    """The model the user says a file's results are for, where the file does not name it. The run
    id says which model was stated, so the file imported with another --model is another run."""
    if any(c["model"] == MODEL_NOT_STATED for c in doc["cases"]):
        doc["run"]["run_id"] += "-m" + hashlib.sha256(model.encode()).hexdigest()[:8]
    for c in doc["cases"]:
        if c["model"] == MODEL_NOT_STATED:
            c["model"] = model
            c["notes"] = [*(c.get("notes") or []), "model stated at import (--model), not by the file"]
    source = doc["run"]["source"]
    source["unknown"] = [u for u in source["unknown"] if u != "model"]
