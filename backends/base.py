"""The backend protocol: the small surface every engine adapter implements.

Adapters only stamp monotonic timestamps (perf_counter_ns) into samples; rates and statistics
are derived by the harness. Standard library only: this module is imported by workers that may
run under another interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (PR_SET_PDEATHSIG), so a
    runner killed with SIGKILL leaves no worker, and a killed worker no server. Elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class BackendError(Exception):
    """An unknown backend name or an adapter that cannot be imported: a one-line message that
    names the input and the fix (the CLI prints it as TokbenchError is printed)."""


class EngineMissing(Exception):
    """The engine package is not importable in the worker's interpreter."""


class ModelLoadError(Exception):
    """The engine refused the model (corrupt, unsupported architecture, out of memory)."""


class ServerFailed(Exception):
    """A server died or failed a whole serving trial; what it measured was sent first."""


@dataclass
class PhaseSample:
    """One timed phase of one trial: tokens processed and how long it took.

    token_ns holds, for decode, the end time of each token relative to the phase start, as
    measured (no interpolation).
    """

    phase: str
    n_tokens: int
    duration_ns: int
    token_ns: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend:
    """One engine adapter. Lifecycle in a worker:
    probe → __init__ → load → (prepare → warmup → trials → memory) for each case → close.

    A worker loads the model once and serves every case that shares the load parameters
    (those marked `reloads_model`), as llama-bench does; `prepare` switches between cases.
    """

    name: ClassVar[str]
    install_hint: ClassVar[str]
    #: Defaults of the parameters this backend accepts (names from harness.execution.params.PARAMS).
    defaults: ClassVar[dict[str, Any]]
    #: What a model source must resolve to: "gguf" (a file), "hf" (a Hugging Face directory) or
    #: "remote" (a name the server knows; nothing is resolved here).
    model_format: ClassVar[str] = "gguf"
    #: True for a backend that speaks HTTP to a server: it runs serving workloads (c16:in512:out128)
    #: through serve_warmup/serve_trial instead of token workloads through run_trial.
    serving: ClassVar[bool] = False
    #: Parameters that must be given (no usable default), e.g. a server's URL.
    required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Engine version and build info. Raises EngineMissing when the engine is absent."""
        raise NotImplementedError

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        """params: the first case's parameters; the load parameters among them hold for every
        case this instance serves."""
        self.model_path = model_path
        self.params = params
        self.seed = seed

    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        """Load the model; n_ctx (tokens per sequence) and n_seq (sequences) are the largest any
        case of this worker needs, for engines that size their caches at load. Return the
        model's description (desc, size_bytes, n_params, load_ns…)."""
        raise NotImplementedError

    def prepare(self, params: dict[str, Any], n_ctx: int, seed: int) -> None:
        """Set up for the next case: its parameters (load parameters unchanged), the context it
        needs per sequence, its seed. Called before each case's warm-up, the first one too; an
        engine with per-case state (a llama.cpp context) rebuilds it here."""
        self.params, self.seed = params, seed

    def warmup(self, n_prompt: int, n_gen: int) -> None:
        raise NotImplementedError

    def run_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        """Clear state, fill n_depth untimed, then time the prefill and decode phases.

        With batch B (params["batch"], default 1) the phases run B independent sequences
        together: pp prefills B prompts of n_prompt tokens, tg decodes n_gen steps of B tokens.
        n_tokens counts all sequences (so tokens/s is the aggregate); token_ns marks each step.
        """
        raise NotImplementedError

    def serve_warmup(self, load: dict[str, Any], seed: int) -> None:
        """Serving backends: send the load's warm-up requests (not recorded)."""
        raise NotImplementedError

    def serve_trial(self, load: dict[str, Any], seed: int) -> dict[str, Any]:
        """Serving backends: one pass of the load. Returns {"samples": [PhaseSample dicts],
        "requests": [records], "client": {…}, "notes": [...], "fatal": message or None}; a fatal
        message (the server died) ends the case after what was measured is stored."""
        raise NotImplementedError

    def idle(self) -> None:
        """Called when the worker waits between trial blocks (A/B runs): release the CPU, so an
        idle arm's spinning threads cannot slow the other arm's trials."""

    def memory(self) -> dict[str, Any]:
        """Engine-side memory figures (e.g. KV-cache bytes), beyond the worker's peak RSS."""
        return {}

    def close(self) -> None:
        pass
