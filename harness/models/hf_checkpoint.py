"""Synthetic checkpoints in Hugging Face layout, for engines that read one (vLLM, MLX).

The same catalog entry and the same random-weight idea as the GGUF writer: config.json with
every key the engines ask for, F16 safetensors shards (≤ 2 GB each, with an index), and the
offline byte-level BPE vocabulary as a `tokenizers` tokenizer.json.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harness.common import cache
from harness.common.errors import TokbenchError
from harness.models.architectures import tensor_shapes
from harness.models.catalog import ModelSpec
from harness.models.synthetic import GENERATOR_VERSION, Progress, cache_dir, check_free_disk
from harness.models.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, bpe_vocab

SHARD_BYTES = 2 * 10**9

# GGUF tensor name (after "blk.N.") → Hugging Face module path, per architecture
_LAYER_NAMES = {
    "lfm2": {
        "attn_norm": "operator_norm", "ffn_norm": "ffn_norm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.out_proj", "attn_q_norm": "self_attn.q_layernorm",
        "attn_k_norm": "self_attn.k_layernorm", "shortconv.conv": "conv.conv",
        "shortconv.in_proj": "conv.in_proj", "shortconv.out_proj": "conv.out_proj",
        "ffn_gate": "feed_forward.w1", "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2",
    },
    "llama": {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output": "lm_head",
                 "token_embd_norm": "model.embedding_norm", "output_norm": "model.norm"}


def hf_name(arch: str, gguf_name: str) -> str | None:
    """The Hugging Face parameter name of a GGUF tensor (None: HF derives it, e.g. rope_freqs)."""
    base, _, kind = gguf_name.rpartition(".")
    if match := re.match(r"blk\.(\d+)\.(.+)", base):
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[arch][match.group(2)]}.{kind}"
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def config(spec: ModelSpec) -> dict[str, Any]:
    common = {
        "vocab_size": spec.vocab, "hidden_size": spec.hidden, "intermediate_size": spec.ff,
        "num_hidden_layers": spec.n_layer, "num_attention_heads": spec.n_head,
        "num_key_value_heads": spec.n_head_kv, "max_position_embeddings": spec.context,
        "rope_theta": spec.rope_theta, "tie_word_embeddings": spec.tied, "torch_dtype": "float16",
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID,
    }
    if spec.arch == "lfm2":
        layer_types = ["full_attention" if spec.is_attention(i) else "conv" for i in range(spec.n_layer)]
        return {"architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2", **common,
                "norm_eps": spec.norm_eps, "conv_L_cache": spec.conv_l_cache, "conv_bias": False,
                "block_auto_adjust_ff_dim": False, "block_ff_dim": spec.ff,
                "block_dim": spec.hidden, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0,
                # older readers (vLLM's Lfm2 config) ask for these names
                "conv_dim": spec.hidden, "conv_dim_out": spec.hidden, "num_heads": spec.n_head,
                "full_attn_idxs": list(spec.attn_layers or ()), "layer_types": layer_types}
    if spec.arch == "llama":
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
                "head_dim": spec.dim_head, "rms_norm_eps": spec.norm_eps, "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False}
    raise TokbenchError(f"Hugging Face layout is written for lfm2 and llama models, not {spec.arch}; "
                        "use the GGUF format for this entry")


def _tokenizer_files(spec: ModelSpec, directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = bpe_vocab(spec.vocab)
    bpe = models.BPE(vocab={t: i for i, t in enumerate(vocab.tokens)},
                     merges=[tuple(m.split(" ")) for m in vocab.merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": spec.context,
        "bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOS_ID],
        "pad_token": SPECIAL_TOKENS[PAD_ID], "add_bos_token": True,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                         "assistant\n{% endif %}",
    }, indent=1))


def _hf_tensors(spec: ModelSpec) -> list[tuple[str, Any]]:
    tensors = [(hf_name(spec.arch, t.name), t) for t in tensor_shapes(spec)]
    return [(n, t) for n, t in tensors if n is not None]


def weights_bytes(spec: ModelSpec) -> int:
    """F16 bytes of the checkpoint's tensors (what write_hf writes, before file headers)."""
    config(spec)  # refuses architectures without an HF layout
    return sum(2 * int(np.prod(t.ne)) for _, t in _hf_tensors(spec))


def write_hf(spec: ModelSpec, directory: str | Path, *, seed: int = 0,
             progress: Progress | None = None) -> Path:
    """Write the checkpoint directory; returns it."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    cfg = config(spec)
    tensors = _hf_tensors(spec)
    total = weights_bytes(spec)
    directory.mkdir(parents=True, exist_ok=True)
    check_free_disk(directory, total)
    rng = np.random.default_rng(seed)
    shard: dict[str, np.ndarray] = {}
    files: list[list[str]] = []  # tensor names per shard, written as each shard fills

    def flush() -> None:
        files.append(list(shard))
        save_file(shard, str(directory / f"shard-{len(files)}.tmp"), metadata={"format": "pt"})
        shard.clear()

    size = written = 0
    for name, t in tensors:
        shape = tuple(reversed(t.ne))
        if name.endswith("conv.conv.weight"):
            shape = (t.ne[1], 1, t.ne[0])  # depthwise Conv1d: (channels, 1, kernel)
        if "norm" in name:
            values = np.ones(shape, dtype=np.float16)
        else:
            values = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        if size and size + values.nbytes > SHARD_BYTES:
            flush()
            size = 0
        shard[name] = values
        size += values.nbytes
        written += values.nbytes
        if progress:
            progress(written)
    flush()
    weight_map = {}
    for i, names in enumerate(files):
        file = ("model.safetensors" if len(files) == 1
                else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors")
        (directory / f"shard-{i + 1}.tmp").replace(directory / file)
        weight_map.update(dict.fromkeys(names, file))
    if len(files) > 1:
        (directory / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (directory / "config.json").write_text(json.dumps(cfg, indent=1))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}))
    _tokenizer_files(spec, directory)
    return directory


_MANIFEST = "tokbench-synthetic.json"


def ensure_hf(spec: ModelSpec, *, directory: Path | None = None, seed: int = 0,
              progress: Progress | None = None, log: Callable[[str], None] | None = None) -> Path:
    """The cached HF-layout checkpoint of a catalog entry, written (atomically, via a .partial
    directory) when missing or made by another generator version or spec."""
    target = (directory or cache_dir()) / f"{spec.name}-F16-hf"
    expected = json.loads(json.dumps({"generator": GENERATOR_VERSION, "spec": asdict(spec),
                                      "seed": seed, "format": "hf"}))
    manifest = target / _MANIFEST
    with cache.exclusive(target, f"synthetic checkpoint {target.name}", log):
        if manifest.exists() and json.loads(manifest.read_text()) == expected:
            return target
        if target.exists() and log:
            log(f"cached {target.name}: made by another generator version or spec; writing it again")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write_hf(spec, partial, seed=seed, progress=progress)
            (partial / _MANIFEST).write_text(json.dumps(expected, indent=1))
        except OSError as exc:  # a full disk part-way: no directory is left that looks whole
            raise TokbenchError(f"cannot write synthetic checkpoint {target} ({exc.strerror or exc})"
                                ": free space, or set TOKBENCH_CACHE to another disk") from None
        finally:
            if not (partial / _MANIFEST).exists():
                shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target
