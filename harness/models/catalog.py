"""The synthetic-model catalog: exact architectures of real models, from their public configs.

Decode and prefill speed and memory depend on the architecture, tensor shapes and quant
types, not on weight values. Each entry records the shapes a model's published config.json
gives (and where the config is silent, what bounds it), so `synth:NAME@QUANT` benchmarks
like the real file. Shapes are never invented: every entry names its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.common.errors import TokbenchError


@dataclass(frozen=True)
class ModelSpec:
    """One architecture. Field names follow Hugging Face config.json where one exists."""

    name: str
    arch: str  # GGUF general.architecture: lfm2, lfm2moe, llama, qwen3moe, gpt-oss
    hidden: int
    n_layer: int
    n_head: int
    n_head_kv: int
    ff: int  # dense FFN width, effective (after LFM2's auto-adjust)
    vocab: int
    context: int
    rope_theta: float
    norm_eps: float
    tied: bool
    source: str
    head_dim: int | None = None  # None: hidden // n_head
    attn_layers: tuple[int, ...] | None = None  # LFM2 only: the rest are short-conv layers
    conv_l_cache: int = 3
    n_expert: int = 0
    n_expert_used: int = 0
    expert_ff: int = 0
    dense_lead: int = 0  # leading layers with a dense FFN in a MoE model
    sliding_window: int = 0  # gpt-oss: every other layer attends to a window
    tokenizer_pre: str = "default"
    published_params: int | None = None  # as the model card states, for the fidelity check
    published_active: int | None = None
    notes: str = ""
    quants: tuple[str, ...] = field(default=())  # empty: every standard quant

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.n_head

    def is_attention(self, layer: int) -> bool:
        return self.attn_layers is None or layer in self.attn_layers

    def is_moe(self, layer: int) -> bool:
        return self.n_expert > 0 and layer >= self.dense_lead


_LFM2 = dict(vocab=65536, context=128000, rope_theta=1e6, norm_eps=1e-5, tied=True,
             conv_l_cache=3, tokenizer_pre="lfm2")
_LFM2_16 = (2, 5, 8, 10, 12, 14)

CATALOG: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("lfm2-350m", "lfm2", hidden=1024, n_layer=16, n_head=16, n_head_kv=8, ff=4608,
              attn_layers=_LFM2_16, published_params=354_483_968,
              source="https://huggingface.co/LiquidAI/LFM2-350M/blob/main/config.json", **_LFM2),
    ModelSpec("lfm2-700m", "lfm2", hidden=1536, n_layer=16, n_head=24, n_head_kv=8, ff=6912,
              attn_layers=_LFM2_16, published_params=742_489_344,
              source="https://huggingface.co/LiquidAI/LFM2-700M/blob/main/config.json", **_LFM2),
    ModelSpec("lfm2-1.2b", "lfm2", hidden=2048, n_layer=16, n_head=32, n_head_kv=8, ff=8192,
              attn_layers=_LFM2_16, published_params=1_170_340_608,
              notes="same shapes as LFM2.5-1.2B (-Instruct, -Thinking)",
              source="https://huggingface.co/LiquidAI/LFM2-1.2B/blob/main/config.json", **_LFM2),
    ModelSpec("lfm2-2.6b", "lfm2", hidden=2048, n_layer=30, n_head=32, n_head_kv=8, ff=10752,
              attn_layers=(2, 5, 9, 13, 17, 21, 24, 27), published_params=2_569_272_320,
              source="https://huggingface.co/LiquidAI/LFM2-2.6B/blob/main/config.json", **_LFM2),
    ModelSpec("lfm2-8b-a1b", "lfm2moe", hidden=2048, n_layer=24, n_head=32, n_head_kv=8, ff=7168,
              attn_layers=(2, 6, 10, 14, 18, 21), n_expert=32, n_expert_used=4, expert_ff=1792,
              dense_lead=2, published_params=8_340_000_000, published_active=1_500_000_000,
              source="https://huggingface.co/LiquidAI/LFM2-8B-A1B/blob/main/config.json", **_LFM2),
    ModelSpec("lfm2-24b-a2b", "lfm2moe", hidden=2048, n_layer=40, n_head=32, n_head_kv=8, ff=11776,
              attn_layers=tuple(range(2, 40, 4)), n_expert=64, n_expert_used=4, expert_ff=1536,
              dense_lead=2, published_params=23_800_000_000, published_active=2_300_000_000,
              notes="dense FFN width not published; 11776 is bounded by the 23.8B total",
              source="https://huggingface.co/LiquidAI/LFM2-24B-A2B/blob/main/config.json", **_LFM2),
    ModelSpec("qwen3-30b-a3b", "qwen3moe", hidden=2048, n_layer=48, n_head=32, n_head_kv=4,
              head_dim=128, ff=6144, vocab=151936, context=40960, rope_theta=1e6, norm_eps=1e-6,
              tied=False, n_expert=128, n_expert_used=8, expert_ff=768, tokenizer_pre="qwen2",
              published_params=30_500_000_000, published_active=3_300_000_000,
              source="https://huggingface.co/Qwen/Qwen3-30B-A3B/blob/main/config.json"),
    ModelSpec("gpt-oss-20b", "gpt-oss", hidden=2880, n_layer=24, n_head=64, n_head_kv=8,
              head_dim=64, ff=2880, vocab=201088, context=131072, rope_theta=150000.0,
              norm_eps=1e-5, tied=False, n_expert=32, n_expert_used=4, expert_ff=2880,
              sliding_window=128, tokenizer_pre="gpt-4o",
              published_params=21_000_000_000, published_active=3_600_000_000,
              notes="experts ship as MXFP4; llama.cpp keeps them so (MXFP4_MOE)",
              quants=("MXFP4_MOE",),
              source="https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json"),
    ModelSpec("llama-3.2-3b", "llama", hidden=3072, n_layer=28, n_head=24, n_head_kv=8,
              ff=8192, vocab=128256, context=131072, rope_theta=500000.0, norm_eps=1e-5,
              tied=True, tokenizer_pre="llama-bpe", published_params=3_210_000_000,
              source="https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json"),
]}


def small_variant(base: str, **changes: object) -> ModelSpec:
    """A scaled-down entry (tests, smoke runs): the same architecture with smaller shapes."""
    from dataclasses import replace

    spec = CATALOG[base]
    return replace(spec, name=str(changes.pop("name", f"{base}-small")), published_params=None,
                   published_active=None, **changes)  # type: ignore[arg-type]


# Scaled-down variants for tests and smoke runs: the real architectures, tiny shapes.
TINY: dict[str, ModelSpec] = {s.name: s for s in [
    small_variant("llama-3.2-3b", name="tiny-llama", hidden=128, n_layer=2, n_head=4,
                  n_head_kv=2, ff=256, vocab=512, context=2048),
    small_variant("lfm2-350m", name="tiny-lfm2", hidden=256, n_layer=4, n_head=4, n_head_kv=2,
                  ff=512, vocab=512, context=4096, attn_layers=(1, 3)),
    small_variant("lfm2-8b-a1b", name="tiny-lfm2moe", hidden=256, n_layer=4, n_head=4,
                  n_head_kv=2, ff=512, vocab=512, context=4096, attn_layers=(1, 3), n_expert=8,
                  n_expert_used=2, expert_ff=256, dense_lead=1),
]}


def lookup(name: str) -> ModelSpec:
    key = name.lower()
    if key in TINY:
        return TINY[key]
    if key not in CATALOG:
        raise TokbenchError(
            f"synthetic model {name!r} is not in the catalog; `tokbench models list` shows "
            f"the entries ({', '.join(CATALOG)})"
        )
    return CATALOG[key]
