"""Synthetic models: catalog facts, size fidelity, valid blocks, cache behaviour, clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, quants

from harness.cli.main import main
from harness.common.errors import TokbenchError
from harness.models import synthetic
from harness.models.architectures import parameter_counts
from harness.models.catalog import CATALOG, lookup, small_variant
from harness.models.synthetic import ensure, predicted_size, synthesize
from tests.conftest import GEMMA

# GGUF file sizes as published (GB = 1e9 bytes; MB = 1e6): the seeds' table and Hugging Face
PUBLISHED_SIZES = [
    ("lfm2-24b-a2b", "Q4_0", 13.5e9), ("lfm2-24b-a2b", "Q4_K_M", 14.4e9),
    ("lfm2-24b-a2b", "Q5_K_M", 16.9e9), ("lfm2-24b-a2b", "Q6_K", 19.6e9),
    ("lfm2-24b-a2b", "Q8_0", 25.4e9), ("lfm2-24b-a2b", "F16", 47.7e9),
    ("lfm2-350m", "Q4_0", 219e6), ("lfm2-350m", "Q4_K_M", 229e6),
    ("lfm2-350m", "Q8_0", 379e6), ("lfm2-350m", "F16", 711e6),
    ("lfm2-1.2b", "Q4_0", 696e6), ("lfm2-1.2b", "Q4_K_M", 731e6),
]


@pytest.mark.parametrize(("name", "quant", "published"), PUBLISHED_SIZES)
def test_predicted_size_matches_published_within_1_percent(name: str, quant: str,
                                                           published: float) -> None:
    predicted = predicted_size(lookup(name), quant)
    assert abs(predicted / published - 1) < 0.01, f"{name} {quant}: {predicted:,} vs {published:,.0f}"


def test_parameter_counts_match_model_cards() -> None:
    for spec in CATALOG.values():
        total, per_token = parameter_counts(spec)
        assert spec.published_params is not None
        if spec.arch == "lfm2":  # dense LFM2: exact counts are published
            assert total == spec.published_params == per_token
        else:
            assert abs(total / spec.published_params - 1) < 0.02, spec.name
        if spec.published_active and spec.arch != "qwen3moe":  # Qwen counts both embeddings
            assert abs(per_token / spec.published_active - 1) < 0.05, spec.name
    assert parameter_counts(lookup("lfm2-24b-a2b"))[1] < parameter_counts(lookup("qwen3-30b-a3b"))[1]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-lfm2", "tiny-lfm2moe"])
@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"])
def test_written_file_has_predicted_size_and_layout(tmp_path: Path, name: str, quant: str) -> None:
    spec = lookup(name)
    path = synthesize(spec, quant, tmp_path / "m.gguf")
    assert path.stat().st_size == predicted_size(spec, quant)
    tensors, types = synthetic.plan(spec, quant)
    read = GGUFReader(path).tensors
    assert [t.name for t in read] == [t.name for t in tensors]
    assert {t.name: t.tensor_type for t in read} == types
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("quant", ["Q4_0", "Q8_0", "Q4_K_M", "Q6_K", "Q5_K_M", "F16", "BF16"])
def test_blocks_decode_to_finite_weights_of_sane_scale(tmp_path: Path, quant: str) -> None:
    path = synthesize(lookup("tiny-lfm2"), quant, tmp_path / "m.gguf")
    seen = set()
    for t in GGUFReader(path).tensors:
        if len(t.shape) < 2 or "weight" not in t.name or "conv.weight" in t.name:
            continue
        values = quants.dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
        assert 0.005 < float(values.std()) < 0.08, (t.name, t.tensor_type.name, values.std())
        seen.add(t.tensor_type.name)
    assert seen


def test_router_weights_are_random_not_zero(tmp_path: Path) -> None:
    path = synthesize(lookup("tiny-lfm2moe"), "Q4_0", tmp_path / "m.gguf")
    routers = [t.data for t in GGUFReader(path).tensors if "ffn_gate_inp" in t.name]
    assert routers and all(float(np.std(r)) > 0.01 for r in routers)
    assert not np.array_equal(routers[0], routers[1])


def test_unknown_entry_and_quant_are_one_line_errors() -> None:
    with pytest.raises(TokbenchError, match="not in the catalog"):
        lookup("lfm3-1b")
    with pytest.raises(TokbenchError, match="not supported"):
        predicted_size(lookup("lfm2-350m"), "Q4_K_XL")
    with pytest.raises(TokbenchError, match="MXFP4_MOE"):
        predicted_size(lookup("gpt-oss-20b"), "Q4_K_M")


def test_free_disk_check_refuses_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(synthetic.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(TokbenchError, match=r"not enough disk .* TOKBENCH_CACHE"):
        synthesize(lookup("tiny-lfm2"), "Q4_0", tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_cache_reuses_identical_file_and_regenerates_corrupt_or_partial(tmp_path: Path) -> None:
    spec, logs = lookup("tiny-lfm2"), []
    path = ensure(spec, "Q4_0", directory=tmp_path, log=logs.append)
    stamp = path.stat().st_mtime_ns
    assert ensure(spec, "q4_0", directory=tmp_path, log=logs.append) == path
    assert path.stat().st_mtime_ns == stamp and logs == []  # reused, not rewritten
    good = path.read_bytes()

    with path.open("r+b") as fh:  # corrupt: flip bytes in the middle of the tensor data
        fh.seek(len(good) // 2)
        fh.write(b"\xff" * 64)
    assert ensure(spec, "Q4_0", directory=tmp_path, log=logs.append).read_bytes() == good
    assert "corrupt" in logs[-1]

    path.write_bytes(good[: len(good) // 3])  # partial: an interrupted copy
    assert ensure(spec, "Q4_0", directory=tmp_path, log=logs.append).read_bytes() == good
    assert "partial" in logs[-1]

    meta = path.with_name(path.name + ".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "generator": 0}))
    ensure(spec, "Q4_0", directory=tmp_path, log=logs.append)
    assert "another generator" in logs[-1]


def test_models_list_json_has_every_entry_with_sizes(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(CATALOG) <= set(rows)
    big = rows["lfm2-24b-a2b"]
    assert big["config"]["n_expert"] == 64 and big["config"]["source"].startswith("https://")
    q4 = big["quants"]["Q4_K_M"]
    assert q4["file_bytes"] == predicted_size(lookup("lfm2-24b-a2b"), "Q4_K_M")
    assert q4["ram_bytes_ctx4096"] > q4["file_bytes"]
    assert set(rows["gpt-oss-20b"]["quants"]) == {"MXFP4_MOE"}


# -- through the real engine ---------------------------------------------------------------
QUANTIZE_SCRIPT = """
import ctypes, json, sys
import llama_cpp
for src, dst, ftype in json.loads(sys.argv[1]):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread = ftype, 2
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p)) != 0:
        sys.exit(f"quantize failed: {dst}")
