"""A small on-disk cache for facts that do not change while a machine stays up: engine builds,
the CPU's identification, memory bandwidth. One JSON file per kind under $TOKBENCH_CACHE
(default ~/.cache/tokbench, beside the synthetic models), dropped when the machine reboots.
TOKBENCH_NO_CACHE=1 ignores it; a cache that cannot be written costs the work, nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.common.errors import TokbenchError


def root() -> Path:
    return Path(os.environ.get("TOKBENCH_CACHE") or Path.home() / ".cache" / "tokbench")


def enabled() -> bool:
    return os.environ.get("TOKBENCH_NO_CACHE", "") in ("", "0")


def boot_id() -> str:
    """This boot's id (Linux), so a hardware or driver change behind a reboot is never served stale."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _entries(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc.get("entries", {}) if isinstance(doc, dict) and doc.get("boot") == boot_id() else {}


def get(kind: str, key: str) -> Any | None:
    """The cached value of `key`, or None."""
    return _entries(root() / f"{kind}.json").get(key) if enabled() else None


def put(kind: str, key: str, value: Any) -> None:
    if not enabled():
        return
    path = root() / f"{kind}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            entries = {**_entries(path), key: value}
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"boot": boot_id(), "entries": entries}))
            tmp.replace(path)
    except (OSError, TimeoutError):
        return


def lock_timeout_s(default: float) -> float:
    """How long to wait for a lock another process holds: $TOKBENCH_LOCK_TIMEOUT, else `default`."""
    text = os.environ.get("TOKBENCH_LOCK_TIMEOUT", "")
    try:
        return float(text) if text else default
    except ValueError:
        raise TokbenchError(f"TOKBENCH_LOCK_TIMEOUT={text!r} is not a number of seconds") from None


@contextlib.contextmanager
def exclusive(path: Path, what: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `path`.lock while checking or writing a cached file, so two runs never write one
    file; the second waits ($TOKBENCH_LOCK_TIMEOUT seconds, default an hour) and then finds it
    written. The kernel drops the lock when its holder dies, so a crash leaves nothing stale."""
    timeout = lock_timeout_s(3600.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log:
            log(f"waiting for another process writing {what}")
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise TokbenchError(f"{what} is being written by another process (lock {path}.lock "
                                f"held over {timeout:g} s): wait for it to finish, or raise "
                                "TOKBENCH_LOCK_TIMEOUT") from None
    try:
        yield
    finally:
        lock.release()
