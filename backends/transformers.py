"""Hugging Face Transformers (PyTorch eager) in the worker, measured as llama-bench measures: the
model's forward pass on random token ids, with a KV cache, no generate() and no sampling.

Device: CUDA if available, else MPS, else CPU; the clock is read only after synchronizing the
device (torch.cuda / torch.mps synchronize), so each figure covers the finished computation.
- prefill (pp): one forward over B × n_prompt random token ids, logits of the last position
  only (logits_to_keep=1, as llama-bench and vLLM compute them), under torch.inference_mode.
- decode (tg): n_gen forwards of B × 1 token through the cache, each step's end time stamped.
- depth (@dN): N tokens run through a fresh cache, untimed, at the start of every trial; the
  prompt's positions continue from them. The cache is whatever the model builds on its first
  forward (DynamicCache; LFM2's hybrid attention + short-conv state cache).
Token ids are drawn before the clock starts, from a generator reseeded with each case's seed.
Memory: torch's CUDA peak allocation (reset per case) or MPS driver memory; kv_cache_bytes =
every tensor the cache holds after the last trial (for hybrid models, conv state included).
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any, ClassVar

from backends.base import Backend, EngineMissing, ModelLoadError, PhaseSample
from backends.hf_weights import checkpoint_size

_ENGINE_ENV = {  # tokbench gives local directories; never reach for a hub
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def _import_engine() -> tuple[Any, Any]:
    for key, value in _ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise EngineMissing(f"Transformers backend needs transformers and torch ({exc}): "
                            f"{TransformersBackend.install_hint}") from None
    return torch, transformers


def _device(torch: Any) -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def _version_at_least(version: str, major: int, minor: int) -> bool:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in version.split(".")[:2]]
    return tuple(parts) >= (major, minor)


def _tensor_bytes(obj: Any, torch: Any, seen: set[int], depth: int = 0) -> int:
    """Bytes of every tensor reachable from a cache object (its layers, lists, attributes): cache
    classes differ between transformers versions and between models, their tensors do not."""
    if isinstance(obj, torch.Tensor):
        key = obj.data_ptr()
        if key in seen or not obj.numel():
            return 0
        seen.add(key)
        return obj.numel() * obj.element_size()
    if depth > 4:
        return 0
    if isinstance(obj, (list, tuple)):
        items: Any = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif hasattr(obj, "__dict__"):
        items = vars(obj).values()
    else:
        return 0
    return sum(_tensor_bytes(item, torch, seen, depth + 1) for item in items)


class TransformersBackend(Backend):
    name = "transformers"
    install_hint = "pip install 'tokbench[transformers]' (and the torch build for your device)"
    model_format = "hf"
    defaults: ClassVar[dict[str, Any]] = {
        "threads": None,  # None: torch's default intra-op threads; else torch.set_num_threads
        "batch": 1,
        "dtype": "auto",  # auto: the checkpoint's config torch_dtype; else float16/bfloat16/float32
    }

    @classmethod
    def probe(cls) -> dict[str, Any]:
        torch, transformers = _import_engine()
        device = _device(torch)
        info = {
            "engine": "transformers",
            "engine_version": transformers.__version__,
            "torch_version": torch.__version__,
            "device": device,
            "build": f"transformers {transformers.__version__}, torch {torch.__version__} ({device})",
            "cuda_version": torch.version.cuda,  # the torch build's CUDA: None for a CPU build
        }
        if device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
        return info

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self._torch, self._transformers = _import_engine()
        self._device = _device(self._torch)
        self._rng = self._torch.Generator().manual_seed(seed)
        self._n_seq = params["batch"]
        self._model: Any = None
        self._cache: Any = None
        self._logits_kw: dict[str, int] = {}

    def prepare(self, params: dict[str, Any], n_ctx: int, seed: int) -> None:
        super().prepare(params, n_ctx, seed)
        torch = self._torch
        self._rng = torch.Generator().manual_seed(seed)
        self._n_seq = params["batch"]
        self._cache = None
        if params.get("threads"):
            torch.set_num_threads(params["threads"])
        if self._device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the case's own peak

    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        torch, transformers = self._torch, self._transformers
        dtype = self.params["dtype"]
        # `dtype` replaced `torch_dtype` in transformers 4.56 (the old name warns in 5.x)
        dtype_kw = "dtype" if _version_at_least(transformers.__version__, 4, 56) else "torch_dtype"
        t0 = time.perf_counter_ns()
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                self.model_path, local_files_only=True,
                **{dtype_kw: dtype if dtype == "auto" else getattr(torch, dtype)})
            self._model = model.to(self._device).eval()
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:500]  # one line
            if "ignore_mismatched_sizes" in message:  # its table went to stderr, not in the message
                message = "the checkpoint's tensor shapes do not match its config.json"
            raise ModelLoadError(f"transformers could not load {self.model_path}: "
                                 f"{type(exc).__name__}: {message}") from None
        self._sync()
        load_ns = time.perf_counter_ns() - t0
        if "logits_to_keep" in inspect.signature(self._model.forward).parameters:
            self._logits_kw = {"logits_to_keep": 1}
        config = self._model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._n_vocab = int(text.vocab_size)
        n_params, n_bytes = checkpoint_size(self.model_path)
        arch = (config.architectures or [type(self._model).__name__])[0]
        out = {
            "desc": f"{config.model_type} {str(self._model.dtype).removeprefix('torch.')} · {arch}",
            "size_bytes": n_bytes, "n_params": n_params,
            "n_vocab": self._n_vocab, "load_ns": load_ns,
        }
        if getattr(text, "max_position_embeddings", None):
            out["n_ctx_train"] = int(text.max_position_embeddings)
        return out

    def warmup(self, n_prompt: int, n_gen: int) -> None:
        self.run_trial(n_prompt, min(n_gen, 1), 0)

    def run_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        self._cache = None  # a fresh cache every trial, built by the first forward
        with self._torch.inference_mode():
            if n_depth:
                self._forward(self._random(n_depth))
                self._sync()
            samples = []
            if n_prompt:
                samples.append(self._prefill(n_prompt))
            if n_gen:
                samples.append(self._decode(n_gen))
        return samples

    def memory(self) -> dict[str, Any]:
        torch, out = self._torch, {}
        if self._device == "cuda":
            out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        elif self._device == "mps" and hasattr(torch.mps, "driver_allocated_memory"):
            out["mps_driver_allocated_bytes"] = int(torch.mps.driver_allocated_memory())
        if self._cache is not None:
            out["kv_cache_bytes"] = _tensor_bytes(self._cache, torch, set())
        return out

    def close(self) -> None:
        self._model = self._cache = None
        if self._device == "cuda":
            self._torch.cuda.empty_cache()

    # -- measurement ------------------------------------------------------------------------
    def _sync(self) -> None:
        if self._device == "cuda":
            self._torch.cuda.synchronize()
        elif self._device == "mps":
            self._torch.mps.synchronize()

    def _random(self, n: int) -> Any:
        tokens = self._torch.randint(0, self._n_vocab, (self._n_seq, n), generator=self._rng)
        return tokens.to(self._device)

    def _forward(self, tokens: Any) -> Any:
        out = self._model(input_ids=tokens, past_key_values=self._cache, use_cache=True,
                          **self._logits_kw)
        self._cache = out.past_key_values
        return out.logits

    def _prefill(self, n: int) -> PhaseSample:
        tokens = self._random(n)
        self._sync()
        t0 = time.perf_counter_ns()
        self._forward(tokens)
        self._sync()
        return PhaseSample("pp", n * self._n_seq, time.perf_counter_ns() - t0)

    def _decode(self, n_gen: int) -> PhaseSample:
        tokens = self._random(n_gen)
        marks = []
        self._sync()
        t0 = time.perf_counter_ns()
        for i in range(n_gen):
            self._forward(tokens[:, i:i + 1])
            self._sync()
            marks.append(time.perf_counter_ns() - t0)
        return PhaseSample("tg", n_gen * self._n_seq, marks[-1], marks)
