"""The file formats `tokbench import` reads, and how a file's format is recognised.

Each format module (llama_bench, batched_bench, vllm_bench, guidellm, aiperf) lists its formats in
a module-level FORMATS. Detection asks each format, in order, whether the file's first bytes look
like it; the first yes reads the file. A file no format claims gets one line naming what is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError
from harness.interop.documents import Source, file_digest

#: Modules holding FORMATS, in detection order (tokbench's own document first).
MODULES = ("harness.interop.tokbench_json", "harness.interop.llama_bench", "harness.interop.batched_bench",
           "harness.interop.vllm_bench", "harness.interop.guidellm", "harness.interop.aiperf")
HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class Format:
    """One importable format. `sniff(path, head)` looks only at the first HEAD_BYTES bytes and must
    not raise; `read(path, source)` gets a Source with tool, format, file and sha256 filled and
    returns run documents (harness.interop.documents.run), raising FormatError on bad content."""

    name: str  # as printed: "llama-bench JSON"
    tool: str
    sniff: Callable[[Path, bytes], bool]
    read: Callable[[Path, Source], list[dict[str, Any]]]
    #: a file read with another one beside it (vLLM's NAME.pytorch.json): recognised, not imported
    companion_of: str | None = None


def all_formats() -> list[Format]:
    out: list[Format] = []
    for name in MODULES:
        out += importlib.import_module(name).FORMATS
    return out


def detect(path: Path) -> tuple[Format, bytes]:
    if not path.exists():
        raise TokbenchError(f"{path} does not exist")
    if path.is_dir():
        raise TokbenchError(f"{path} is a directory: give the result files in it")
    with path.open("rb") as f:
        head = f.read(HEAD_BYTES)
    formats = all_formats()
    for fmt in formats:
        if fmt.sniff(path, head):
            return fmt, head
    names = ", ".join(dict.fromkeys(f.name for f in formats))
    raise TokbenchError(f"{path} is in no format tokbench imports (reads: {names})")


def read(path: str | Path, model: str | None = None) -> tuple[Format, list[dict[str, Any]]]:
    """The file's format and the runs in it, their models identified where their files are here;
    `model` states the model where the file names none."""
    from harness.interop.documents import state_model
    from harness.interop.identity import identify

    path = Path(path).resolve()
    fmt, _ = detect(path)
    if fmt.companion_of:
        return fmt, []
    source = Source(tool=fmt.tool, format=fmt.name, file=str(path), sha256=file_digest(path))
    docs = fmt.read(path, source)
    if not docs:
        raise TokbenchError(f"{path}: holds no results ({fmt.name})")
    for doc in docs:
        if doc["run"].get("source"):  # not tokbench's own document, which is imported as it was
            if model:
                state_model(doc, model)
            identify(doc)
    return fmt, docs
