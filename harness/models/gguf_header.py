"""A fast GGUF header reader: metadata and tensor infos, skipping the vocabulary's strings.

gguf-py's GGUFReader builds numpy views of every field, which takes ~10-15 s for a 262k-token
vocabulary; model checks and reports only need scalar keys, small int arrays (per-layer head
counts) and the tensor table, so this walks the header with struct and keeps string arrays as
their length.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGMLQuantizationType

from harness.common.errors import TokbenchError
from harness.models.quant_mix import tensor_bytes

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRING, _ARRAY = 8, 9
_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    qtype: GGMLQuantizationType
    offset: int = 0  # of its data, from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.ne:
            n *= d
        return n

    @property
    def n_bytes(self) -> int:
        return tensor_bytes(self.ne, self.qtype)


@dataclass(frozen=True)
class Header:
    fields: dict[str, Any]  # string arrays are kept as their length (an int)
    tensors: tuple[TensorInfo, ...]
    data_offset: int  # where tensor data starts: the header is file[:data_offset]


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("<Q")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item == _STRING:
                for _ in range(count):
                    self.pos += struct.unpack_from("<Q", self.buf, self.pos)[0] + 8
                return count
            if item in _SCALARS:
                size = struct.calcsize(_SCALARS[item])
                out = list(struct.unpack_from(f"<{count}{_SCALARS[item][1]}", self.buf, self.pos))
                self.pos += size * count
                return out
            return [self.value(item) for _ in range(count)]
        return self.take(_SCALARS[vtype])


def read_header(path: str | Path) -> Header:
    """The header of a GGUF file, or a one-line error naming the file."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != b"GGUF":
                raise TokbenchError(f"{path} is not a GGUF file")
            cur = _Cursor(buf)
            cur.pos = 4
            cur.take("<I")  # version
            n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
            if max(n_tensors, n_kv) > len(buf):  # each takes more than a byte
                raise TokbenchError(f"{path} is not a readable GGUF file: its header claims "
                                    f"{n_tensors} tensors and {n_kv} fields, more than its "
                                    f"{len(buf)} bytes could hold (truncated or corrupt)")
            fields = {}
            for _ in range(n_kv):
                key = cur.string()
                fields[key] = cur.value(cur.take("<I"))
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                ne = tuple(cur.take("<Q") for _ in range(cur.take("<I")))
                qtype = GGMLQuantizationType(cur.take("<I"))
                tensors.append(TensorInfo(name, ne, qtype, cur.take("<Q")))
            align = int(fields.get("general.alignment", _ALIGNMENT))
            if align < 1 or align & (align - 1):
                raise TokbenchError(f"{path} is not a readable GGUF file: general.alignment is "
                                    f"{align}, not a power of two (corrupt header)")
            offset = (cur.pos + align - 1) // align * align
    except (OSError, ValueError, struct.error, KeyError) as exc:
        raise TokbenchError(f"{path} is not a readable GGUF file ({exc})") from None
    return Header(fields, tuple(tensors), offset)
