"""Workload names: llama-bench's token workloads (pp512, tg128, pp512+tg128, tg128@d4096) and
serving loads against an HTTP server (c16:in512:out128, r8:in512:out128).

A serving workload is colon-separated fields, the load first:

- `cN`: closed loop, N requests in flight (a new one starts as one ends);
- `rR`: open loop at R requests/s, Poisson arrivals from the case's seed; `const` spaces them
  evenly, `burstX` draws gamma gaps of shape X (X < 1 burstier than Poisson, as `vllm bench
  serve --burstiness`), `maxN` caps the requests in flight;
- `inN` / `inA-B`, `outN` / `outA-B`: prompt and output tokens, fixed or uniform in [A, B];
- `prefixN`: the first N prompt tokens are shared by every request (else each prompt starts
  unique, so no prefix cache can serve it);
- `nN` requests, or `durS`/`durMm` (seconds, minutes) of load: whichever ends first; without
  either, the run's `--requests` (default 200);
- `warmN`: requests sent before timing and not counted (default one wave, at most 16);
- `chat`: /v1/chat/completions instead of /v1/completions;
- `turnsN`: conversations of N turns: each turn's prompt carries the whole history (earlier
  prompts and the server's replies) plus a new inN-token message, sent when the previous reply
  ends; a closed loop's streams and an open loop's arrivals are conversations.

A searched load has no cN/rR: the load is found by measuring.

- `sweep:in128:out32` doubles concurrency from 1 (:maxN caps it, default 1024) until throughput
  saturates; each step is an ordinary serving case;
- `capacity:in512:out128` finds the highest concurrency (or, with :rate, request rate) whose pNN
  (:p99 by default) TTFT/TPOT/E2EL stay within the run's --slo, with an order-statistic bound
  (:confNN, default 95) and :repN repeats (default 2) on each side of the boundary.

Both take the serving fields above; nN is the requests per step (default: the run's --requests,
at least 4 per stream and, for capacity, enough to bound the percentile).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from harness.common.errors import TokbenchError

_SYNTAX = re.compile(r"^(?:pp(?P<pp>\d+))?(?P<plus>\+)?(?:tg(?P<tg>\d+))?(?:@d(?P<depth>\d+))?$")
HELP = ("use ppN, tgN, ppN+tgN, optionally with @dN (e.g. pp512, tg128, pp512+tg128, tg128@d4096), "
        "or a serving load such as c16:in512:out128 or r8:in512:out128")
SERVING_HELP = ("a serving workload is cN (concurrency) or rR (requests/s), then :inN and :outN "
                "(or ranges inA-B), optionally :nN, :durNs, :warmN, :prefixN, :const, :burstX, "
                ":maxN, :chat, :turnsN (e.g. c16:in512:out128, r8:in512:out128:n200), or a "
                "search: sweep:in128:out32 or capacity:in512:out128 (:maxN, :nN, :pNN, :rate)")
DEFAULT_REQUESTS = 200
MAX_DEFAULT_WARMUP = 16


@dataclass(frozen=True)
class Workload:
    """Prompt tokens prefilled, tokens generated one by one, and the untimed context depth."""

    n_prompt: int = 0
    n_gen: int = 0
    n_depth: int = 0
    serving = False
    search = False

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

    def spec(self) -> dict[str, Any]:
        """What the worker needs to run it."""
        return {"n_prompt": self.n_prompt, "n_gen": self.n_gen, "n_depth": self.n_depth}

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ServingLoad:
    """A load of streamed requests against a server: how requests arrive, how long they are,
    and when the case ends."""

    input_len: tuple[int, int]
    output_len: tuple[int, int]
    concurrency: int | None = None  # closed loop
    rate: float | None = None  # open loop, requests/s
    arrival: str = "poisson"  # poisson | gamma | constant (open loop)
    burstiness: float = 1.0  # gamma shape; 1 is Poisson
    max_concurrency: int | None = None  # cap on requests in flight (open loop)
    prefix_len: int = 0
    requests: int | None = None
    duration_s: float | None = None
    warmup: int | None = None
    endpoint: str = "completions"  # completions | chat
    turns: int = 1  # turns per conversation (each carries the history)
    serving = True
    search = False

    @property
    def name(self) -> str:
        def span(lo_hi: tuple[int, int]) -> str:
            return str(lo_hi[0]) if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]}-{lo_hi[1]}"

        parts = [f"c{self.concurrency}" if self.concurrency else f"r{self.rate:g}"]
        if self.arrival == "constant":
            parts.append("const")
        elif self.arrival == "gamma":
            parts.append(f"burst{self.burstiness:g}")
        if self.max_concurrency:
            parts.append(f"max{self.max_concurrency}")
        parts += [f"in{span(self.input_len)}", f"out{span(self.output_len)}"]
        if self.prefix_len:
            parts.append(f"prefix{self.prefix_len}")
        if self.requests is not None:
            parts.append(f"n{self.requests}")
        if self.duration_s is not None:
            parts.append(f"dur{self.duration_s:g}s")
        if self.warmup is not None:
            parts.append(f"warm{self.warmup}")
        if self.endpoint == "chat":
            parts.append("chat")
        if self.turns > 1:
            parts.append(f"turns{self.turns}")
        return ":".join(parts)

    # The token-workload surface the store and the worker sizing read.
    @property
    def n_prompt(self) -> int:
        return self.input_len[1]

    @property
    def n_gen(self) -> int:
        return self.output_len[1]

    n_depth = 0
    phases: tuple[str, ...] = ()

    @property
    def n_ctx(self) -> int:
        """The longest request: a conversation's last turn carries every earlier one."""
        return self.turns * (self.input_len[1] + self.output_len[1])

    @property
    def in_flight(self) -> int:
        """The most requests that can be in flight (a rate without a cap: unbounded → 0)."""
        return self.concurrency or self.max_concurrency or 0

    def warmup_requests(self) -> int:
        if self.warmup is not None:
            return self.warmup
        wave = self.concurrency or self.max_concurrency or math.ceil(self.rate or 1)
        return min(wave, MAX_DEFAULT_WARMUP)

    def with_requests(self, n: int | None) -> ServingLoad:
        """The load with a request count when it names neither a count nor a duration."""
        if self.requests is not None or self.duration_s is not None:
            return self
        return replace(self, requests=n or DEFAULT_REQUESTS)

    def spec(self) -> dict[str, Any]:
        return {"n_prompt": self.n_prompt, "n_gen": self.n_gen, "n_depth": 0,
                "serving": self.load_doc()}

    def load_doc(self) -> dict[str, Any]:
        """Everything about the load, as stored with the case and sent to the worker."""
        return {
            "concurrency": self.concurrency, "rate": self.rate, "arrival": self.arrival,
            "burstiness": self.burstiness, "max_concurrency": self.max_concurrency,
            "input_len": list(self.input_len), "output_len": list(self.output_len),
            "prefix_len": self.prefix_len, "requests": self.requests,
            "duration_s": self.duration_s, "warmup": self.warmup_requests(),
            "endpoint": self.endpoint, "turns": self.turns,
        }

    def __str__(self) -> str:
        return self.name


