"""Per-tensor quant types for a file type (Q4_K_M…), as llama.cpp's quantizer chooses them.

A "Q4_K_M" file is a mix: attn_v and ffn_down get Q6_K in some layers, the (tied) output
matrix Q6_K, norms stay F32. Sizes and speeds depend on that mix, so synthetic files follow
the rules of `llama_tensor_get_type` in llama.cpp's src/llama-quant.cpp (the version
vendored by llama-cpp-python 0.3.36); tests compare the result with the real quantizer.
Only the non-imatrix file types are covered (IQ* types need an importance matrix).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from harness.common.errors import TokbenchError

T = GGMLQuantizationType

# file type name → the type of its bulk tensors (llama_ftype_get_default_type)
FILE_TYPES: dict[str, tuple[LlamaFileType, GGMLQuantizationType]] = {
    "F32": (LlamaFileType.ALL_F32, T.F32),
    "F16": (LlamaFileType.MOSTLY_F16, T.F16),
    "BF16": (LlamaFileType.MOSTLY_BF16, T.BF16),
    "Q8_0": (LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    "Q6_K": (LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
    "Q5_K_M": (LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    "Q5_K_S": (LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    "Q5_1": (LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    "Q5_0": (LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    "Q4_K_M": (LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    "Q4_K_S": (LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    "Q4_1": (LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    "Q4_0": (LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    "Q3_K_L": (LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    "Q3_K_M": (LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    "Q3_K_S": (LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    "Q2_K": (LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    "MXFP4_MOE": (LlamaFileType.MOSTLY_MXFP4_MOE, T.MXFP4),
}

# tensors the quantizer never touches (beyond 1-D ones and non-".weight" names)
_KEEP = ("_norm.weight", "ffn_gate_inp.weight", "shortconv.conv.weight", "ssm_conv1d",
         "attn_sinks", "rope_freqs")


@dataclass(frozen=True)
class TensorShape:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    source: GGMLQuantizationType = T.F32  # type in the unquantized (converter) file


@dataclass(frozen=True)
class ModelFacts:
    """What the rules look at besides the tensor itself."""

    n_layer: int
    n_expert: int = 0
    n_gqa: int = 1


def file_type(name: str) -> tuple[LlamaFileType, GGMLQuantizationType]:
    key = name.upper()
    if key not in FILE_TYPES:
        raise TokbenchError(f"quant {name!r} is not supported; use one of {', '.join(FILE_TYPES)}")
    return FILE_TYPES[key]


def quantizable(t: TensorShape) -> bool:
    return (len(t.ne) >= 2 and t.name.endswith("weight")
            and not any(k in t.name for k in _KEEP))


def _layer(name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def quantizer_order(tensors: Sequence[TensorShape]) -> list[TensorShape]:
    """The order llama.cpp's loader (and so its quantizer) walks and writes tensors."""
    return sorted(tensors, key=lambda t: (_layer(t.name), t.name))


def assign_types(tensors: Sequence[TensorShape], quant: str, facts: ModelFacts
                 ) -> dict[str, GGMLQuantizationType]:
    """Tensor name → type, for the whole model, in the quantizer's order."""
    ftype, default = file_type(quant)
    ordered = quantizer_order(tensors)
    state = _State(
        n_attention_wv=sum(1 for t in ordered if "attn_v.weight" in t.name or "attn_qkv.weight" in t.name),
        tied=not any(t.name == "output.weight" for t in ordered),
    )
    out: dict[str, GGMLQuantizationType] = {}
    for t in ordered:
        if not quantizable(t):
            out[t.name] = t.source
        elif default in (T.F32, T.F16, T.BF16):
            out[t.name] = default
        else:
            chosen = _choose(state, t, ftype, default, facts)
            out[t.name] = _fallback(t, chosen)
    return out


@dataclass
class _State:
    n_attention_wv: int
    tied: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _choose(qs: _State, t: TensorShape, ftype: LlamaFileType, new: GGMLQuantizationType,
            m: ModelFacts) -> GGMLQuantizationType:
    F = LlamaFileType
    name = t.name
    if name == "output.weight" or (qs.tied and name == "token_embd.weight"):
        if ftype == F.MOSTLY_MXFP4_MOE or t.ne[0] % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return T.Q6_K if new != T.Q8_0 else new
    if ftype == F.MOSTLY_MXFP4_MOE:
        return T.MXFP4 if len(t.ne) > 2 and t.ne[2] > 1 else T.Q8_0
    if name == "token_embd.weight":
        return new
    if "attn_v.weight" in name or "attn_qkv.weight" in name or "attn_kv_b.weight" in name:
        if ftype == F.MOSTLY_Q2_K:
            new = T.Q4_K if m.n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new = T.Q5_K if qs.i_attention_wv < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(qs.i_attention_wv,
                                                                           qs.n_attention_wv):
            new = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and qs.i_attention_wv < 4:
            new = T.Q5_K
        if m.n_expert == 8:
            new = T.Q8_0
        qs.i_attention_wv += 1
        return new
    if "attn_k.weight" in name:
        return T.Q8_0 if m.n_expert == 8 else new
    if "ffn_down" in name:
        i = _layer(name) if m.n_expert > 1 else qs.i_ffn_down
        n = m.n_layer
        qs.i_ffn_down += 1
        if ftype == F.MOSTLY_Q2_K:
            return T.Q3_K
        if ftype == F.MOSTLY_Q3_K_M:
            return T.Q5_K if i < n // 16 else T.Q4_K
        if ftype == F.MOSTLY_Q3_K_L:
            return T.Q5_K
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M):
            return T.Q6_K if _use_more_bits(i, n) else new
        if ftype == F.MOSTLY_Q4_K_S and i < n // 8:
            return T.Q5_K
        return new
    if "attn_output.weight" in name:
        if m.n_expert == 8:
            if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M, F.MOSTLY_Q4_K_S,
                         F.MOSTLY_Q4_K_M):
                return T.Q5_K
            return new
        return {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q4_K,
                F.MOSTLY_Q3_K_L: T.Q5_K}.get(ftype, new)
    return new


# llama.cpp's tensor_type_fallback: a row length the block size does not divide
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def _fallback(t: TensorShape, chosen: GGMLQuantizationType) -> GGMLQuantizationType:
    if t.ne[0] % GGML_QUANT_SIZES[chosen][0] == 0:
        return chosen
    second = _FALLBACK.get(chosen, chosen)
    return second if t.ne[0] % GGML_QUANT_SIZES[second][0] == 0 else T.F16


def tensor_bytes(ne: Sequence[int], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in ne:
        n *= d
    return n // block * size
