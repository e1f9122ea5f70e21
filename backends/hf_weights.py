"""Parameter count and weight bytes of a Hugging Face checkpoint, read from the safetensors
headers (8-byte length + JSON of dtype, shape and offsets per tensor): exact, engine-independent
and without loading a weight. Standard library only (runs in engine workers).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path


def checkpoint_size(directory: str | Path) -> tuple[int, int]:
    """(parameters, bytes) over every *.safetensors file of the directory."""
    n_params = n_bytes = 0
    for file in sorted(Path(directory).glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n_params += math.prod(info["shape"])
            start, end = info["data_offsets"]
            n_bytes += end - start
    return n_params, n_bytes
