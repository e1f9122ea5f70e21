"""Runs a suite: each case in its own worker process, each trial stored as soon as it arrives.

A worker that crashes, hangs past the case timeout or is killed for memory becomes an error
record for its case; the suite goes on. The runner never imports an engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import harness
from backends.registry import load_class, spec_for
from harness import hardware, models
from harness.errors import TokbenchError
from harness.suite import Case, Suite
from results.store import Store, new_run_id

_ROOT = Path(harness.__file__).resolve().parent.parent
_STDERR_TAIL = 2000


class Hooks:
    """Progress callbacks; the CLI draws a progress bar with them, tests observe workers."""

    def run_started(self, run_id: str, n_cases: int) -> None: ...
    def case_started(self, index: int, case: Case) -> None: ...
    def worker_started(self, index: int, pid: int) -> None: ...
    def trial_done(self, index: int, trial: int) -> None: ...
    def case_done(self, index: int, status: str, error: str | None) -> None: ...


@dataclass
class RunOutcome:
    run_id: str
    status: str
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (index, label, error)


@dataclass
class _WorkerResult:
    status: str = "error"
    error: str | None = None
    detail: str | None = None
    trials: int = 0
    updates: dict[str, Any] = field(default_factory=dict)


class Workers:
    """Starts backend workers under each backend's interpreter, with only the harness and
    backends packages put on their path, and speaks the line protocol with them."""

    def __init__(self, python: dict[str, str] | None = None) -> None:
        self.python = python or {}
        self._shim = tempfile.TemporaryDirectory(prefix="tokbench-worker-")
        for package in ("harness", "backends"):
            os.symlink(_ROOT / package, Path(self._shim.name) / package)

    def close(self) -> None:
        self._shim.cleanup()

    def interpreter(self, backend: str) -> str:
        return self.python.get(backend) or sys.executable

    def spawn(self, backend: str, request: dict[str, Any], stderr: IO[bytes],
              keep_stdin: bool = False) -> subprocess.Popen:
        """Start a worker and send it the request; keep_stdin for later commands (op serve)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (self._shim.name, env.get("PYTHONPATH")) if p
        )
        python = self.interpreter(backend)
        try:
            proc = subprocess.Popen(
                [python, "-m", "harness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, env=env, start_new_session=True,
            )
        except OSError as exc:
            raise TokbenchError(
                f"worker interpreter {python!r} for {backend} cannot start ({exc}): fix --python"
            ) from None
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(request) + "\n").encode())
        if keep_stdin:
            proc.stdin.flush()
        else:
            proc.stdin.close()
        return proc

    @staticmethod
    def messages(proc: subprocess.Popen, deadline: float) -> Iterator[dict[str, Any] | None]:
        """Yield protocol messages until EOF; yield None once if the deadline passes."""
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        fd = proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                yield None
                return
            if not sel.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def probe(self, backend: str) -> dict[str, Any]:
        """Engine version and build info, from a worker; a missing engine is a one-line error."""
        with tempfile.TemporaryFile() as err:
            proc = self.spawn(backend, {"op": "probe", "backend": spec_for(backend)}, err)
            msgs = list(self.messages(proc, time.monotonic() + 120))
            if None in msgs:
                self.kill(proc)
            proc.wait()
            err.seek(0)
            stderr = err.read().decode(errors="replace")[-_STDERR_TAIL:]
        for msg in msgs:
            if msg and msg["type"] == "probe":
                return msg["info"]
            if msg and msg["type"] == "error":
                raise TokbenchError(msg["message"])
        last = stderr.strip().splitlines()[-1:] or ["no output"]
        raise TokbenchError(f"{backend} worker ({self.interpreter(backend)}) failed to start: {last[0]}")


