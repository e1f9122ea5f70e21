"""llama-batched-bench's JSONL (`--output-format jsonl`): one line per prompt length × generated
length × parallel sequences, each timed once.

A line times prefill (`t_pp`) and decode (`t_tg`) of `pl` sequences separately, which is what
tokbench's llama.cpp backend does with `batch = pl`: one trial with a pp and a tg sample. The file
names neither the model nor the build nor the machine: `tokbench import --model` states the model
(else it is unknown), and the rest is listed as unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.interop import documents
from harness.interop.documents import FormatError, Source
from harness.interop.formats import Format

TOOL = "llama-batched-bench"
KEYS = ("pp", "tg", "pl", "t_pp", "t_tg", "n_threads", "is_pp_shared")
_FLASH_ATTN = {-1: "auto", 0: "off", 1: "on"}


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = documents.jsonl_objects(path, "llama-batched-bench result object")
    for n, row in rows:
        missing = [k for k in KEYS if k not in row]
        if missing:
            raise FormatError(path, f"line {n}", f"missing {', '.join(missing)}: not a "
                              "llama-batched-bench result")
    return [row for _, row in rows]


def _case(path: Path, n: int, row: dict[str, Any]) -> dict[str, Any]:
    pp, tg, pl = int(row["pp"]), int(row["tg"]), int(row["pl"])
    shared = bool(row["is_pp_shared"])
    trials = []
    if pp:
        if not row["t_pp"] > 0:
            raise FormatError(path, f"line {n} t_pp", "a positive time in seconds")
        trials.append(documents.trial(0, "pp", pp if shared else pp * pl, round(row["t_pp"] * 1e9)))
    if tg:
        if not row["t_tg"] > 0:
            raise FormatError(path, f"line {n} t_tg", "a positive time in seconds")
        trials.append(documents.trial(0, "tg", tg * pl, round(row["t_tg"] * 1e9)))
    fa = row.get("flash_attn")
    params = {"threads": row["n_threads"], "n_batch": row.get("n_batch"), "n_ubatch": row.get("n_ubatch"),
              "n_gpu_layers": row.get("n_gpu_layers"),
              "flash_attn": _FLASH_ATTN.get(fa, fa) if fa is not None else None, "batch": pl}
    notes = ["one timing per test: llama-batched-bench does not repeat (no spread, no interval)"]
    if shared:
        notes.append("prompt shared by all sequences (-pps): prefill processed pp tokens once, not pl × pp")
    workload = "+".join(p for p in (f"pp{pp}" if pp else "", f"tg{tg}" if tg else "") if p)
    return documents.case(
        backend="llama.cpp", model=documents.MODEL_NOT_STATED, workload=workload, n_prompt=pp, n_gen=tg,
        params={k: v for k, v in params.items() if v is not None}, trials=trials, notes=notes,
        engine={"engine": TOOL, "fields": row})


def _read(path: Path, source: Source) -> list[dict[str, Any]]:
    rows = _rows(path)
    cases = [_case(path, n, row) for n, row in enumerate(rows, 1)]
    source.unknown += ["model", "build", "host", "CPU", "GPUs", "RAM", "start time of each test",
                       "n_kv_max and n_threads_batch are kept in the case's engine fields only"]
    return [documents.run(source, 0, cases, started_at=None)]


def _sniff(path: Path, head: bytes) -> bool:
    first = head.lstrip().split(b"\n", 1)[0]
    return first.startswith(b"{") and all(f'"{k}"'.encode() in first for k in ("pp", "tg", "pl", "t_pp",
                                                                                "speed_tg", "n_kv_max"))


FORMATS = [Format("llama-batched-bench JSONL", TOOL, _sniff, _read)]
