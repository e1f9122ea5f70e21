from pathlib import Path

import pytest

from harness.errors import TokbenchError
from harness.models import resolve


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
