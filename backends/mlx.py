"""MLX through mlx-lm (Metal on Apple Silicon, the CPU backend elsewhere), measured as
llama-bench measures: the model's forward pass on random token ids, synchronized with mx.eval.

prefill (pp): B prompts of n_prompt tokens as one (B, n) array, in chunks of n_batch tokens
per sequence (mlx-lm's prefill_step_size), each chunk's cache state evaluated, the last
chunk's logits evaluated before the clock stops. decode (tg): n_gen forward passes of a
(B, 1) array, each evaluated (mx.eval) and stamped. No sampling or detokenization, unlike
mlx_lm.benchmark's generation_tps. depth (@dN): N tokens run through the cache, untimed, at
the start of every trial. Memory: MLX's peak allocation (mx.get_peak_memory), reset after load.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from backends.base import Backend, EngineMissing, ModelLoadError, PhaseSample


def _import_engine() -> tuple[Any, Any]:
    try:
        import mlx.core as mx
        import mlx_lm
    except ImportError as exc:
        raise EngineMissing(f"MLX backend needs mlx-lm ({exc}): {MlxBackend.install_hint}") from None
    return mx, mlx_lm


class MlxBackend(Backend):
    name = "mlx"
    install_hint = "pip install 'tokbench[mlx]' (mlx-lm on macOS, mlx-lm[cpu] on Linux)"
    model_format = "hf"
    defaults: ClassVar[dict[str, Any]] = {
        "n_batch": 2048,  # mlx-lm's prefill_step_size
        "batch": 1,
        "dtype": "auto",  # auto: as stored; else the float weights are cast after loading
    }

    @classmethod
    def probe(cls) -> dict[str, Any]:
        mx, mlx_lm = _import_engine()
        from importlib.metadata import version

        return {
            "engine": "mlx-lm",
            "engine_version": mlx_lm.__version__,
            "mlx_version": mx.__version__,
            "device": str(mx.default_device()),
            "metal": bool(mx.metal.is_available()),
            "build": f"mlx-lm {version('mlx-lm')}, mlx {mx.__version__}",
        }

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self._mx, self._mlx_lm = _import_engine()
        self._mx.random.seed(seed)
        self._n_seq = params["batch"]
        self._model: Any = None

    def prepare(self, params: dict[str, Any], n_ctx: int, seed: int) -> None:
        super().prepare(params, n_ctx, seed)
        self._mx.random.seed(seed)
        self._mx.reset_peak_memory()  # the case's own peak
        self._n_seq = params["batch"]

    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        from mlx.utils import tree_flatten

        mx = self._mx
        t0 = time.perf_counter_ns()
        try:
            self._model, _ = self._mlx_lm.load(self.model_path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"mlx-lm could not load {self.model_path}: "
                                 f"{type(exc).__name__}: {exc}") from None
        if self.params["dtype"] != "auto":
            self._model.set_dtype(getattr(mx, self.params["dtype"]))
        weights = tree_flatten(self._model.parameters())
        mx.eval([w for _, w in weights])  # mlx loads lazily: make load time include the weights
        load_ns = time.perf_counter_ns() - t0
        args = self._model.args
        self._n_vocab = args.vocab_size
        mx.reset_peak_memory()
        return {
            "desc": f"{args.model_type} · mlx {mx.__version__}",
            "size_bytes": sum(w.nbytes for _, w in weights),
            "n_params": sum(w.size for _, w in weights),
            "n_vocab": self._n_vocab, "load_ns": load_ns,
        }

    def warmup(self, n_prompt: int, n_gen: int) -> None:
        self.run_trial(n_prompt, min(n_gen, 1), 0)

    def run_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self._model)
        if n_depth:
            self._prefill(cache, n_depth)
        samples = []
        if n_prompt:
            samples.append(self._prefill(cache, n_prompt))
        if n_gen:
            samples.append(self._decode(cache, n_gen))
        return samples

    def memory(self) -> dict[str, Any]:
        return {"mlx_peak_bytes": int(self._mx.get_peak_memory())}

    def close(self) -> None:
        self._model = None

    # -- measurement ------------------------------------------------------------------------
    def _random(self, n: int) -> Any:
        mx = self._mx
        tokens = mx.random.randint(0, self._n_vocab, (self._n_seq, n))
        mx.eval(tokens)
        return tokens

    def _prefill(self, cache: list[Any], n: int) -> PhaseSample:
        mx, step = self._mx, self.params["n_batch"]
        tokens = self._random(n)
        t0 = time.perf_counter_ns()
        for start in range(0, n, step):
            logits = self._model(tokens[:, start:start + step], cache=cache)
            mx.eval(logits, [c.state for c in cache])
        return PhaseSample("pp", n * self._n_seq, time.perf_counter_ns() - t0)

    def _decode(self, cache: list[Any], n_gen: int) -> PhaseSample:
        mx = self._mx
        tokens = self._random(n_gen)
        marks = []
        t0 = time.perf_counter_ns()
        for i in range(n_gen):
            mx.eval(self._model(tokens[:, i:i + 1], cache=cache))
            marks.append(time.perf_counter_ns() - t0)
        return PhaseSample("tg", n_gen * self._n_seq, marks[-1], marks)
