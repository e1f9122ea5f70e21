"""Roofline arithmetic: bytes one decode step reads, and the tok/s a device's bandwidth allows.

Decode is bound by memory bandwidth: every generated token reads the active weights once, plus
the KV cache of the attention layers over the context so far, plus any recurrent state. So

    bytes/step(c, B) = W_dense + W_experts · u(B) + B · (KV(c) + S)
    ceiling tok/s    = bandwidth · B / bytes/step(c, B)
    fraction         = measured tok/s / ceiling tok/s

with
    W_dense    every weight tensor outside the routed experts, at its own quant type (the Q6_K
               output matrix of a Q4_K_M file counts as Q6_K); when the embedding is not tied to
               the output, only one row of it is read;
    W_experts  all routed-expert tensors; u(B) = 1 − (1 − k/n)^B is the expected share of the n
               experts that B sequences, each routed to k, touch (k/n for one sequence);
    KV(c)      Σ over attention layers of 2 · n_kv_heads · head_dim · min(c, window) · bytes per
               cache value (2 for f16); c is the attended context (see decode_context);
    S          recurrent state read per token: LFM2 short-conv layers keep the last L − 1 inputs,
               hidden · (L − 1) F32 values (llama.cpp's n_embd_r);
    B          concurrent sequences (1 for single-stream decode).

Where a device publishes a compute peak, compute bounds the batch too: tok/s ≤ FLOPS / (2 ·
active parameters). The ceiling is the lower of the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from harness.common.errors import TokbenchError
from harness.models.catalog import ModelSpec
from harness.models.memory_estimate import recurrent_state_bytes
from harness.models.quant_mix import tensor_bytes

F32_BYTES = 4


@dataclass(frozen=True)
class Tensor:
    """One weight tensor as the roofline needs it."""

    name: str
    n_elements: int
    n_bytes: int
    n_rows: int  # rows of a 2-D matrix (vocabulary size for the embedding)


@dataclass(frozen=True)
class DecodeShape:
    """What one decode step reads, for one model file (or catalog model at a quant)."""

    dense_bytes: int
    expert_bytes: int
    n_expert: int
    n_expert_used: int
    kv_layers: tuple[tuple[int, int], ...]  # per attention layer: (K+V values per token, window or 0)
    state_bytes: int
    active_params: int  # parameters read per token (multiply-adds, for the compute bound)

    def expert_share(self, batch: int = 1) -> float:
        """u(B): expected share of routed experts B sequences touch (uniform routing)."""
        if not self.n_expert:
            return 0.0
        return 1 - (1 - self.n_expert_used / self.n_expert) ** batch

    def weight_bytes(self, batch: int = 1) -> float:
        return self.dense_bytes + self.expert_bytes * self.expert_share(batch)

    def kv_bytes(self, context: float, bytes_per_value: float = 2.0) -> float:
        """KV(c): the K and V read by one token attending over `context` tokens."""
        return sum(values * (min(context, window) if window else context) * bytes_per_value
                   for values, window in self.kv_layers)

    def step_bytes(self, context: float, batch: int = 1, kv_bytes_per_value: float = 2.0) -> float:
        """bytes/step(c, B)."""
        return self.weight_bytes(batch) + batch * (self.kv_bytes(context, kv_bytes_per_value)
                                                   + self.state_bytes)

    def bytes_per_token(self, context: float, batch: int = 1, kv_bytes_per_value: float = 2.0) -> float:
        return self.step_bytes(context, batch, kv_bytes_per_value) / batch


def bandwidth_ceiling(bandwidth_gbs: float, step_bytes: float, batch: int = 1) -> float:
    """tok/s (all sequences together) that the bandwidth allows: bandwidth · B / bytes/step."""
    return bandwidth_gbs * 1e9 * batch / step_bytes


def compute_ceiling(tflops: float, active_params: int) -> float:
    """tok/s the compute peak allows: 2 FLOPs per active parameter per token."""
    return tflops * 1e12 / (2 * active_params)


def decode_context(n_prompt: int, n_gen: int, n_depth: int) -> float:
    """Mean context a decoded token attends over: the i-th of n_gen tokens (i = 1…n) sees
    depth + prompt + i positions, so the mean is depth + prompt + (n_gen + 1) / 2."""
    return n_depth + n_prompt + (n_gen + 1) / 2


def kv_bytes_per_value(cache_type: str | None) -> float:
    """Bytes per cached K or V value for llama.cpp's -ctk/-ctv type (f16 when not given)."""
    name = (cache_type or "f16").upper()
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[name]]
    except KeyError:
        raise TokbenchError(f"KV cache type {cache_type!r} is unknown: use f16, q8_0, q4_0…") from None
    return size / block


