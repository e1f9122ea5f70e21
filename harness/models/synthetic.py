"""Synthetic GGUF models: a real architecture's tensors, names, types and shapes; random data.

Speed and memory depend on shapes and tensor types, not weight values, so a synthetic model
benchmarks like the real one of the same shape without downloading it. Quantized tensors
are written directly as valid blocks (random quants, finite scales sized so activations stay
O(1)) — no F16 intermediate — so a 24B model takes about as long as the disk needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, Keys

from harness.common import cache
from harness.common.errors import TokbenchError
from harness.models.architectures import facts, metadata, tensor_shapes
from harness.models.catalog import ModelSpec, lookup
from harness.models.quant_mix import TensorShape, assign_types, file_type, quantizer_order, tensor_bytes
from harness.models.vocab import BOS_ID, EOS_ID, PAD_ID, bpe_vocab

T = GGMLQuantizationType
GENERATOR_VERSION = 1
ALIGNMENT = 32
_POOL_BYTES = 16 << 20  # random valid blocks, reused at random offsets across tensors
_SIGMA = 0.02  # target weight standard deviation

Progress = Callable[[int], None]  # called with bytes written so far

# Where each block type keeps its fp16 scale(s) ("d" and "dmin"/"m"), and the scale that gives
# weights of standard deviation ≈ _SIGMA given uniformly random quants (from ggml-common.h).
_SCALES: dict[GGMLQuantizationType, tuple[tuple[int, ...], float, float]] = {
    # type: (fp16 field offsets, d, second field as a multiple of d)
    T.Q4_0: ((0,), _SIGMA / 4.6, 0.0),
    T.Q4_1: ((0, 2), _SIGMA / 4.6, -7.5),
    T.Q5_0: ((0,), _SIGMA / 9.2, 0.0),
    T.Q5_1: ((0, 2), _SIGMA / 9.2, -15.5),
    T.Q8_0: ((0,), _SIGMA / 74, 0.0),
    T.Q2_K: ((80, 82), _SIGMA / 8.4, 1.5),
    T.Q3_K: ((108,), _SIGMA / 42, 0.0),
    T.Q4_K: ((0, 2), _SIGMA / 166, 7.5),
    T.Q5_K: ((0, 2), _SIGMA / 331, 15.5),
    T.Q6_K: ((208,), _SIGMA / 1369, 0.0),
    T.IQ4_NL: ((0,), _SIGMA / 60, 0.0),
    T.IQ4_XS: ((0,), _SIGMA / 600, 0.0),
    T.IQ2_XXS: ((0,), _SIGMA / 8, 0.0),
    T.IQ2_XS: ((0,), _SIGMA / 8, 0.0),
    T.IQ2_S: ((0,), _SIGMA / 8, 0.0),
    T.IQ3_XXS: ((0,), _SIGMA / 8, 0.0),
    T.IQ3_S: ((0,), _SIGMA / 8, 0.0),
    T.IQ1_S: ((0,), _SIGMA / 8, 0.0),
}
_FLOATS = {T.F32: np.float32, T.F16: np.float16, T.F64: np.float64}
WRITABLE = frozenset([*_SCALES, *_FLOATS, T.BF16, T.MXFP4])


# -- block pools ------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _pool(qtype: GGMLQuantizationType, seed: int) -> np.ndarray:
    """_POOL_BYTES of valid random data of one type, as a flat uint8 array."""
    rng = np.random.default_rng([seed, int(qtype)])
    size = GGML_QUANT_SIZES[qtype][1]
    n_blocks = _POOL_BYTES // size
    if qtype in _FLOATS:
        values = rng.standard_normal(n_blocks, dtype=np.float32) * _SIGMA
        return values.astype(_FLOATS[qtype]).view(np.uint8)
    if qtype == T.BF16:
        values = rng.standard_normal(n_blocks, dtype=np.float32) * _SIGMA
        return (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    if qtype == T.MXFP4:  # E8M0 exponent byte first: 2^(e-127) ≈ _SIGMA / 4
        blocks[:, 0] = rng.integers(118, 122, size=n_blocks, dtype=np.uint8)
        return blocks.reshape(-1)
    if qtype not in _SCALES:
        raise TokbenchError(f"tensor type {qtype.name} cannot be synthesized; supported: "
                            + ", ".join(sorted(t.name for t in WRITABLE)))
    offsets, d, second = _SCALES[qtype]
    jitter = rng.uniform(0.7, 1.3, size=n_blocks).astype(np.float32)
    fields = [d * jitter, d * second * jitter]
    for offset, values in zip(offsets, fields, strict=False):
        blocks[:, offset:offset + 2] = values.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


def _special_values(t: TensorShape, rng: np.random.Generator) -> np.ndarray | None:
    """Small F32 tensors whose values matter for numerics: norms 1, biases 0, routers random."""
    n = int(np.prod(t.ne))
    name = t.name
    if "norm" in name or "rope_freqs" in name:
        return np.ones(n, dtype=np.float32)
    if name.endswith(".bias") or "attn_sinks" in name:
        return np.zeros(n, dtype=np.float32)
    if "ffn_gate_inp" in name or "shortconv.conv" in name:  # routers random, so experts spread
        return rng.standard_normal(n, dtype=np.float32) * 0.1
    return None


def _fill(out: np.ndarray, pool: np.ndarray, start: int) -> None:
    """Fill out with the pool's bytes from start, wrapping (start is block-aligned)."""
    pos = 0
    while pos < out.size:
        take = min(out.size - pos, pool.size - start)
        out[pos:pos + take] = pool[start:start + take]
        pos += take
        start = 0


