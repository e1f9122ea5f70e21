"""llama.cpp through llama-cpp-python's low-level API, measured the way llama-bench measures.

Prefill: random tokens (BOS first when the vocab adds one) fed in n_batch chunks with
llama_decode, then llama_synchronize before the clock stops. Decode: sequential single-token
llama_decode + llama_synchronize, each token's end time stamped. Depth is filled before the
clock starts and restored from a saved sequence state on later trials, as llama-bench does.
Batch B > 1 runs B parallel sequences in one context, as llama-batched-bench does: the B
prompts go through llama_decode together (n_batch tokens at a time), then each decode step is
one llama_decode of B tokens, one per sequence.
A persistent ggml threadpool is attached, as llama-bench does (without one ggml creates and
joins threads for every graph, which slows decode).
"""

from __future__ import annotations

import ctypes
import random
import re
import time
from pathlib import Path
from typing import Any, ClassVar

from backends.base import Backend, EngineMissing, ModelLoadError, PhaseSample

_GGML_TYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
    "iq4_nl": 20, "bf16": 30,
}
_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
_LOAD_MODE_NONE, _LOAD_MODE_MMAP = 0, 1
_BUFFER_LINE = re.compile(r"\b(KV|RS|compute|output) buffer size =\s*([\d.]+) MiB")
_MAX_THREADS = 512  # GGML_MAX_N_THREADS: length of ggml_threadpool_params.cpumask


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _MAX_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _engine_lib(llama_module: Any, stem: str) -> ctypes.CDLL | None:
    """One of the shared libraries shipped beside libllama (None in a backend-DL build)."""
    lib_dir = Path(llama_module.__file__).parent / "lib"
    found = sorted(lib_dir.glob(f"{stem}.so*")) + sorted(lib_dir.glob(f"{stem}*.dylib"))
    return ctypes.CDLL(str(found[0])) if found else None


