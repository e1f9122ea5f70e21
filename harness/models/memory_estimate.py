"""RAM a llama.cpp process needs for a model: weights + KV cache + recurrent state + buffers.

Used by `tokbench models list` to say whether a quant fits before generating or
downloading it. The compute-buffer term is the logits of one 512-token micro-batch plus the
widest activations, which is what dominates llama.cpp's CPU compute buffer.
"""

from __future__ import annotations

from harness.models.catalog import ModelSpec

N_UBATCH = 512


def kv_cache_bytes(spec: ModelSpec, n_ctx: int, bytes_per_value: int = 2) -> int:
    """K and V for every attention layer (F16 by default); sliding-window layers keep only
    their window."""
    total = 0
    for layer in range(spec.n_layer):
        if not spec.is_attention(layer):
            continue
        tokens = n_ctx
        if spec.sliding_window and layer % 2 == 0:  # gpt-oss: even layers slide
            tokens = min(n_ctx, spec.sliding_window + N_UBATCH)
        total += 2 * tokens * spec.n_head_kv * spec.dim_head * bytes_per_value
    return total


def recurrent_state_bytes(spec: ModelSpec) -> int:
    """LFM2 short-conv state: the last L-1 gated inputs (hidden wide) of each conv layer, F32
    (llama.cpp's n_embd_r = n_embd · (l_cache − 1))."""
    conv_layers = sum(not spec.is_attention(i) for i in range(spec.n_layer))
    return conv_layers * spec.hidden * (spec.conv_l_cache - 1) * 4


def compute_buffer_bytes(spec: ModelSpec) -> int:
    widest = max(spec.ff, spec.n_expert_used * spec.expert_ff, 3 * spec.hidden)
    return N_UBATCH * (spec.vocab + 2 * widest + 4 * spec.hidden) * 4


def ram_needed(spec: ModelSpec, file_bytes: int, n_ctx: int = 4096) -> int:
    return (file_bytes + kv_cache_bytes(spec, n_ctx) + recurrent_state_bytes(spec)
            + compute_buffer_bytes(spec))