class Runner:
    def __init__(self, store: Store, suite: Suite, hooks: Hooks | None = None,
                 measure_bandwidth: bool = True) -> None:
        self.store, self.suite = store, suite
        self.hooks = hooks or Hooks()
        self.measure_bandwidth = measure_bandwidth
        self.workers = Workers(suite.python)

    # -- the run --------------------------------------------------------------------------
    def run(self, command: str) -> RunOutcome:
        suite = self.suite
        resolved = resolve_models(suite.cases)
        engines = {b: self.workers.probe(b) for b in dict.fromkeys(c.backend for c in suite.cases)}
        profile = hardware.collect(bandwidth=self.measure_bandwidth, engines=engines)
        run_id = start_run(self.store, command, profile)
        case_ids = [add_pending_case(self.store, run_id, index, case, resolved[index],
                                     suite.repetitions, engines[case.backend])
                    for index, case in enumerate(suite.cases)]
        self.hooks.run_started(run_id, len(suite.cases))
        outcome = RunOutcome(run_id, "complete")
        try:
            for index, (case, case_id) in enumerate(zip(suite.cases, case_ids, strict=True)):
                self.hooks.case_started(index, case)
                result = self._run_case(index, case, case_id, resolved[index])
                if result.status != "ok":
                    outcome.failed.append((index, case.label(), result.error or result.status))
                self.hooks.case_done(index, result.status, result.error)
        except KeyboardInterrupt:
            outcome.status = "interrupted"
            self.store.update_run(run_id, status="interrupted", finished_at=time.time())
            raise
        finally:
            self.workers.close()
        outcome.status = "failed" if outcome.failed else "complete"
        self.store.update_run(run_id, status=outcome.status, finished_at=time.time())
        return outcome

    def _run_case(self, index: int, case: Case, case_id: int,
                  model: models.ResolvedModel) -> _WorkerResult:
        request = {
            "op": "run", "backend": spec_for(case.backend), "model_path": str(model.path),
            "params": case.param_dict, "seed": self.suite.seed + index,
            "workload": {"n_prompt": case.workload.n_prompt, "n_gen": case.workload.n_gen,
                         "n_depth": case.workload.n_depth},
            "repetitions": self.suite.repetitions, "warmup": self.suite.warmup,
        }
        self.store.update_case(case_id, status="running", started_at=time.time())
        result = _WorkerResult()
        with tempfile.TemporaryFile() as err:
            proc = self.workers.spawn(case.backend, request, err)
            self.hooks.worker_started(index, proc.pid)
            try:
                self._consume(proc, case_id, index, result)
            except KeyboardInterrupt:
                self.workers.kill(proc)
                self.store.update_case(case_id, status="interrupted", finished_at=time.time(),
                                       error="interrupted by the user")
                raise
            returncode = proc.wait()
            err.seek(0)
            stderr_tail = err.read().decode(errors="replace")[-_STDERR_TAIL:]
        if result.status == "running":  # the stream ended without done or error
            result.status = "error"
            result.error = _describe_exit(returncode, result.trials, self.suite.repetitions)
            result.detail = stderr_tail
        elif result.status == "error" and not result.detail:
            result.detail = stderr_tail
        self.store.update_case(case_id, status=result.status, error=result.error,
                               error_detail=result.detail, finished_at=time.time(),
                               **result.updates)
        return result

    def _consume(self, proc: subprocess.Popen, case_id: int, index: int,
                 result: _WorkerResult) -> None:
        result.status = "running"
        deadline = time.monotonic() + self.suite.timeout_s
        for msg in self.workers.messages(proc, deadline):
            if msg is None:
                self.workers.kill(proc)
                result.status = "error"
                result.error = (f"timed out after {self.suite.timeout_s:g} s "
                                f"({result.trials}/{self.suite.repetitions} trials done); "
                                "raise --timeout if the case is just slow")
                return
            apply_message(self.store, self.hooks, case_id, index, msg, result)


def apply_message(store: Store, hooks: Hooks, case_id: int, index: int, msg: dict[str, Any],
                  result: _WorkerResult) -> None:
    """Record one worker message: model facts, a trial (stored at once), the end or an error."""
    kind = msg["type"]
    if kind == "loaded":
        m = msg["model"]
        store.update_case(case_id, model_desc=m.get("desc"), model_size_bytes=m.get("size_bytes"),
                          model_n_params=m.get("n_params"), load_s=m.get("load_ns", 0) / 1e9)
    elif kind == "trial":
        store.add_trial(case_id, msg["index"], msg["samples"], msg.get("started_at"))
        result.trials += 1
        hooks.trial_done(index, msg["index"])
    elif kind == "done":
        mem = msg.get("memory", {})
        result.status = "ok"
        result.updates = {"peak_rss_bytes": mem.get("peak_rss_bytes"),
                          "kv_cache_bytes": mem.get("kv_cache_bytes"), "memory": mem}
    elif kind == "error":
        result.status = "error"
        result.error = msg["message"]
        result.detail = msg.get("traceback")


def _describe_exit(returncode: int, trials: int, wanted: int) -> str:
    done = f"after {trials}/{wanted} trials"
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = " (likely out of memory)" if sig == "SIGKILL" else ""
        return f"worker killed by {sig}{hint} {done}"
    return f"worker exited with code {returncode} without a result {done}"


def resolve_models(cases: list[Case]) -> list[models.ResolvedModel]:
    """Each case's model, in the format its backend reads (a GGUF file or an HF directory);
    each source × format is resolved once."""
    done: dict[tuple[str, str], models.ResolvedModel] = {}
    out = []
    for case in cases:
        key = (case.model, load_class(spec_for(case.backend)).model_format)
        if key not in done:
            done[key] = models.resolve(*key)
        out.append(done[key])
    return out


def start_run(store: Store, command: str, profile: dict[str, Any]) -> str:
    """Record a new run (with the runner's pid, so a killed run shows as incomplete)."""
    run_id = new_run_id()
    store.add_run(
        run_id=run_id, started_at=time.time(), status="running", command=command,
        runner_pid=os.getpid(), host=socket.gethostname(),
        tokbench_version=harness.__version__, git_commit=_git_commit(),
        profile=profile, fingerprint=hardware.fingerprint(profile),
    )
    return run_id


def add_pending_case(store: Store, run_id: str, index: int, case: Case, model: models.ResolvedModel,
                     repetitions: int, engine: dict[str, Any], **extra: Any) -> int:
    """Record a case before it runs, so a crash leaves it visible as pending."""
    return store.add_case(
        run_id=run_id, case_index=index, backend=case.backend, model=case.model,
        model_path=str(model.path), model_id=model.model_id, quant=model.quant,
        model_file_bytes=model.file_bytes, workload=case.workload.name,
        n_prompt=case.workload.n_prompt, n_gen=case.workload.n_gen,
        n_depth=case.workload.n_depth, params=case.param_dict,
        repetitions=repetitions, status="pending", engine=engine, **extra,
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
