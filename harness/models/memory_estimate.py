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


# -- a floor for any model file, before a worker loads it --------------------------------------
RUNTIME_FLOOR_BYTES = 64 << 20  # an engine process before its model: interpreter, libraries


def gguf_kv_bytes_floor(fields: dict, n_ctx: int, n_seq: int, bytes_per_value: float) -> int:
    """The KV cache a GGUF's attention layers need for n_ctx tokens in each of n_seq sequences,
    at least: layers without KV heads (LFM2's convolutions) hold none, and every layer is given
    the sliding window when the model has one (llama.cpp keeps full context in some)."""
    arch = fields.get("general.architecture")
    n_layer = int(fields.get(f"{arch}.block_count") or 0)
    n_head = fields.get(f"{arch}.attention.head_count") or 0
    head_kv = fields.get(f"{arch}.attention.head_count_kv", n_head)
    heads = list(head_kv) if isinstance(head_kv, list) else [head_kv] * n_layer
    n_head0 = max(n_head) if isinstance(n_head, list) else n_head
    dim = int(fields.get(f"{arch}.embedding_length") or 0)
    k = int(fields.get(f"{arch}.attention.key_length") or (dim // n_head0 if n_head0 else 0))
    v = int(fields.get(f"{arch}.attention.value_length") or k)
    window = fields.get(f"{arch}.attention.sliding_window")
    tokens = min(n_ctx, int(window)) if window else n_ctx
    return int(sum(int(h) for h in heads[:n_layer]) * (k + v) * tokens * n_seq * bytes_per_value)


def hf_kv_bytes_floor(config: dict, n_ctx: int, n_seq: int, bytes_per_value: float) -> int:
    """The same floor from a Hugging Face config.json."""
    cfg = config.get("text_config") or config
    n_layer = int(cfg.get("num_hidden_layers") or 0)
    n_head = int(cfg.get("num_attention_heads") or 0)
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    head = int(cfg.get("head_dim") or (int(cfg.get("hidden_size") or 0) // n_head if n_head else 0))
    layers = cfg.get("layer_types")
    if isinstance(layers, list):  # hybrids (LFM2): only the attention layers keep KV
        n_layer = sum(1 for t in layers if "attention" in str(t))
    window = cfg.get("sliding_window")
    tokens = min(n_ctx, int(window)) if window else n_ctx
    return int(n_layer * n_kv * 2 * head * tokens * n_seq * bytes_per_value)