def _import_engine() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise EngineMissing(
            f"llama.cpp backend needs llama-cpp-python ({exc}): {LlamaCppBackend.install_hint}"
        ) from None
    return llama_cpp


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    install_hint = "pip install 'tokbench[llama]'"
    defaults: ClassVar[dict[str, Any]] = {
        "threads": None,  # None: physical cores, as llama-bench
        "n_batch": 2048,
        "n_ubatch": 512,
        "n_gpu_layers": 99,
        "flash_attn": "auto",
        "cache_type_k": "f16",
        "cache_type_v": "f16",
        "mmap": True,
        "batch": 1,
    }

    @classmethod
    def probe(cls) -> dict[str, Any]:
        llama_cpp = _import_engine()
        lib = llama_cpp.llama_cpp
        lib.llama_backend_init()
        info = {
            "engine": "llama-cpp-python",
            "engine_version": llama_cpp.__version__,
            "system_info": lib.llama_print_system_info().decode().strip(),
            "supports_gpu_offload": bool(lib.llama_supports_gpu_offload()),
            "ggml_version": None, "ggml_commit": None,  # unknown when libggml-base is not found
        }
        base = _engine_lib(lib, "libggml-base")
        if base is not None:
            for field in ("ggml_version", "ggml_commit"):
                fn = getattr(base, field)
                fn.restype = ctypes.c_char_p
                info[field] = fn().decode()
        return info

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self._ll = _import_engine().llama_cpp
        self._rng = random.Random(seed)
        self._log_lines: list[str] = []
        self._model = self._ctx = self._threadpool = None
        self._depth_state: tuple[int, ctypes.Array] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        """Load the weights only: each case gets its own context in prepare, as in llama-bench."""
        ll, p = self._ll, self.params
        self._log_callback = ll.llama_log_callback(self._on_log)  # keep a reference
        ll.llama_log_set(self._log_callback, ctypes.c_void_p(0))
        ll.llama_backend_init()

        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = p["n_gpu_layers"]
        mparams.load_mode = _LOAD_MODE_MMAP if p["mmap"] else _LOAD_MODE_NONE
        t0 = time.perf_counter_ns()
        self._model = ll.llama_model_load_from_file(self.model_path.encode(), mparams)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {self._last_error()}")
        load_ns = time.perf_counter_ns() - t0

        vocab = ll.llama_model_get_vocab(self._model)
        self._n_vocab = ll.llama_vocab_n_tokens(vocab)
        self._bos = ll.llama_vocab_bos(vocab) if ll.llama_vocab_get_add_bos(vocab) else None
        desc = ctypes.create_string_buffer(256)
        ll.llama_model_desc(self._model, desc, len(desc))
        return {
            "desc": desc.value.decode(errors="replace"),
            "size_bytes": int(ll.llama_model_size(self._model)),
            "n_params": int(ll.llama_model_n_params(self._model)),
            "n_layer": int(ll.llama_model_n_layer(self._model)),
            "n_ctx_train": int(ll.llama_model_n_ctx_train(self._model)),
            "n_vocab": int(self._n_vocab),
            "load_ns": load_ns,
        }

    def prepare(self, params: dict[str, Any], n_ctx: int, seed: int) -> None:
        """A fresh context (and threadpool) for the case, on the loaded model."""
        super().prepare(params, n_ctx, seed)
        ll, p = self._ll, params
        self._free_context()
        self._rng = random.Random(seed)
        self._depth_state = None
        self._n_seq = p["batch"]
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx * self._n_seq
        cparams.n_seq_max = self._n_seq
        cparams.n_batch = p["n_batch"]
        cparams.n_ubatch = p["n_ubatch"]
        cparams.n_threads = cparams.n_threads_batch = p["threads"]
        cparams.flash_attn_type = _FLASH_ATTN[p["flash_attn"]]
        cparams.type_k = _GGML_TYPES[p["cache_type_k"]]
        cparams.type_v = _GGML_TYPES[p["cache_type_v"]]
        cparams.swa_full = False
        self._log_lines.clear()
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not create a context: {self._last_error()}")
        self._attach_threadpool(p["threads"])

    def warmup(self, n_prompt: int, n_gen: int) -> None:
        if self._n_seq > 1:
            self.run_trial(n_prompt, min(n_gen, 1), 0)
            return
        if n_prompt:
            self._prefill(n_prompt)
        if n_gen:
            self._decode(1)

    def run_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        ll = self._ll
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), False)
        if self._n_seq > 1:
            return self._parallel_trial(n_prompt, n_gen, n_depth)
        if n_depth:
            self._fill_depth(n_depth)
        samples = []
        if n_prompt:
            samples.append(self._prefill(n_prompt))
        if n_gen:
            samples.append(self._decode(n_gen))
        return samples

    def idle(self) -> None:
        """Pause the threadpool: its threads poll for work after each graph, which would eat the
        other arm's cores in an A/B run. The next graph resumes it."""
        if self._threadpool:
            self._tp_pause(self._threadpool)

    def memory(self) -> dict[str, Any]:
        totals = {"KV": 0.0, "RS": 0.0, "compute": 0.0, "output": 0.0}
        for line in self._log_lines:
            m = _BUFFER_LINE.search(line)
            if m:
                totals[m[1]] += float(m[2])
        mib = 1024 * 1024
        return {
            "kv_cache_bytes": int(totals["KV"] * mib),
            "recurrent_state_bytes": int(totals["RS"] * mib),
            "compute_buffer_bytes": int(totals["compute"] * mib),
            "output_buffer_bytes": int(totals["output"] * mib),  # logits: n_batch × n_vocab floats
        }

    def close(self) -> None:
        self._free_context()
        if self._model:
            self._ll.llama_model_free(self._model)
        self._model = None

    def _free_context(self) -> None:
        if self._ctx:
            self._ll.llama_free(self._ctx)
        if self._threadpool:
            self._tp_free(self._threadpool)
        self._ctx = self._threadpool = None

    # -- measurement -----------------------------------------------------------------------
    def _random_tokens(self, n: int, first: bool) -> ctypes.Array:
        tokens = (self._ll.llama_token * n)()
        for i in range(n):
            tokens[i] = self._rng.randrange(self._n_vocab)
        if first and self._bos is not None:
            tokens[0] = self._bos
        return tokens

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"llama_decode failed during {what} (rc={rc}): {self._last_error()}")

    def _prefill(self, n_prompt: int) -> PhaseSample:
        ll, n_batch = self._ll, self.params["n_batch"]
        first = ll.llama_memory_seq_pos_max(ll.llama_get_memory(self._ctx), 0) < 0
        chunks, done = [], 0
        while done < n_prompt:  # tokens drawn before the clock starts
            n = min(n_batch, n_prompt - done)
            chunks.append((self._random_tokens(n, first and done == 0), n))
            done += n
        t0 = time.perf_counter_ns()
        for tokens, n in chunks:
            self._check(ll.llama_decode(self._ctx, ll.llama_batch_get_one(tokens, n)), "prefill")
        ll.llama_synchronize(self._ctx)
        return PhaseSample("pp", n_prompt, time.perf_counter_ns() - t0)

    def _decode(self, n_gen: int) -> PhaseSample:
        ll = self._ll
        token = (ll.llama_token * 1)()
        token[0] = self._bos if self._bos is not None else self._rng.randrange(self._n_vocab)
        marks = []
        t0 = time.perf_counter_ns()
        for _ in range(n_gen):
            self._check(ll.llama_decode(self._ctx, ll.llama_batch_get_one(token, 1)), "decode")
            ll.llama_synchronize(self._ctx)
            marks.append(time.perf_counter_ns() - t0)
            token[0] = self._rng.randrange(self._n_vocab)
        return PhaseSample("tg", n_gen, marks[-1], marks)

    # -- B parallel sequences (llama-batched-bench's scheme) -----------------------------------
    def _batches(self, entries: list[tuple[int, int, int, bool]]) -> list[Any]:
        """(token, pos, seq, wants_logits) entries packed into llama_batch structs of at most
        n_batch tokens, built before any clock starts."""
        ll, size = self._ll, self.params["n_batch"]
        out = []
        for start in range(0, len(entries), size):
            chunk = entries[start:start + size]
            batch = ll.llama_batch_init(len(chunk), 0, 1)
            for i, (token, pos, seq, logits) in enumerate(chunk):
                batch.token[i], batch.pos[i] = token, pos
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
                batch.logits[i] = logits
            batch.n_tokens = len(chunk)
            out.append(batch)
        return out

    def _run_batches(self, batches: list[Any], what: str, marks: list[int] | None = None,
                     t0: int = 0) -> None:
        ll = self._ll
        try:
            for batch in batches:
                self._check(ll.llama_decode(self._ctx, batch), what)
                ll.llama_synchronize(self._ctx)
                if marks is not None:
                    marks.append(time.perf_counter_ns() - t0)
        finally:
            for batch in batches:
                ll.llama_batch_free(batch)

    def _prompt_entries(self, n: int, start: int) -> list[tuple[int, int, int, bool]]:
        entries = []
        for seq in range(self._n_seq):
            tokens = self._random_tokens(n, first=start == 0)
            entries += [(tokens[i], start + i, seq, i == n - 1) for i in range(n)]
        return entries

    def _parallel_trial(self, n_prompt: int, n_gen: int, n_depth: int) -> list[PhaseSample]:
        samples = []
        if n_depth:
            self._run_batches(self._batches(self._prompt_entries(n_depth, 0)), "depth fill")
        if n_prompt:
            batches = self._batches(self._prompt_entries(n_prompt, n_depth))
            t0 = time.perf_counter_ns()
            self._run_batches(batches, "prefill")
            samples.append(PhaseSample("pp", n_prompt * self._n_seq, time.perf_counter_ns() - t0))
        if n_gen:
            pos = n_depth + n_prompt
            steps = [self._batches([(self._rng.randrange(self._n_vocab), pos + i, seq, True)
                                    for seq in range(self._n_seq)])[0] for i in range(n_gen)]
            marks: list[int] = []
            t0 = time.perf_counter_ns()
            self._run_batches(steps, "decode", marks, t0)
            samples.append(PhaseSample("tg", n_gen * self._n_seq, marks[-1], marks))
        return samples

    def _fill_depth(self, n_depth: int) -> None:
        """Fill the context to n_depth (untimed); restore a saved state when one exists."""
        ll = self._ll
        if self._depth_state and self._depth_state[0] == n_depth:
            buf = self._depth_state[1]
            if ll.llama_state_seq_set_data(self._ctx, buf, len(buf), 0):
                return
        self._prefill(n_depth)
        size = ll.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        ll.llama_state_seq_get_data(self._ctx, buf, size, 0)
        self._depth_state = (n_depth, buf)

    # -- engine plumbing -----------------------------------------------------------------------
    def _attach_threadpool(self, n_threads: int) -> None:
        """Create and attach a persistent CPU threadpool (llama-bench's setup)."""
        cpu = _engine_lib(self._ll, "libggml-cpu")
        if cpu is None:
            return  # a backend-DL build: ggml falls back to its per-graph pool
        cpu.ggml_threadpool_params_default.restype = _ThreadpoolParams
        cpu.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        cpu.ggml_threadpool_pause.argtypes = [ctypes.c_void_p]
        attach = self._ll._lib.llama_attach_threadpool
        attach.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        tpp = cpu.ggml_threadpool_params_default(n_threads)
        self._threadpool = cpu.ggml_threadpool_new(ctypes.byref(tpp))
        if not self._threadpool:
            raise ModelLoadError(f"ggml could not create a threadpool of {n_threads} threads")
        self._tp_free = cpu.ggml_threadpool_free
        self._tp_pause = cpu.ggml_threadpool_pause
        attach(self._ctx, self._threadpool, None)

    def _on_log(self, level: int, text: bytes, _user: Any) -> None:
        if text:
            self._log_lines.append(text.decode(errors="replace"))

    def _last_error(self) -> str:
        lines = [s.strip() for s in self._log_lines if s.strip() and s.strip() != "."]
        return " | ".join(lines[-3:]) or "no message from llama.cpp"
