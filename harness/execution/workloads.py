"""Workload names in llama-bench's syntax: pp512, tg128, pp512+tg128, tg128@d4096."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.common.errors import TokbenchError

_SYNTAX = re.compile(r"^(?:pp(?P<pp>\d+))?(?P<plus>\+)?(?:tg(?P<tg>\d+))?(?:@d(?P<depth>\d+))?$")
HELP = "use ppN, tgN, ppN+tgN, optionally with @dN (e.g. pp512, tg128, pp512+tg128, tg128@d4096)"


@dataclass(frozen=True)
class Workload:
    """Prompt tokens prefilled, tokens generated one by one, and the untimed context depth."""

    n_prompt: int = 0
    n_gen: int = 0
    n_depth: int = 0

    @property
    def name(self) -> str:
        parts = [f"pp{self.n_prompt}"] if self.n_prompt else []
        parts += [f"tg{self.n_gen}"] if self.n_gen else []
        depth = f"@d{self.n_depth}" if self.n_depth else ""
        return "+".join(parts) + depth

    @property
    def phases(self) -> tuple[str, ...]:
        """Timed phases in execution order."""
        return tuple(p for p, n in (("pp", self.n_prompt), ("tg", self.n_gen)) if n)

    def tokens(self, phase: str) -> int:
        return {"pp": self.n_prompt, "tg": self.n_gen}[phase]

    @property
    def n_ctx(self) -> int:
        """Context the case needs, as llama-bench sizes it."""
        return self.n_depth + self.n_prompt + self.n_gen

    def __str__(self) -> str:
        return self.name


def parse_workload(text: str) -> Workload:
    """Parse one workload name; raise a one-line error that shows the accepted syntax."""
    m = _SYNTAX.match(text.strip())
    if not m or not (m["pp"] or m["tg"]) or bool(m["pp"] and m["tg"]) != bool(m["plus"]):
        raise TokbenchError(f"unknown workload {text!r}: {HELP}")
    wl = Workload(int(m["pp"] or 0), int(m["tg"] or 0), int(m["depth"] or 0))
    if (m["pp"] and wl.n_prompt == 0) or (m["tg"] and wl.n_gen == 0):
        raise TokbenchError(f"workload {text!r} has a zero token count: counts must be ≥ 1")
    return wl
