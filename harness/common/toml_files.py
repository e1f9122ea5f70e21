"""Reading the project's TOML files (suites, gate thresholds) with one-line errors.

Every key is checked against what the file may hold, and a typo is named with a suggestion,
so a misspelled setting never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_toml(path: Path, kind: str, missing_hint: str = "") -> dict[str, Any]:
    """The parsed file; `kind` names it in errors ("suite file", "gate file")."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TokbenchError(f"{kind} {path} does not exist{missing_hint}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TokbenchError(f"{kind} {path} is not valid TOML: {exc}") from None


def check_keys(keys: Iterable[str], allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise TokbenchError(
                f"{where}: unknown key {key!r}{did_you_mean}; allowed: {', '.join(sorted(allowed))}"
            )
