"""Tunable case parameters: one declaration each, shared by the CLI, suite files and backends.

A value list in any parameter expands into a grid, as in llama-bench.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.common.errors import TokbenchError


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use 0 or 1)")


def _flash(text: str) -> str:
    lowered = str(text).strip().lower()
    if lowered == "auto":
        return "auto"
    try:
        return "on" if _bool(lowered) else "off"
    except ValueError:
        raise ValueError(f"{text!r} is not on, off or auto") from None


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(f"{text!r} is not a fraction in (0, 1]")
    return value


def _optional(text: str) -> str | None:
    """A string where `none` (or empty) means unset."""
    return None if str(text).strip().lower() in ("", "none") else str(text).strip()


@dataclass(frozen=True)
class Param:
    """A case parameter: how it is spelled, parsed and bounded."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    help: str
    minimum: int | None = None
    choices: tuple[str, ...] | None = None
    reloads_model: bool = False

    def coerce(self, value: Any, where: str) -> Any:
        """Parse one value from text or TOML, or raise a one-line error naming `where`."""
        try:
            out = self.parse(value) if isinstance(value, str) else self._from_toml(value)
        except ValueError as exc:
            raise TokbenchError(f"{where}: bad value for {self.name}: {exc}") from None
        if self.minimum is not None and out < self.minimum:
            raise TokbenchError(f"{where}: {self.name} must be ≥ {self.minimum} (got {out})")
        if self.choices is not None and out not in self.choices:
            raise TokbenchError(
                f"{where}: {self.name} must be one of {', '.join(self.choices)} (got {out!r})"
            )
        return out

    def _from_toml(self, value: Any) -> Any:
        if self.parse in (_bool, _flash):
            if isinstance(value, bool) or value in (0, 1):
                return self.parse(str(int(value)))
            raise ValueError(f"{value!r} is not a boolean")
        if self.parse is int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"{value!r} is not an integer")
        return self.parse(str(value)) if self.parse is not int else value


_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

PARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("threads", ("-t", "--threads"), int, "CPU threads", minimum=1),
        Param("n_batch", ("--n-batch",), int, "logical batch size (prompt chunk)", minimum=1),
        Param("n_ubatch", ("-ub", "--n-ubatch"), int, "physical batch size", minimum=1),
        Param(
            "n_gpu_layers", ("-ngl", "--n-gpu-layers"), int, "layers offloaded to the GPU",
            minimum=0, reloads_model=True,
        ),
        Param("flash_attn", ("-fa", "--flash-attn"), _flash, "flash attention: on, off or auto"),
        Param("cache_type_k", ("-ctk", "--cache-type-k"), str, "K cache type", choices=_CACHE_TYPES),
        Param("cache_type_v", ("-ctv", "--cache-type-v"), str, "V cache type", choices=_CACHE_TYPES),
        Param("mmap", ("-mmp", "--mmap"), _bool, "memory-map the model (0/1)", reloads_model=True),
        Param("batch", ("-b", "--batch"), int,
              "independent sequences decoded together (aggregate and per-sequence tok/s)", minimum=1),
        # vLLM engine arguments (names as in `vllm serve`); each loads a new engine.
        Param("dtype", ("--dtype",), str, "weight/activation dtype", reloads_model=True,
              choices=("auto", "float16", "bfloat16", "float32")),
        Param("max_model_len", ("--max-model-len",), int,
              "context length the engine allocates for (default: the case's own)", minimum=16,
              reloads_model=True),
        Param("enforce_eager", ("--enforce-eager",), _bool, "no CUDA graphs / torch.compile (0/1)",
              reloads_model=True),
        Param("gpu_memory_utilization", ("--gpu-memory-utilization",), _fraction,
              "fraction of GPU memory vLLM may use", reloads_model=True),
        Param("tensor_parallel_size", ("-tp", "--tensor-parallel-size"), int, "GPUs per model",
              minimum=1, reloads_model=True),
        Param("quantization", ("--quantization",), _optional, "vLLM quantization method (none: "
              "from the checkpoint)", reloads_model=True),
        Param("kv_cache_dtype", ("--kv-cache-dtype",), str, "vLLM KV-cache dtype",
              choices=("auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16"), reloads_model=True),
        # Serving backends (a server at a URL, or one tokbench starts).
        Param("url", ("--url",), _optional, "base URL of a running OpenAI-compatible server "
              "(http://HOST:PORT/v1), for --backend openai", reloads_model=True),
        Param("api_key_env", ("--api-key-env",), str, "environment variable that holds the "
              "server's API key (the key itself is never stored)", reloads_model=True),
        Param("tokenizer", ("--tokenizer",), _optional, "the served model's GGUF or HF directory: "
              "text prompts of exact length, token counts where the server sends no usage",
              reloads_model=True),
        Param("ignore_eos", ("--ignore-eos",), _bool, "send ignore_eos and min_tokens so outputs "
              "have the asked length (0/1)"),
        Param("server_binary", ("--server-binary",), _optional, "llama.cpp's llama-server binary "
              "for --backend llama.cpp-server (default: llama-cpp-python's server)",
              reloads_model=True),
        Param("parallel", ("-np", "--parallel"), int, "llama-server slots (requests decoded "
              "together)", minimum=1, reloads_model=True),
        Param("client_procs", ("--client-procs",), int, "load-client processes the streams are "
              "spread over (when one process cannot drive the load)", minimum=1),
    )
}


def parse_list(param: Param, text: str, where: str) -> list[Any]:
    """Parse a comma-separated CLI value list such as `1,2,4`."""
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    if not items:
        raise TokbenchError(f"{where}: empty value list for {param.name}")
    return [param.coerce(item, where) for item in items]