DEFAULT_MAX_STREAMS = 1024


@dataclass(frozen=True)
class SearchLoad:
    """A load found by measuring: a sweep to saturation or the capacity under an SLO. The runner
    measures one step at a time (each an ordinary serving case) and chooses the next from the
    records so far (harness.common.capacity)."""

    kind: str  # sweep | capacity
    template: ServingLoad  # the step's load with concurrency 1
    by: str = "concurrency"  # concurrency | rate (capacity)
    max_level: float = DEFAULT_MAX_STREAMS
    percentile: float = 99.0
    confidence: float = 0.95
    repeats: int = 2
    requests: int | None = None  # nN as written: every step sends exactly this many
    default_requests: int = DEFAULT_REQUESTS
    serving = True
    search = True

    @property
    def name(self) -> str:
        rest = self.template.name.split(":", 1)[1]
        parts = [self.kind, rest] + ([f"n{self.requests}"] if self.requests else [])
        if self.max_level != DEFAULT_MAX_STREAMS:
            parts.append(f"max{self.max_level:g}")
        if self.kind == "capacity":
            parts.append(f"p{self.percentile:g}")
            if self.by == "rate":
                parts.append("rate")
            if self.confidence != 0.95:
                parts.append(f"conf{self.confidence * 100:g}")
            if self.repeats != 2:
                parts.append(f"rep{self.repeats}")
        return ":".join(parts)

    # the surface the runner sizes a worker by: the template's
    n_prompt = property(lambda self: self.template.n_prompt)
    n_gen = property(lambda self: self.template.n_gen)
    n_ctx = property(lambda self: self.template.n_ctx)
    n_depth = 0
    phases: tuple[str, ...] = ()

    def with_requests(self, n: int | None) -> SearchLoad:
        """The run's request count: the floor of each step's count when nN is not given."""
        return replace(self, default_requests=n or DEFAULT_REQUESTS)

    def step(self, level: float, min_requests: int = 0) -> ServingLoad:
        """One step's load: `level` streams (or requests/s) and its request count: nN as given,
        else the run's count, at least 4 per stream (or per request/s) and `min_requests`."""
        n = self.requests or max(self.default_requests, min_requests, 4 * math.ceil(level))
        if self.by == "rate":
            return replace(self.template, concurrency=None, rate=float(level), requests=n)
        return replace(self.template, concurrency=int(level), requests=n)

    def __str__(self) -> str:
        return self.name


