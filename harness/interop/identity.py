"""Model identity for imported runs: a case whose model file or directory is readable here gets
tokbench's identity (size + header or config hash), so it matches tokbench's own runs of that
model exactly; any other keeps its name, and its notes say so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError
from harness.models.sources import resolve


def identify(doc: dict[str, Any]) -> None:
    """Fill model_id, model_path, model_file_bytes (and a missing quant) in each case of an imported
    run document whose model path exists here. Only local paths are read: a name is never looked up,
    downloaded or synthesized."""
    found: dict[str, dict[str, Any] | None] = {}
    for case in doc["cases"]:
        if case.get("model_id"):
            continue
        name = str(case["model"])
        if name not in found:
            found[name] = _local(name)
        model = found[name]
        if model is None:
            note = f"model identified by name only: {name} is not a readable model file here"
            case["notes"] = [*(case.get("notes") or []), note]
            continue
        case.update({k: v for k, v in model.items() if k != "quant" or not case.get("quant")})


def _local(name: str) -> dict[str, Any] | None:
    path = Path(name).expanduser()
    if name.startswith(("pkg:", "synth:")) or not path.exists():
        return None
    try:
        m = resolve(str(path), "hf" if path.is_dir() else "gguf")
    except (TokbenchError, OSError):
        return None
    return {"model_id": m.model_id, "model_path": str(m.path), "model_file_bytes": m.file_bytes,
            "quant": m.quant}
