"""Output files and corrupt inputs: a folder that does not exist yet, a full disk, a GGUF header
that lies. Each is one line naming the path, and nothing half-written is left behind."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli.main import main
from harness.common.errors import TokbenchError
from harness.common.files import write_output
from harness.models.gguf_header import read_header
from tests.report_runs import decode_case, write_run


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "results.db"
    write_run(path, "run-1", [decode_case(100.0), decode_case(50.0, n_depth=256)])
    return path


def report(store: Path, *argv: str) -> int:
    return main(["--store", str(store), "report", *argv])


@pytest.mark.parametrize("fmt, name", [("md", "r.md"), ("html", "r.html"), ("csv", "tables")])
def test_report_to_a_missing_folder_creates_it(store: Path, tmp_path: Path, fmt: str, name: str) -> None:
    out = tmp_path / "new" / "deeper" / name
    assert report(store, "last", "--format", fmt, "-o", str(out)) == 0
    assert out.exists()


def test_export_and_compare_to_a_missing_folder(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "run.json"
    assert main(["--store", str(store), "export", "last", "--format", "json", "-o", str(out)]) == 0
    assert out.read_text().startswith("{")


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: the write fails with EFBIG part-way."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from harness.common.errors import TokbenchError\n"
        "from harness.common.files import write_output\n"
        "try:\n"
        f"    write_output({str(tmp_path / 'out' / 'big.md')!r}, 'x' * 100_000)\n"
        "except TokbenchError as exc:\n"
        "    print(exc); sys.exit(2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert done.stdout.startswith(f"cannot write {tmp_path / 'out' / 'big.md'}: File too large")
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its partial


def test_write_output_replaces_whole(tmp_path: Path) -> None:
    target = write_output(tmp_path / "a" / "f.txt", "old")
    write_output(target, b"new")
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["f.txt"]


def _gguf(path: Path, n_tensors: int, fields: dict[str, int]) -> Path:
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    body = b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(fields))
    for key, value in fields.items():
        body += string(key) + struct.pack("<II", 4, value)  # uint32
    path.write_bytes(body + b"\0" * 64)
    return path


def test_a_gguf_with_alignment_zero_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokbenchError, match=r"general\.alignment is 0, not a power of two"):
        read_header(_gguf(tmp_path / "a.gguf", 0, {"general.alignment": 0}))


def test_a_gguf_claiming_absurd_counts_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokbenchError, match=r"claims 1000000000000 tensors"):
        read_header(_gguf(tmp_path / "b.gguf", 10**12, {}))
