"""Find backends by name: the `tokbench.backends` entry-point group (built-ins are declared there
too, in pyproject.toml), or module:Class for an adapter that is not installed as a package.

Resolving a name imports the adapter module, never its engine.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from backends.base import Backend, BackendError

ALIASES = {"llama_cpp": "llama.cpp", "llamacpp": "llama.cpp", "llama-cpp": "llama.cpp",
           "mlx-lm": "mlx", "mlx_lm": "mlx", "hf": "transformers"}


@lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Backend name → "module:Class" for every backend installed in this environment (scanning
    the installed distributions takes a tenth of a second: once per process)."""
    from importlib.metadata import entry_points  # not needed by workers, which get module:Class

    return {ep.name: ep.value for ep in entry_points(group="tokbench.backends")}


def spec_for(name: str) -> str:
    """The import spec of a backend name; raise a one-line error listing the known names."""
    name = ALIASES.get(name, name)
    known = available()
    if name in known:
        return known[name]
    if ":" in name:
        return name
    raise BackendError(
        f"unknown backend {name!r}: choose one of {', '.join(sorted(known)) or '(none installed)'} "
        "(or give module:Class of a third-party adapter)"
    )


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def load_class(spec: str) -> type[Backend]:
    """Import the adapter class named by `spec` (module:Class)."""
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend adapter {spec!r} cannot be imported: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend adapter {spec!r} is not a backends.base.Backend subclass")
    return cls