"""

QUANTIZER_MODELS = {
    "tiny-llama": lookup("tiny-llama"),  # 128-wide rows: exercises llama.cpp's type fallbacks
    "lfm2-16-layers": small_variant("lfm2-350m", hidden=256, ff=512, vocab=512, n_head=4,
                                    n_head_kv=2),
    "lfm2moe-24-layers": small_variant("lfm2-8b-a1b", hidden=256, ff=512, vocab=512, n_head=4,
                                       n_head_kv=2, expert_ff=256),
    "tiny-lfm2moe-8-experts": lookup("tiny-lfm2moe"),  # llama.cpp's 8-expert special case
    "qwen3moe-small": small_variant("qwen3-30b-a3b", hidden=256, n_layer=8, n_head=4, n_head_kv=1,
                                    head_dim=64, vocab=512, n_expert=16, expert_ff=256),
}
QUANTIZER_QUANTS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K"]


@pytest.mark.engine
def test_per_tensor_types_match_llama_cpp_quantizer(tmp_path: Path) -> None:
    """Quantize an F16 synthetic model with llama.cpp itself; the directly written file of
    the same quant must have the same tensors, in the same order, with the same types."""
    from harness.models.quant_mix import file_type

    jobs, expected = [], {}
    for label, spec in QUANTIZER_MODELS.items():
        src = synthesize(spec, "F16", tmp_path / f"{label}-F16.gguf")
        for quant in QUANTIZER_QUANTS:
            dst = tmp_path / f"{label}-{quant}-llama.gguf"
            jobs.append((str(src), str(dst), int(file_type(quant)[0])))
            expected[dst] = synthesize(spec, quant, tmp_path / f"{label}-{quant}-synth.gguf")
    subprocess.run([sys.executable, "-c", QUANTIZE_SCRIPT, json.dumps(jobs)], check=True,
                   capture_output=True)
    for real, ours in expected.items():
        a, b = GGUFReader(real), GGUFReader(ours)
        table = lambda r: [(t.name, tuple(t.shape), t.tensor_type.name) for t in r.tensors]  # noqa: E731
        assert table(a) == table(b), real.name
        data = lambda r: sum(int(t.n_bytes) for t in r.tensors)  # noqa: E731
        assert data(a) == data(b)


LOGITS_SCRIPT = """
import sys, numpy as np, llama_cpp
llama_cpp.llama_backend_init()
m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params())
cp = llama_cpp.llama_context_default_params(); cp.n_ctx = 256
ctx = llama_cpp.llama_init_from_model(m, cp)
n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(m))
toks = (llama_cpp.llama_token * 16)(*range(1, 17))
assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(toks, 16)) == 0
logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
print(bool(np.isfinite(logits).all()), float(logits.std()))
"""


@pytest.mark.engine
@pytest.mark.parametrize(("name", "quant"), [
    ("tiny-lfm2", "Q4_K_M"), ("tiny-lfm2moe", "Q4_0"), ("tiny-llama", "Q6_K"),
])
def test_synth_source_runs_with_finite_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              name: str, quant: str) -> None:
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "r.db"
    rc = main(["--store", str(store), "run", "-m", f"synth:{name}@{quant}", "-w", "pp32,tg8",
               "-r", "2", "--no-bandwidth"])
    assert rc == 0
    from results import load

    cases = load("last", store=store)
    assert (cases["tps_mean"] > 0).all() and len(cases) == 2
    path = tmp_path / "cache" / "models" / f"{name}-{quant}.gguf"
    out = subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "True" and float(out[1]) > 0


@pytest.mark.engine
def test_gpt_oss_and_qwen3moe_layouts_load(tmp_path: Path, store_path: Path) -> None:
    models = [
        synthesize(small_variant("gpt-oss-20b", hidden=256, n_layer=4, n_head=4, n_head_kv=2,
                                 head_dim=64, vocab=512, n_expert=8, n_expert_used=2,
                                 expert_ff=256, ff=256, context=4096), "MXFP4_MOE",
                   tmp_path / "gpt-oss.gguf"),
        synthesize(QUANTIZER_MODELS["qwen3moe-small"], "Q4_K_M", tmp_path / "qwen3moe.gguf"),
    ]
    rc = main(["--store", str(store_path), "run", "-m", ",".join(map(str, models)), "-w", "tg8",
               "-r", "2", "--no-bandwidth"])
    assert rc == 0


@pytest.mark.engine
def test_clone_of_gemma_has_identical_header_and_runs(tmp_path: Path, gemma_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    twin = tmp_path / "gemma-twin.gguf"
    assert main(["models", "clone", GEMMA, "-o", str(twin)]) == 0
    assert twin.stat().st_size == gemma_path.stat().st_size
    offset = GGUFReader(gemma_path).data_offset
    with gemma_path.open("rb") as a, twin.open("rb") as b:
        assert a.read(offset) == b.read(offset)  # metadata, names, types, shapes, offsets
        a.seek(offset + 10_000_000)
        b.seek(offset + 10_000_000)
        assert a.read(1 << 20) != b.read(1 << 20)  # the weights are not the original's
    store = tmp_path / "r.db"
    assert main(["--store", str(store), "run", "-m", str(twin), "-w", "pp16,tg4", "-r", "1",
                 "--no-bandwidth"]) == 0
    os.remove(twin)


def test_models_synth_cli_writes_gguf(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    assert main(["models", "synth", "tiny-lfm2", "-q", "Q5_K_M", "-o", str(out)]) == 0
    assert out.stat().st_size == predicted_size(lookup("tiny-lfm2"), "Q5_K_M")


@pytest.mark.parametrize("name", ["tiny-lfm2", "tiny-llama"])
def test_hf_checkpoint_has_config_weights_and_tokenizer(tmp_path: Path, name: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Structure checks here; loading in transformers / vLLM / MLX is tested with those engines."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from harness.models import hf_checkpoint

    monkeypatch.setattr(hf_checkpoint, "SHARD_BYTES", 400_000)  # force several shards
    out = tmp_path / "hf"
    assert main(["models", "synth", name, "--format", "hf", "-o", str(out)]) == 0
    spec = lookup(name)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == spec.hidden and cfg["num_hidden_layers"] == spec.n_layer
    if spec.arch == "lfm2":
        assert {"conv_dim", "conv_dim_out", "block_dim", "block_ff_dim", "num_heads"} <= set(cfg)
        assert cfg["layer_types"].count("full_attention") == len(spec.attn_layers or ())
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    weights = {}
    for file in set(index.values()):
        weights.update(load_file(str(out / file)))
    assert set(weights) == set(index)
    total, _ = parameter_counts(spec)
    rope = spec.dim_head // 2 if spec.arch == "llama" else 0  # derived by HF from the config
    assert sum(w.size for w in weights.values()) == total - rope
    assert weights["model.embed_tokens.weight"].shape == (spec.vocab, spec.hidden)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == spec.vocab
    ids = tok.encode("hello world").ids
    assert ids and tok.decode(ids) == "hello world"
