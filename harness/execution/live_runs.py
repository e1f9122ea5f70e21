"""Runs live on this host, so a run that shared the machine with another says so: two runs on
one CPU measure each other. Each run leaves a small file in a host-wide folder while it runs
(its pid and command); a run checks the folder when it starts and after every case, and records
every other live run it saw on its own run record (`contended`), which `show` prints. A run that
sees another also leaves it a note, so a short run that starts and ends inside one long case of
the other is still seen by both. A file whose process is gone (a killed run) is removed."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

FOLDER = Path(tempfile.gettempdir()) / "tokbench-live"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's run: alive
        return True
    return True


class LiveRun:
    """This run's entry in the host-wide folder, and the other runs it has seen there."""

    def __init__(self, run_id: str, command: str, store_path: str) -> None:
        self.run_id = run_id
        self.path = FOLDER / f"{run_id}.json"
        self.seen: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError):
            FOLDER.mkdir(mode=0o1777, exist_ok=True)
            FOLDER.chmod(0o1777)  # every user's runs meet here
        self.entry = json.dumps({"run_id": run_id, "pid": os.getpid(), "command": command,
                                 "store": store_path, "started_at": time.time()})
        with contextlib.suppress(OSError):
            self.path.write_text(self.entry)

    def check(self) -> list[dict[str, Any]]:
        """The other live runs not seen before (each is reported once)."""
        new = []
        for entry in [*FOLDER.glob("*.json"), *FOLDER.glob(f"{self.run_id}.seen-by.*")]:
            if entry == self.path:
                continue
            try:
                other = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue  # being written, or removed meanwhile
            if other.get("run_id") in self.seen or other.get("run_id") == self.run_id:
                continue
            if entry.suffix == ".json" and not _alive(int(other.get("pid", 0))):
                with contextlib.suppress(OSError):
                    entry.unlink()
                continue
            self.seen[str(other.get("run_id"))] = other
            new.append(other)
            with contextlib.suppress(OSError):  # the other run may finish its case after we end
                (FOLDER / f"{other.get('run_id')}.seen-by.{self.run_id}").write_text(self.entry)
        return new

    def close(self) -> None:
        for path in [self.path, *FOLDER.glob(f"{self.run_id}.seen-by.*")]:
            with contextlib.suppress(OSError):
                path.unlink()


def describe(other: dict[str, Any]) -> str:
    return (f"another tokbench run was live on this host (run {other.get('run_id')}, pid "
            f"{other.get('pid')}: {other.get('command')}): both measured a shared CPU, so this "
            "run's timings are contended")
