"""The start-up cache: engine probes and hardware facts kept for the boot, invalidated by a change."""

from __future__ import annotations

import json
import os
import venv
from pathlib import Path
from typing import Any

import pytest

from harness.common import cache
from harness.execution.engines import probe_engines
from harness.execution.lifecycle import Workers
from harness.hardware import profile as hardware


class _CountingWorkers(Workers):
    """Workers whose probe answers without an engine, counting the probes it is asked for."""

    def __init__(self, python: dict[str, str]) -> None:
        super().__init__(python)
        self.probes = 0

    def probe(self, backend: str, spec: str) -> dict[str, Any]:
        self.probes += 1
        return {"engine": backend, "engine_version": str(self.probes)}


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TOKBENCH_NO_CACHE", raising=False)
    return tmp_path / "cache"


def test_engine_probe_is_cached_until_the_interpreters_packages_change(
        tmp_path: Path, cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "engine-venv"
    venv.create(env, with_pip=False)
    workers = _CountingWorkers({"llama.cpp": str(env / "bin" / "python")})
    try:
        first = probe_engines(workers, ["llama.cpp"])
        assert probe_engines(workers, ["llama.cpp"]) == first and workers.probes == 1
        (site,) = env.glob("lib/python*/site-packages")
        os.utime(site, (1, 1))  # what pip install / uninstall does to it
        assert probe_engines(workers, ["llama.cpp"])["llama.cpp"]["engine_version"] == "2"
        monkeypatch.setenv("TOKBENCH_NO_CACHE", "1")
        probe_engines(workers, ["llama.cpp"])
        assert workers.probes == 3
    finally:
        workers.close()


def test_a_cache_from_another_boot_is_ignored(cache_root: Path) -> None:
    cache.put("hardware", "k", {"v": 1})
    assert cache.get("hardware", "k") == {"v": 1}
    path = cache_root / "hardware.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "boot": "another boot"}))
    assert cache.get("hardware", "k") is None


def test_profile_measures_bandwidth_once_per_boot(cache_root: Path) -> None:
    first = hardware.collect(bandwidth=True)["memory_bandwidth"]
    second = hardware.collect(bandwidth=True)["memory_bandwidth"]
    assert first["copy_gbps"] > 0 and "cached" not in first
    assert second["cached"] is True and second["measured_at"] == first["measured_at"]
    assert second["copy_gbps"] == first["copy_gbps"]