AnyWorkload = Workload | ServingLoad | SearchLoad

_SEARCH_FIELD = re.compile(r"^(?:max(?P<max>\d+(?:\.\d+)?)|p(?P<p>\d+(?:\.\d+)?)|(?P<rate>rate)"
                           r"|conf(?P<conf>\d+(?:\.\d+)?)|rep(?P<rep>\d+))$")


def parse_search(text: str) -> SearchLoad:
    """`sweep:in128:out32[:max64]…` or `capacity:in512:out128[:p99][:rate]…`."""
    kind, _, rest = text.partition(":")
    fields, own = [], {}
    for field in rest.split(":") if rest else []:
        m = _SEARCH_FIELD.match(field)
        if m and (kind == "capacity" or m["max"]):
            key = next(k for k, v in m.groupdict().items() if v is not None)
            own[key] = m[key]
        else:
            fields.append(field)
    if any(f.startswith(("c", "r")) and f[1:2].isdigit() for f in fields):
        raise TokbenchError(f"workload {text!r}: a {kind} finds its own load; drop the cN/rR field")
    template = parse_serving(":".join(["c1", *fields]))
    if template.duration_s is not None:
        raise TokbenchError(f"workload {text!r}: a {kind} sizes each step by requests (nN), not dur")
    requests, template = template.requests, replace(template, requests=None)
    search = SearchLoad(kind, template, requests=requests, by="rate" if "rate" in own else "concurrency",
                        max_level=float(own.get("max", DEFAULT_MAX_STREAMS)),
                        percentile=float(own.get("p", 99)),
                        confidence=float(own.get("conf", 95)) / 100, repeats=int(own.get("rep", 2)))
    if not 0 < search.percentile < 100 or not 0.5 < search.confidence < 1:
        raise TokbenchError(f"workload {text!r}: pNN needs 0 < NN < 100 and confNN 50 < NN < 100")
    if search.max_level < 1:
        raise TokbenchError(f"workload {text!r}: maxN must be ≥ 1")
    return search


def parse_workload(text: str) -> AnyWorkload:
    """Parse one workload name; raise a one-line error that shows the accepted syntax."""
    text = text.strip()
    if text.startswith(("sweep:", "capacity:")):
        return parse_search(text)
    if ":" in text or re.match(r"^[cr]\d", text):
        return parse_serving(text)
    m = _SYNTAX.match(text)
    if not m or not (m["pp"] or m["tg"]) or bool(m["pp"] and m["tg"]) != bool(m["plus"]):
        raise TokbenchError(f"unknown workload {text!r}: {HELP}")
    wl = Workload(int(m["pp"] or 0), int(m["tg"] or 0), int(m["depth"] or 0))
    if (m["pp"] and wl.n_prompt == 0) or (m["tg"] and wl.n_gen == 0):
        raise TokbenchError(f"workload {text!r} has a zero token count: counts must be ≥ 1")
    return wl


