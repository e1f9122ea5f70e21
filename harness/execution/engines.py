"""Engine probes (version and build of each backend's engine, from a worker), cached.

A probe starts a worker that imports the engine: seconds for vLLM, paid by every run. Its answer
changes only when the interpreter's packages or the adapter change, so it is cached for the
boot (harness.common.cache), keyed by the interpreter, the mtime of its site-packages (pip
install and uninstall touch it) and the adapter module's mtime.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from typing import Any

from backends.registry import spec_for
from harness.common import cache
from harness.execution.lifecycle import Workers


def _site_packages(python: str) -> str | None:
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sysconfig.get_paths()["purelib"]
    try:
        out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, timeout=30, check=True,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    site = out.stdout.strip()
    return site if os.path.isdir(site) else None  # a wrapper script that is not plain Python


def _mtime(path: str | None) -> float | None:
    with contextlib.suppress(OSError, TypeError):
        return os.stat(path).st_mtime  # type: ignore[arg-type]
    return None


def cache_key(python: str, spec: str) -> str | None:
    """None when the interpreter's packages cannot be located (then nothing is cached)."""
    site = _site_packages(python)
    if site is None:
        return None
    found = importlib.util.find_spec(spec.partition(":")[0])
    return json.dumps([os.path.realpath(python), spec, _mtime(site), _mtime(found and found.origin)])


def probe_engines(workers: Workers, backends: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Engine info per backend name; a missing engine is a one-line error (never cached)."""
    out = {}
    for name in backends:
        spec = spec_for(name)
        key = cache_key(workers.interpreter(name), spec) if cache.enabled() else None
        info = cache.get("engines", key) if key else None
        if info is None:
            info = workers.probe(name, spec)
            if key:
                cache.put("engines", key, info)
        out[name] = info
    return out
