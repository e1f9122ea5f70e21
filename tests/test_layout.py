"""The layout: no import cycles, a worker that needs only backends/, and a README that lists the tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grimp

from harness.common.toml_files import read_toml

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "backends", "results", "reports")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    assert _cycles(graph) == []


def test_a_worker_imports_only_backends(tmp_path: Path) -> None:
    """Under an interpreter without tokbench's dependencies (-S: no site-packages), with only
    backends/ on its path, the worker and every adapter module import (engines load lazily)."""
    (tmp_path / "backends").symlink_to(ROOT / "backends")
    adapters = read_toml(ROOT / "pyproject.toml", "pyproject")["project"]["entry-points"]["tokbench.backends"]
    modules = ["backends.worker", *(spec.partition(":")[0] for spec in adapters.values())]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-S", "-c", f"import {', '.join(modules)}; import sys; "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                          f"{PACKAGES!r}))"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "harness" not in out.stdout and "results" not in out.stdout


def test_readme_layout_lists_every_folder() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+)/` \|", section, flags=re.M))
    tree = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name in (*PACKAGES, "tests", "benchmarks",
                                                                         "scripts")}
    tree |= {f"harness/{p.name}" for p in (ROOT / "harness").iterdir() if (p / "__init__.py").exists()}
    assert listed == tree
