"""Roofline arithmetic on hand-computed cases, and the published claims checked against it."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.models.architectures import parameter_counts, tensor_shapes
from harness.models.catalog import lookup
from harness.models.synthetic import synthesize
from reports.comparison import published_roofline, reference
from reports.roofline import (
    bandwidth_ceiling,
    compute_ceiling,
    decode_context,
    kv_bytes_per_value,
    shape_from_catalog,
    shape_from_gguf,
)
from results.reference import load_figures

# tiny-llama at F16 (hidden 128, 2 layers, 4 heads, 2 KV heads, ff 256, vocab 512, tied), by hand:
#   token_embd 128·512·2 B = 131072 (tied: it is the output matrix, read whole)
#   output_norm 128·4 = 512, rope_freqs 16·4 = 64
#   per layer: norms 2·512 + q,o 2·128·128·2 + k,v 2·128·64·2 + gate,up,down 3·128·256·2 = 295936
TINY_LLAMA_WEIGHTS = 131072 + 512 + 64 + 2 * 295936  # 723520
TINY_LLAMA_KV_PER_TOKEN = 2 * 2 * 2 * 32 * 2  # layers · (K, V) · KV heads · head dim · f16 = 512


def test_dense_model_by_hand() -> None:
    shape = shape_from_catalog(lookup("tiny-llama"), "F16")
    assert shape.weight_bytes() == TINY_LLAMA_WEIGHTS == 723_520
    assert shape.kv_bytes(1000) == 1000 * TINY_LLAMA_KV_PER_TOKEN
    assert shape.state_bytes == 0
    step = shape.step_bytes(1000)
    assert step == 723_520 + 512_000
    assert bandwidth_ceiling(10, step) == pytest.approx(10e9 / 1_235_520)  # 8093.7 tok/s
    assert shape.active_params == parameter_counts(lookup("tiny-llama"))[1]


def test_moe_experts_count_k_of_n_and_batches_touch_more() -> None:
    # tiny-lfm2moe: layers 1-3 are MoE with 8 experts (top-2), expert_ff 256, hidden 256, F16:
    # gate, up, down 256·256·8·2 B each = 1,048,576 → 3,145,728 per layer, 9,437,184 in all.
    shape = shape_from_catalog(lookup("tiny-lfm2moe"), "F16")
    assert shape.expert_bytes == 9_437_184
    assert shape.weight_bytes(1) - shape.dense_bytes == 9_437_184 * 2 // 8  # k/n = 2/8
    # 4 sequences touch 1 − (6/8)^4 = 0.68359375 of the experts
    assert shape.weight_bytes(4) - shape.dense_bytes == pytest.approx(6_451_200)
    assert shape.step_bytes(0, 4) == pytest.approx(shape.weight_bytes(4) + 4 * shape.state_bytes)
    # short-conv state: layers 0 and 2, hidden 256 · (L − 1 = 2) F32 values each
    assert shape.state_bytes == 2 * 256 * 2 * 4
    assert len(shape.kv_layers) == 2  # attention layers 1 and 3 only


def test_bf16_bytes_are_two_per_active_weight() -> None:
    spec = lookup("lfm2-24b-a2b")
    shape = shape_from_catalog(spec, "BF16")
    f32_read = sum(t.ne[0] * (t.ne[1] if len(t.ne) > 1 else 1) for t in tensor_shapes(spec)
                   if t.source.name == "F32" and "_exps" not in t.name)  # norms, routers, conv kernels
    assert shape.weight_bytes() == 2 * shape.active_params + 2 * f32_read
    assert shape.active_params == parameter_counts(spec)[1]


def test_gguf_tensors_give_the_catalog_bytes(tmp_path: Path) -> None:
    spec = lookup("tiny-lfm2moe")
    path = synthesize(spec, "Q4_K_M", tmp_path / "m.gguf")
    assert shape_from_gguf(path) == shape_from_catalog(spec, "Q4_K_M")


def test_context_cache_types_and_compute() -> None:
    assert decode_context(n_prompt=0, n_gen=16, n_depth=0) == 8.5  # tokens 1…16 attend 1…16
    assert decode_context(n_prompt=512, n_gen=128, n_depth=4096) == 4096 + 512 + 64.5
    assert kv_bytes_per_value(None) == 2 and kv_bytes_per_value("q8_0") == 34 / 32
    assert compute_ceiling(1.0, 500_000_000) == 1000  # 1 TFLOPS / (2 · 0.5 B params)


def _figure(model: str, quant: str, value: float, device: str = "ryzen-ai-max-plus-395") -> str:
    return (f'[[figure]]\nid = "{model}-{value}"\nmodel = "{model}"\nmodel_as_given = "{model}"\n'
            f'device = "{device}"\ndevice_as_given = "d"\nquant = "{quant}"\nmetric = "decode_tps"\n'
            f'value = {value}\nunit = "tok/s"\nbatch = 1\nconditions = "c"\nunstated = ["context"]\n'
            'sources = ["s"]\nquote = "q"\n')


def test_a_claim_over_the_ceiling_is_flagged(tmp_path: Path) -> None:
    # lfm2-1.2b at Q8_0 reads 1,244,032,000 B/token (predicted; Q8_0 ≈ 8.5 bits): on 256 GB/s the
    # ceiling is 205.8 tok/s. 200 is within, 235 (the article's figure, quant unstated) is not.
    path = tmp_path / "p.toml"
    path.write_text('[source.s]\ntitle = "t"\ndate = "d"\nurl = "u"\n\n'
                    + _figure("lfm2-1.2b", "Q8_0", 200) + _figure("lfm2-1.2b", "Q8_0", 235))
    _, devices = reference()
    table = published_roofline(load_figures(path, devices), devices)
    bytes_q8 = 1_244_032_000  # weights 1,243,868,160 + state 163,840: written out, not recomputed
    assert shape_from_catalog(lookup("lfm2-1.2b"), "Q8_0").step_bytes(0) == bytes_q8
    assert table["ceiling_tps"].iloc[0] == pytest.approx(256e9 / bytes_q8)
    assert 205 < table["ceiling_tps"].iloc[0] < 206.5
    assert list(table["verdict"]) == ["within", "OVER THE CEILING"]
    assert list(table["heaviest_quant_within"]) == ["Q8_0", "Q6_K"]


def test_published_claims_against_their_ceilings() -> None:
    figures, devices = reference()
    table = published_roofline(figures, devices).set_index("figure")
    ryzen = table.loc["lfm2-24b-a2b/ryzen-ai-max-plus-395/decode"]
    # LFM2-24B-A2B at Q4_K_M, one sequence, written out rather than recomputed: the dense tensors
    # 568,719,872 B, 4 of the 64 experts of 13,844,348,928 B (865,271,808 B), and the short-conv
    # state of its 30 conv layers, 2048 · 2 · 4 B each (491,520 B): 1,434,483,200 B per token.
    # 256 GB/s ÷ 1,434,483,200 B = 178.4615 tok/s; the claimed 112 tok/s is 0.62759 of it.
    assert ryzen["bandwidth_gbs"] == 256
    assert ryzen["bytes_per_token"] == 568_719_872 + 13_844_348_928 * 4 / 64 + 30 * 2048 * 2 * 4
    assert ryzen["bytes_per_token"] == 1_434_483_200
    assert ryzen["ceiling_tps"] == pytest.approx(178.461484, rel=1e-7)
    assert ryzen["fraction_high"] == pytest.approx(0.6275864, rel=1e-6)
    assert ryzen["verdict"] == "within"
    npu = table.loc["lfm2.5-1.2b-thinking/amd-ryzen-npu/decode"]
    assert npu["verdict"].startswith("unknown")  # no chip, no bandwidth: never a made-up ceiling
    batched = table.loc["lfm2-24b-a2b/h100-sxm5/aggregate-1024"]
    assert batched["batch"] == 1024 and batched["bound"] == "bandwidth"
    assert "quant not stated: BF16 assumed" in batched["assumptions"]
