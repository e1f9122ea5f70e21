"""tokbench's own run document (`tokbench export --format json`): imported as it was exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.interop.documents import Source
from harness.interop.formats import Format
from results.export import FORMAT, read_document


def _sniff(path: Path, head: bytes) -> bool:
    return head.lstrip()[:1] == b"{" and f'"format": "{FORMAT}"'.encode() in head


def _read(path: Path, source: Source) -> list[dict[str, Any]]:
    return [read_document(path)]


FORMATS = [Format("tokbench JSON", "tokbench", _sniff, _read)]