def _tensor_data(t: TensorShape, qtype: GGMLQuantizationType, seed: int,
                 rng: np.random.Generator) -> np.ndarray:
    if qtype == T.F32 and (special := _special_values(t, rng)) is not None:
        return special.view(np.uint8)
    pool = _pool(qtype, seed)
    size = GGML_QUANT_SIZES[qtype][1]
    out = np.empty(tensor_bytes(t.ne, qtype), dtype=np.uint8)
    _fill(out, pool, int(rng.integers(0, pool.size // size)) * size)
    return out


# -- writing ------------------------------------------------------------------------------------
_VOCAB_KEYS = (Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.MERGES)


def _vocab_kv_bytes(n_vocab: int) -> int:
    """Bytes the three vocabulary arrays take in the header (GGUF: key, type, item type,
    count, then u64 length + UTF-8 per string or 4 bytes per int32)."""
    vocab = bpe_vocab(n_vocab)
    strings = lambda items: sum(8 + len(x.encode()) for x in items)  # noqa: E731
    keys = sum(8 + len(k) + 4 + 4 + 8 for k in _VOCAB_KEYS)
    return keys + strings(vocab.tokens) + 4 * len(vocab.types) + strings(vocab.merges)


def _writer(path: Path, spec: ModelSpec, quant: str, types: dict[str, GGMLQuantizationType],
            tensors: list[TensorShape], with_vocab: bool = True) -> GGUFWriter:
    ftype, _ = file_type(quant)
    w = GGUFWriter(str(path), spec.arch)
    w.add_name(f"{spec.name} (tokbench synthetic)")
    w.add_file_type(int(ftype))
    if any(t not in (T.F32, T.F16, T.BF16) for t in types.values()):
        w.add_quantization_version(2)
    w.add_string("tokbench.synthetic.source", spec.source)
    w.add_uint32("tokbench.synthetic.generator", GENERATOR_VERSION)
    for key, value, vtype in metadata(spec):
        sub = GGUFValueType.INT32 if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    vocab = bpe_vocab(spec.vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(spec.tokenizer_pre)
    if with_vocab:
        w.add_token_list(list(vocab.tokens))
        w.add_token_types(list(vocab.types))
        w.add_token_merges(list(vocab.merges))
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(True)
    for t in tensors:
        w.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32),
                          tensor_bytes(t.ne, types[t.name]), raw_dtype=types[t.name])
    return w


def plan(spec: ModelSpec, quant: str) -> tuple[list[TensorShape], dict[str, GGMLQuantizationType]]:
    """Tensors in the order llama.cpp's quantizer writes them, and their types for the quant."""
    if spec.quants and quant.upper() not in spec.quants:
        raise TokbenchError(f"{spec.name} is published only as {', '.join(spec.quants)} "
                            f"(asked for {quant}); {spec.notes}")
    tensors = quantizer_order(tensor_shapes(spec))
    return tensors, assign_types(tensors, quant, facts(spec))


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


_HEADER_BYTES: dict[tuple[ModelSpec, bool], int] = {}


def _header_bytes(spec: ModelSpec, quant: str) -> int:
    """Header size: the same for every quantized type (and for every float type) of a model."""
    _, default = file_type(quant)
    key = (spec, default in (T.F32, T.F16, T.BF16))
    if key not in _HEADER_BYTES:
        tensors, types = plan(spec, quant)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "header.gguf"
            w = _writer(path, spec, quant, types, tensors, with_vocab=False)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            w.close()
            _HEADER_BYTES[key] = path.stat().st_size + _vocab_kv_bytes(spec.vocab)
    return _HEADER_BYTES[key]


def predicted_size(spec: ModelSpec, quant: str) -> int:
    """Exact size in bytes of the file synthesize() writes."""
    tensors, types = plan(spec, quant)
    return _pad(_header_bytes(spec, quant)) + sum(_pad(tensor_bytes(t.ne, types[t.name]))
                                                  for t in tensors)


def check_free_disk(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    margin = 256 << 20
    if free < needed + margin:
        raise TokbenchError(
            f"not enough disk in {directory}: the model needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free; free space or set TOKBENCH_CACHE to another disk")


def synthesize(spec: ModelSpec, quant: str, path: str | Path, *, seed: int = 0,
               progress: Progress | None = None) -> Path:
    """Write the GGUF (atomically: a .partial file renamed when complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, types = plan(spec, quant)
    check_free_disk(path.parent, predicted_size(spec, quant))
    partial = path.with_name(path.name + ".partial")
    rng = np.random.default_rng(seed)
    w = _writer(partial, spec, quant, types, tensors)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        written = 0
        for t in tensors:
            data = _tensor_data(t, types[t.name], seed, rng)
            w.write_tensor_data(data)
            written += data.size
            if progress:
                progress(written)
        w.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# -- clone ----------------------------------------------------------------------------------
def clone(source: str | Path, target: str | Path, *, seed: int = 0,
          progress: Progress | None = None) -> Path:
    """A synthetic twin of any GGUF: the header copied byte for byte, random valid data."""
    source, target = Path(source), Path(target)
    reader = GGUFReader(source)
    unsupported = sorted({t.tensor_type.name for t in reader.tensors} - {t.name for t in WRITABLE})
    if unsupported:
        raise TokbenchError(f"{source.name} has tensor types the synthesizer cannot write "
                            f"({', '.join(unsupported)})")
    check_free_disk(target.parent, source.stat().st_size)
    rng = np.random.default_rng(seed)
    partial = target.with_name(target.name + ".partial")
    try:
        with source.open("rb") as src, partial.open("wb") as out:
            out.write(src.read(reader.data_offset))
            written = 0
            for t in sorted(reader.tensors, key=lambda t: int(t.data_offset)):
                out.seek(int(t.data_offset))
                shape = TensorShape(t.name, tuple(int(d) for d in t.shape), t.tensor_type)
                data = _tensor_data(shape, t.tensor_type, seed, rng)
                if data.size != int(t.n_bytes):
                    raise TokbenchError(f"{source.name}: tensor {t.name} size mismatch")
                data.tofile(out)
                written += data.size
                if progress:
                    progress(written)
            out.truncate(source.stat().st_size)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# -- the cache --------------------------------------------------------------------------------
def cache_dir() -> Path:
    return cache.root() / "models"


def _samples_digest(path: Path, n: int = 64, chunk: int = 1 << 16) -> str:
    """sha256 over n chunks spread across the file: catches partial and overwritten files
    without reading 14 GB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for i in range(n):
            fh.seek(max(0, size - chunk) * i // max(1, n - 1))
            digest.update(fh.read(chunk))
    return digest.hexdigest()


def _manifest(spec: ModelSpec, quant: str, seed: int) -> dict[str, object]:
    """What identifies a cached file, in its JSON form (tuples become lists)."""
    return json.loads(json.dumps({"generator": GENERATOR_VERSION, "spec": asdict(spec),
                                  "quant": quant.upper(), "seed": seed,
                                  "size": predicted_size(spec, quant)}))


def cached_file_problem(path: Path, expected: dict[str, object]) -> str | None:
    """Why a cached file cannot be reused (None: it can)."""
    meta = path.with_name(path.name + ".json")
    if not path.exists():
        return "missing"
    if not meta.exists():
        return "no manifest (an interrupted or foreign file)"
    recorded = json.loads(meta.read_text())
    if {k: recorded.get(k) for k in expected} != expected:
        return "made by another generator version or spec"
    if path.stat().st_size != expected["size"]:
        return f"size {path.stat().st_size:,} bytes, expected {expected['size']:,} (partial file)"
    if _samples_digest(path) != recorded.get("digest"):
        return "contents changed since it was written (corrupt)"
    return None


def ensure(name: str | ModelSpec, quant: str, *, directory: Path | None = None, seed: int = 0,
           progress: Progress | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The cached synthetic file for name@quant, generated when missing, stale or corrupt."""
    spec = lookup(name) if isinstance(name, str) else name
    quant = quant.upper()
    file_type(quant)
    directory = directory or cache_dir()
    path = directory / f"{spec.name}-{quant}.gguf"
    expected = _manifest(spec, quant, seed)
    with cache.exclusive(path, f"synthetic model {path.name}", log):
        problem = cached_file_problem(path, expected)
        if problem is None:
            return path
        if problem != "missing" and log:
            log(f"cached {path.name}: {problem}; generating it again")
        meta = path.with_name(path.name + ".json")
        meta.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        try:
            synthesize(spec, quant, path, seed=seed, progress=progress)
            meta.write_text(json.dumps({**expected, "digest": _samples_digest(path)}, indent=1))
        except OSError as exc:  # a full disk part-way: no file is left that looks whole
            meta.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise TokbenchError(f"cannot write synthetic model {path} ({exc.strerror or exc}): "
                                "free space, or set TOKBENCH_CACHE to another disk") from None
    return path


def parse_source(text: str) -> tuple[str, str]:
    """'lfm2-1.2b@Q4_0' → (name, quant); the quant defaults to Q4_K_M."""
    name, _, quant = text.partition("@")
    return name, (quant or "Q4_K_M")