# -- shapes ---------------------------------------------------------------------------------------
def _weights(tensors: Iterable[Tensor], n_expert: int, n_expert_used: int) -> tuple[int, int, int]:
    """(dense bytes, expert bytes, active parameters)."""
    tensors = list(tensors)
    untied = any(t.name == "output.weight" for t in tensors)
    dense = experts = active = 0
    for t in tensors:
        if "_exps." in t.name and n_expert:
            experts += t.n_bytes
            active += t.n_elements * n_expert_used // n_expert
        elif t.name == "token_embd.weight" and untied:  # a lookup: one row is read
            dense += t.n_bytes // t.n_rows
            active += t.n_elements // t.n_rows
        else:
            dense += t.n_bytes
            active += t.n_elements
    return dense, experts, active


def shape_from_catalog(spec: ModelSpec, quant: str) -> DecodeShape:
    """Exact bytes for a catalog model at a llama.cpp quant, per tensor as the quantizer types it."""
    from harness.models.synthetic import plan

    shapes, types = plan(spec, quant)
    tensors = []
    for t in shapes:
        n = 1
        for d in t.ne:
            n *= d
        tensors.append(Tensor(t.name, n, tensor_bytes(t.ne, types[t.name]),
                              t.ne[1] if len(t.ne) > 1 else 1))
    dense, experts, active = _weights(tensors, spec.n_expert, spec.n_expert_used)
    kv = tuple(
        (2 * spec.n_head_kv * spec.dim_head,
         spec.sliding_window if spec.sliding_window and layer % 2 == 0 else 0)  # gpt-oss: even slide
        for layer in range(spec.n_layer) if spec.is_attention(layer)
    )
    return DecodeShape(dense, experts, spec.n_expert, spec.n_expert_used, kv,
                       recurrent_state_bytes(spec), active)


# llama.cpp's sliding-window layer patterns (llama_hparams::set_swa_pattern): layer il slides
# when il % period < period - 1.
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "gpt-oss": 2, "cohere2": 4}


def shape_from_gguf(path: str | Path) -> DecodeShape:
    """Bytes from a GGUF file's own tensors and metadata (any llama.cpp model file).

    Routed experts (`*_exps.*`) count k/n via `{arch}.expert_used_count` / `expert_count`; the
    KV layout comes from `head_count_kv` (per layer in hybrid models: 0 marks a non-attention
    layer), `key_length`/`value_length` and the sliding window.
    """
    from harness.models.gguf_header import read_header

    header = read_header(path)
    fields = header.fields
    arch = str(fields.get("general.architecture", ""))

    def field(key: str, default: object = None) -> object:
        return fields.get(f"{arch}.{key}", default)

    n_layer = int(field("block_count", 0))
    n_expert, n_used = int(field("expert_count", 0)), int(field("expert_used_count", 0))
    hidden = int(field("embedding_length", 0))
    n_head = field("attention.head_count", 1)
    n_head = max(n_head) if isinstance(n_head, list) else int(n_head)
    kv_heads = field("attention.head_count_kv", n_head)
    kv_heads = kv_heads if isinstance(kv_heads, list) else [int(kv_heads)] * n_layer
    k_len = int(field("attention.key_length", hidden // max(n_head, 1)))
    v_len = int(field("attention.value_length", k_len))
    window = int(field("attention.sliding_window", 0))
    period = _SWA_PERIOD.get(arch)
    kv = tuple(
        (h * (k_len + v_len), window if window and period and i % period < period - 1 else 0)
        for i, h in enumerate(kv_heads) if h
    )
    l_cache = int(field("shortconv.l_cache", 0))
    state = sum(1 for h in kv_heads if not h) * hidden * (l_cache - 1) * F32_BYTES if l_cache else 0
    tensors = [Tensor(t.name, t.n_elements, t.n_bytes, t.ne[1] if len(t.ne) > 1 else 1)
               for t in header.tensors]
    dense, experts, active = _weights(tensors, n_expert, n_used)
    return DecodeShape(dense, experts, n_expert, n_used, kv, state, active)
