"""Stored runs written in other tools' formats, so their scripts and dashboards read tokbench runs:
llama-bench's JSON, JSONL and CSV (read by llama.cpp's compare-llama-bench.py), and a
`vllm bench serve --save-result`-shaped JSON for serving runs."""

from __future__ import annotations

import importlib
from typing import Any

from harness.common.errors import TokbenchError

#: --format name → (module, function taking a run document and returning the file's text)
EXPORTS = {
    "llama-bench-json": ("harness.interop.llama_bench", "write_json"),
    "llama-bench-jsonl": ("harness.interop.llama_bench", "write_jsonl"),
    "llama-bench-csv": ("harness.interop.llama_bench", "write_csv"),
    "vllm-bench-serve": ("harness.interop.vllm_bench", "serve_json"),
}


def export(fmt: str, doc: dict[str, Any]) -> str:
    module, function = EXPORTS[fmt]
    text: str = getattr(importlib.import_module(module), function)(doc)
    if not text.strip() or text.strip() in ("[]", "{}"):
        kind = "serving" if fmt.startswith("vllm") else "llama.cpp token-workload"
        raise TokbenchError(f"run {doc['run']['run_id']} has no {kind} cases to write as {fmt}: "
                            "export it as json, jsonl or csv")
    return text
