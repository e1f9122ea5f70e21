"""Writing an output file the way every command should: its folder created, the file replaced
whole (written beside it, then renamed, so a full disk never leaves half a file that a later
run would trust), and a failure as one line naming the path."""

from __future__ import annotations

import os
from pathlib import Path

from harness.common.errors import TokbenchError


def write_output(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path`, creating its folder; a one-line TokbenchError when it cannot."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TokbenchError(f"cannot write {path}: {exc.strerror or exc}; free space, fix the "
                            "permissions or choose another -o") from None
    return path
