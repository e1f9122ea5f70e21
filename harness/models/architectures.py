"""GGUF layout of each catalog architecture: tensor names and shapes, and metadata keys.

Names, shapes and keys are those llama.cpp's loader asks for (src/models/<arch>.cpp in the
vendored llama.cpp) and that convert_hf_to_gguf.py writes: 2-D weights F16 in the
unquantized file; norms, biases, routers, short-conv kernels and attention sinks F32.
"""

from __future__ import annotations

from typing import Any

from gguf import GGMLQuantizationType, GGUFValueType, Keys

from harness.common.errors import TokbenchError
from harness.models.catalog import ModelSpec
from harness.models.quant_mix import ModelFacts, TensorShape

T = GGMLQuantizationType


def tensor_shapes(spec: ModelSpec) -> list[TensorShape]:
    """Every tensor of the model, with its shape in ggml order (ne[0] = row length)."""
    builders = {"lfm2": _lfm2, "lfm2moe": _lfm2, "llama": _llama, "qwen3moe": _qwen3moe,
                "gpt-oss": _gpt_oss}
    if spec.arch not in builders:
        raise TokbenchError(f"architecture {spec.arch!r} has no synthetic layout")
    return builders[spec.arch](spec)


def facts(spec: ModelSpec) -> ModelFacts:
    return ModelFacts(n_layer=spec.n_layer, n_expert=spec.n_expert,
                      n_gqa=spec.n_head // spec.n_head_kv)


def parameter_counts(spec: ModelSpec) -> tuple[int, int]:
    """(total, read per token): the latter leaves out unrouted experts and, when the
    embedding is not tied to the output, the embedding table (one row is read)."""
    total = active = 0
    for t in tensor_shapes(spec):
        n = 1
        for d in t.ne:
            n *= d
        total += n
        if "_exps" in t.name and spec.n_expert:
            n = n * spec.n_expert_used // spec.n_expert
        if t.name == "token_embd.weight" and not spec.tied:
            n = t.ne[0]
        active += n
    return total, active


def _w(name: str, *ne: int) -> TensorShape:
    return TensorShape(name, tuple(ne), T.F16)


def _f(name: str, *ne: int) -> TensorShape:
    return TensorShape(name, tuple(ne), T.F32)


def _embeddings(spec: ModelSpec, output_norm: str) -> list[TensorShape]:
    out = [_w("token_embd.weight", spec.hidden, spec.vocab), _f(output_norm, spec.hidden)]
    if not spec.tied:
        out.append(_w("output.weight", spec.hidden, spec.vocab))
    return out


def _experts(b: str, spec: ModelSpec, bias: bool = False) -> list[TensorShape]:
    h, f, e = spec.hidden, spec.expert_ff, spec.n_expert
    out = [_f(b + "ffn_gate_inp.weight", h, e),
           _w(b + "ffn_gate_exps.weight", h, f, e),
           _w(b + "ffn_up_exps.weight", h, f, e),
           _w(b + "ffn_down_exps.weight", f, h, e)]
    if bias:
        out += [_f(b + "ffn_gate_inp.bias", e), _f(b + "ffn_gate_exps.bias", f, e),
                _f(b + "ffn_up_exps.bias", f, e), _f(b + "ffn_down_exps.bias", h, e)]
    return out


def _dense_ffn(b: str, h: int, f: int) -> list[TensorShape]:
    return [_w(b + "ffn_gate.weight", h, f), _w(b + "ffn_up.weight", h, f),
            _w(b + "ffn_down.weight", f, h)]


def _attention(b: str, spec: ModelSpec, qk_norm: bool, bias: bool = False) -> list[TensorShape]:
    h, d = spec.hidden, spec.dim_head
    q, kv = spec.n_head * d, spec.n_head_kv * d
    out = [_w(b + "attn_q.weight", h, q), _w(b + "attn_k.weight", h, kv),
           _w(b + "attn_v.weight", h, kv), _w(b + "attn_output.weight", q, h)]
    if qk_norm:
        out += [_f(b + "attn_q_norm.weight", d), _f(b + "attn_k_norm.weight", d)]
    if bias:
        out += [_f(b + "attn_q.bias", q), _f(b + "attn_k.bias", kv), _f(b + "attn_v.bias", kv),
                _f(b + "attn_output.bias", h)]
    return out


def _lfm2(spec: ModelSpec) -> list[TensorShape]:
    h = spec.hidden
    out = _embeddings(spec, "token_embd_norm.weight")
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [_f(b + "attn_norm.weight", h), _f(b + "ffn_norm.weight", h)]
        if spec.is_attention(i):
            out += _attention(b, spec, qk_norm=True)
        else:
            out += [_f(b + "shortconv.conv.weight", spec.conv_l_cache, h),
                    _w(b + "shortconv.in_proj.weight", h, 3 * h),
                    _w(b + "shortconv.out_proj.weight", h, h)]
        if spec.is_moe(i):
            out += [*_experts(b, spec), _f(b + "exp_probs_b.bias", spec.n_expert)]
        else:
            out += _dense_ffn(b, h, spec.ff)
    return out


def _llama(spec: ModelSpec) -> list[TensorShape]:
    out = [*_embeddings(spec, "output_norm.weight"), _f("rope_freqs.weight", spec.dim_head // 2)]
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [_f(b + "attn_norm.weight", spec.hidden), _f(b + "ffn_norm.weight", spec.hidden)]
        out += _attention(b, spec, qk_norm=False) + _dense_ffn(b, spec.hidden, spec.ff)
    return out


def _qwen3moe(spec: ModelSpec) -> list[TensorShape]:
    out = _embeddings(spec, "output_norm.weight")
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [_f(b + "attn_norm.weight", spec.hidden), _f(b + "ffn_norm.weight", spec.hidden)]
        out += _attention(b, spec, qk_norm=True) + _experts(b, spec)
    return out


def _gpt_oss(spec: ModelSpec) -> list[TensorShape]:
    out = _embeddings(spec, "output_norm.weight")
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        out += [_f(b + "attn_norm.weight", spec.hidden),
                _f(b + "post_attention_norm.weight", spec.hidden),
                _f(b + "attn_sinks.weight", spec.n_head)]
        out += _attention(b, spec, qk_norm=False, bias=True) + _experts(b, spec, bias=True)
    return out


def metadata(spec: ModelSpec) -> list[tuple[str, Any, GGUFValueType]]:
    """Architecture keys, as convert_hf_to_gguf.py writes them (names from gguf-py's Keys)."""
    U, F, A = GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.ARRAY
    LLM, Att, Rope = Keys.LLM, Keys.Attention, Keys.Rope
    kv: list[tuple[str, Any, GGUFValueType]] = [
        (LLM.CONTEXT_LENGTH, spec.context, U),
        (LLM.EMBEDDING_LENGTH, spec.hidden, U),
        (LLM.FEED_FORWARD_LENGTH, spec.ff, U),
        (LLM.BLOCK_COUNT, spec.n_layer, U),
        (Att.HEAD_COUNT, spec.n_head, U),
        (Rope.FREQ_BASE, spec.rope_theta, F),
        (Att.LAYERNORM_RMS_EPS, spec.norm_eps, F),
        (LLM.VOCAB_SIZE, spec.vocab, U),
    ]
    if spec.attn_layers is not None:  # LFM2: KV heads per layer, 0 on short-conv layers
        kv.append((Att.HEAD_COUNT_KV,
                   [spec.n_head_kv if spec.is_attention(i) else 0 for i in range(spec.n_layer)], A))
        kv.append((Keys.ShortConv.L_CACHE, spec.conv_l_cache, U))
    else:
        kv += [(Att.HEAD_COUNT_KV, spec.n_head_kv, U), (Att.KEY_LENGTH, spec.dim_head, U),
               (Att.VALUE_LENGTH, spec.dim_head, U)]
    if spec.arch == "llama":
        kv.append((Rope.DIMENSION_COUNT, spec.dim_head, U))
    if spec.n_expert:
        kv += [(LLM.EXPERT_COUNT, spec.n_expert, U), (LLM.EXPERT_USED_COUNT, spec.n_expert_used, U),
               (LLM.EXPERT_FEED_FORWARD_LENGTH, spec.expert_ff, U)]
    if spec.arch == "lfm2moe":
        kv += [(LLM.LEADING_DENSE_BLOCK_COUNT, spec.dense_lead, U),
               (LLM.EXPERT_GATING_FUNC, 2, U)]  # sigmoid
    if spec.arch == "gpt-oss":
        kv += [(Att.SLIDING_WINDOW, spec.sliding_window, U),
               (Rope.SCALING_TYPE, "yarn", GGUFValueType.STRING),
               (Rope.SCALING_FACTOR, 32.0, F),
               (Rope.SCALING_ORIG_CTX_LEN, 4096, U)]
    return [(k.format(arch=spec.arch), v, t) for k, v, t in kv]
