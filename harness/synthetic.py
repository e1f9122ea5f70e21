"""Synthetic models: random weights in a real architecture, written locally with gguf-py.

Speed and memory depend on shapes and tensor types, not weight values, so a synthetic model
benchmarks like a real one of the same shape without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_tiny_llama_gguf(path: str | Path, *, n_vocab: int = 512, n_embd: int = 128,
                          n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2,
                          n_ff: int = 256, n_ctx: int = 2048, seed: int = 0) -> Path:
    """A small llama-architecture GGUF (F16 matrices, F32 norms) with an SPM vocabulary."""
    import gguf

    path = Path(path)
    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-synthetic")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁t{i}" for i in range(n_vocab - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (n_vocab - 259)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(n_vocab - 259)])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    ones = np.ones(n_embd, dtype=np.float32)
    writer.add_tensor("token_embd.weight", matrix(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", matrix(n_vocab, n_embd))
    for i in range(n_layer):
        blk = f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", ones)
        writer.add_tensor(blk + "attn_q.weight", matrix(n_embd, n_embd))
        writer.add_tensor(blk + "attn_k.weight", matrix(n_head_kv * head_dim, n_embd))
        writer.add_tensor(blk + "attn_v.weight", matrix(n_head_kv * head_dim, n_embd))
        writer.add_tensor(blk + "attn_output.weight", matrix(n_embd, n_embd))
        writer.add_tensor(blk + "ffn_norm.weight", ones)
        writer.add_tensor(blk + "ffn_gate.weight", matrix(n_ff, n_embd))
        writer.add_tensor(blk + "ffn_up.weight", matrix(n_ff, n_embd))
        writer.add_tensor(blk + "ffn_down.weight", matrix(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