_FIELD = re.compile(
    r"^(?:c(?P<c>\d+)|r(?P<r>\d+(?:\.\d+)?)|in(?P<in>\d+(?:-\d+)?)|out(?P<out>\d+(?:-\d+)?)"
    r"|prefix(?P<prefix>\d+)|n(?P<n>\d+)|dur(?P<dur>\d+(?:\.\d+)?)(?P<unit>[sm]?)"
    r"|warm(?P<warm>\d+)|burst(?P<burst>\d+(?:\.\d+)?)|max(?P<max>\d+)|(?P<const>const)"
    r"|(?P<chat>chat)|turns(?P<turns>\d+))$"
)


def _span(text: str, what: str, where: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    out = (int(lo), int(hi or lo))
    if out[0] < 1 or out[1] < out[0]:
        raise TokbenchError(f"workload {where!r}: {what} must be ≥ 1, and A ≤ B in {what}A-B")
    return out


def parse_serving(text: str) -> ServingLoad:
    """Parse a serving workload (c16:in512:out128…); each field at most once."""
    seen: dict[str, Any] = {}
    for field in text.split(":"):
        m = _FIELD.match(field)
        if not m:
            raise TokbenchError(f"workload {text!r}: unknown field {field!r}; {SERVING_HELP}")
        key = next(k for k, v in m.groupdict().items() if v is not None and k != "unit")
        if key in seen:
            raise TokbenchError(f"workload {text!r}: field {key} given twice")
        seen[key] = m[key] if key != "dur" else float(m["dur"]) * (60 if m["unit"] == "m" else 1)
    if ("c" in seen) == ("r" in seen):
        raise TokbenchError(f"workload {text!r}: give exactly one of cN (concurrency) or rR "
                            f"(requests/s) first; {SERVING_HELP}")
    if "in" not in seen or "out" not in seen:
        raise TokbenchError(f"workload {text!r}: give the prompt and output lengths, :inN:outN; "
                            f"{SERVING_HELP}")
    if "c" in seen and any(k in seen for k in ("const", "burst", "max")):
        raise TokbenchError(f"workload {text!r}: const, burstX and maxN shape a request rate; "
                            "use them with rR, not cN")
    if "const" in seen and "burst" in seen:
        raise TokbenchError(f"workload {text!r}: const and burstX exclude each other")
    concurrency = int(seen["c"]) if "c" in seen else None
    rate = float(seen["r"]) if "r" in seen else None
    if concurrency == 0 or rate == 0:
        raise TokbenchError(f"workload {text!r}: concurrency and rate must be > 0")
    burst = float(seen.get("burst", 1.0))
    if burst <= 0:
        raise TokbenchError(f"workload {text!r}: burstX needs X > 0 (1 is Poisson)")
    load = ServingLoad(
        input_len=_span(seen["in"], "in", text), output_len=_span(seen["out"], "out", text),
        concurrency=concurrency, rate=rate,
        arrival="constant" if "const" in seen else "gamma" if "burst" in seen else "poisson",
        burstiness=burst, max_concurrency=int(seen["max"]) if "max" in seen else None,
        prefix_len=int(seen.get("prefix", 0)),
        requests=int(seen["n"]) if "n" in seen else None,
        duration_s=seen.get("dur"), warmup=int(seen["warm"]) if "warm" in seen else None,
        endpoint="chat" if "chat" in seen else "completions", turns=int(seen.get("turns", 1)),
    )
    if load.prefix_len >= load.input_len[0]:
        raise TokbenchError(f"workload {text!r}: prefix{load.prefix_len} must be shorter than "
                            f"the shortest prompt ({load.input_len[0]} tokens)")
    if load.requests == 0 or load.duration_s == 0 or load.max_concurrency == 0 or load.turns == 0:
        raise TokbenchError(f"workload {text!r}: n, dur, max and turns must be > 0")
    return load
