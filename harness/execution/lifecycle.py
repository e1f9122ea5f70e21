"""The worker lifecycle, one for `run` and `ab`: spawn a backend worker, speak its protocol, hold
each case to its time budget, kill a worker that hangs, and write each case's final record.

A worker loads its model once and serves cases one at a time (backends/worker.py). Whatever
ends a case early (an engine error, a crash, a hang past the timeout, the OOM killer) becomes
that case's error record; the session is then dead and the caller starts a fresh one for the
cases left. A failure before the model loaded is a load failure: the cases that would share
that load are not retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import backends
from harness.common.errors import TokbenchError
from harness.execution import memory_guard
from harness.execution.interrupts import describe
from results.store import Store

_BACKENDS_DIR = Path(backends.__file__).resolve().parent
STDERR_TAIL = 2000
CLOSE_GRACE_S = 10.0  # a worker told to close that has not exited by then is killed


class Hooks:
    """Progress callbacks; the CLI draws a progress bar with them, tests observe workers."""

    def run_started(self, run_id: str, n_cases: int) -> None: ...
    def steps_added(self, n: int) -> None:
        """A searched load (sweep, capacity) chose n more cases to run."""
    def case_started(self, index: int, case: Any) -> None: ...
    def worker_started(self, index: int, pid: int) -> None:
        """The worker that serves case `index` (a reused one is announced again)."""
    def trial_done(self, index: int, trial: int) -> None: ...
    def case_done(self, index: int, status: str, error: str | None) -> None: ...
    def warn(self, message: str) -> None:
        """Something the user must read before trusting the run (the CLI prints it loudly)."""


@dataclass
class CaseResult:
    status: str = "pending"
    error: str | None = None
    detail: str | None = None
    trials: int = 0
    updates: dict[str, Any] = field(default_factory=dict)


class Workers:
    """Starts backend workers under each backend's interpreter, with only the `backends`
    package put on their path, and reads their protocol lines."""

    def __init__(self, python: dict[str, str] | None = None) -> None:
        self.python = python or {}
        self._shim = tempfile.TemporaryDirectory(prefix="tokbench-worker-")
        os.symlink(_BACKENDS_DIR, Path(self._shim.name) / "backends")

    def close(self) -> None:
        self._shim.cleanup()

    def interpreter(self, backend: str) -> str:
        return self.python.get(backend) or sys.executable

    def spawn(self, backend: str, request: dict[str, Any], stderr: IO[bytes]) -> subprocess.Popen:
        """Start a worker and send its first request; its stdin stays open for commands."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self._shim.name, env.get("PYTHONPATH")) if p)
        python = self.interpreter(backend)
        try:
            proc = subprocess.Popen(
                [python, "-m", "backends.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, env=env, start_new_session=True,
            )
        except OSError as exc:
            raise TokbenchError(
                f"worker interpreter {python!r} for {backend} cannot start ({exc}): fix --python"
            ) from None
        send(proc, request)
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
                    yield _parse(line)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        """Kill the worker's whole process group (whatever it started goes with it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def probe(self, backend: str, spec: str) -> dict[str, Any]:
        """Engine version and build info, from a worker; a missing engine is a one-line error."""
        with tempfile.TemporaryFile() as err:
            proc = self.spawn(backend, {"op": "probe", "backend": spec}, err)
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]
            msgs = list(self.messages(proc, time.monotonic() + 120))
            if None in msgs:
                self.kill(proc)
            proc.wait()
            err.seek(0)
            stderr = err.read().decode(errors="replace")[-STDERR_TAIL:]
        for msg in msgs:
            if msg and msg["type"] == "probe":
                return msg["info"]
            if msg and msg["type"] == "error":
                raise TokbenchError(msg["message"])
        last = stderr.strip().splitlines()[-1:] or ["no output"]
        raise TokbenchError(f"{backend} worker ({self.interpreter(backend)}) failed to start: {last[0]}")


def _parse(line: bytes) -> dict[str, Any]:
    """One protocol line; anything else (an engine printing onto the protocol, a torn line) is
    a `malformed` message that fails the case rather than the run."""
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if isinstance(msg, dict) and isinstance(msg.get("type"), str):
        return msg
    return {"type": "malformed", "line": line[:120].decode(errors="replace")}


def send(proc: subprocess.Popen, command: dict[str, Any]) -> bool:
    """Write one command line to a worker; False when it has gone."""
    assert proc.stdin is not None
    try:
        proc.stdin.write((json.dumps(command) + "\n").encode())
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        return False
    return True


@dataclass
class _Serving:
    """The case a session is serving now."""

    case_id: int
    index: int
    repetitions: int
    result: CaseResult
    spent_s: float = 0.0  # time waited on the worker for this case: its budget is the timeout
    client: list[dict[str, Any]] = field(default_factory=list)  # serving: per trial
    notes: list[str] = field(default_factory=list)


class WorkerSession:
    """One worker process for cases that share a model load: begin → blocks of trials → end,
    case after case, then close. Every message is recorded in the store as it arrives."""

    def __init__(self, workers: Workers, backend: str, open_request: dict[str, Any], store: Store,
                 hooks: Hooks, timeout_s: float, key: Any = None) -> None:
        self.workers, self.backend, self.open_request = workers, backend, open_request
        self.store, self.hooks, self.timeout_s = store, hooks, timeout_s
        self.proc: subprocess.Popen | None = None
        self.model: dict[str, Any] | None = None  # the engine's description, once loaded
        self.dead = False  # a case failed: the worker is gone and serves nothing more
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 - lives until close()
        self._case: _Serving | None = None
        self.key = key  # the load key it serves (A/B runs match pairs to it)
        self.server_group: int | None = None  # a server the worker started, in its own group
        self._oom_kills: dict[str, int] | None = None  # the kernel's OOM-kill counts at spawn

    # -- one case ------------------------------------------------------------------------------
    def begin(self, case_id: int, index: int, case_request: dict[str, Any], repetitions: int) -> bool:
        """Start serving a case: spawn and load on the first one, then prepare and warm up."""
        self._case = _Serving(case_id, index, repetitions, CaseResult("running"))
        self.store.update_case(case_id, status="running", started_at=time.time())
        if self.proc is None:
            self._oom_kills = memory_guard.oom_kills()
            self.proc = self.workers.spawn(self.backend, self.open_request, self._err)
            self.hooks.worker_started(index, self.proc.pid)
            if not self._until("loaded"):
                return False
        else:
            self.hooks.worker_started(index, self.proc.pid)
            self._record_model(reused=True)
        return self._command({"op": "case", **case_request}, "ready")

    def block(self, n: int) -> bool:
        """Run n trials of the current case."""
        return self._command({"op": "trials", "n": n}, "block_done")

    def abort(self, exc: BaseException) -> None:
        """Something outside the worker ended the case (a signal, the store failing): kill the
        worker's group first, then record what can still be recorded; the exception goes on."""
        self.kill()
        if self._case is None:
            return
        serving, result = self._case, self._case.result
        if isinstance(exc, KeyboardInterrupt):
            result.status, result.error = "interrupted", describe(exc)
        else:
            result.status, result.error = "error", f"the runner failed: {type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):  # the store may be what failed
            self.store.update_case(serving.case_id, status=result.status, error=result.error,
                                   finished_at=time.time())
        self._case = None

    def end(self, interrupted: bool = False) -> CaseResult:
        """Finish the current case (its memory figures) and write its final record."""
        assert self._case is not None
        serving, result = self._case, self._case.result
        if interrupted:
            self.abort(KeyboardInterrupt())
            return result
        if result.status == "running":
            self._command({"op": "end_case"}, "case_done")
        if result.status == "running":  # the worker went away without a word
            result.status = "error"
            result.error = _describe_exit(self._wait(), result.trials, serving.repetitions,
                                          self._oom_kills)
            result.detail = self._stderr_tail()
        elif result.status == "error" and not result.detail:
            self._wait()
            result.detail = self._stderr_tail()
        if result.status != "ok":
            self.dead = True
        self.store.update_case(serving.case_id, status=result.status, error=result.error,
                               error_detail=result.detail, finished_at=time.time(), **result.updates)
        self._case = None
        return result

    # -- the worker --------------------------------------------------------------------------
    def close(self) -> None:
        """Let the worker finish (or kill it if it does not), and drop its stderr."""
        try:
            if self.proc is not None and self.proc.poll() is None and not self.dead \
                    and send(self.proc, {"op": "close"}):
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()  # type: ignore[union-attr]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=CLOSE_GRACE_S)
        finally:  # even when a signal cut the wait short
            if self.proc is not None:
                self.kill()  # its group too, even when the worker itself exited
            self._err.close()

    def kill(self) -> None:
        if self.proc is not None:
            Workers.kill(self.proc)
        if self.server_group is not None:  # a worker killed mid-case cannot stop its server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.server_group, signal.SIGKILL)
        self.dead = True

    def _wait(self) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def _stderr_tail(self) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-STDERR_TAIL:]

    def _command(self, command: dict[str, Any], reply: str) -> bool:
        assert self.proc is not None and self._case is not None
        if self._case.result.status != "running":
            return False
        send(self.proc, command)  # if it has gone, _until reads what it said before it went
        return self._until(reply)

    def _until(self, kind: str) -> bool:
        """Record messages until `kind` arrives; False when the worker fails, ends or times out.
        Time spent waiting counts against the case's budget (load included for the first)."""
        assert self.proc is not None and self._case is not None
        serving, result = self._case, self._case.result
        started = time.monotonic()
        deadline = started + self.timeout_s - serving.spent_s
        try:
            for msg in Workers.messages(self.proc, deadline):
                if msg is None:
                    self.kill()
                    result.status = "error"
                    result.error = (f"timed out after {self.timeout_s:g} s ({result.trials}/"
                                    f"{serving.repetitions} trials done); raise --timeout if the "
                                    "case is just slow")
                    return False
                self._record(msg)
                if msg["type"] == "malformed":
                    self.kill()
                if msg["type"] == kind:
                    return True
                if result.status != "running":
                    return False
            return False
        finally:
            serving.spent_s += time.monotonic() - started

    def _record(self, msg: dict[str, Any]) -> None:
        """Record one worker message on the current case."""
        assert self._case is not None
        serving, result = self._case, self._case.result
        kind = msg["type"]
        if kind == "loaded":
            self.model = msg["model"]
            self.server_group = self.model.get("server_pgid")
            self._record_model(reused=False)
        elif kind == "trial":
            self.store.add_trial(serving.case_id, msg["index"], msg["samples"], msg.get("started_at"),
                                 msg.get("requests", ()))
            result.trials += 1
            if "client" in msg:  # a serving trial: the client's own load, and what to say
                serving.client.append(msg["client"])
                serving.notes += [n for n in msg.get("notes", []) if n not in serving.notes]
                self.store.update_case(serving.case_id, client=serving.client, notes=serving.notes)
            self.hooks.trial_done(serving.index, msg["index"])
        elif kind == "case_done":
            mem = msg.get("memory", {})
            result.status = "ok"
            result.updates = {"peak_rss_bytes": mem.get("peak_rss_bytes"),
                              "kv_cache_bytes": mem.get("kv_cache_bytes"), "memory": mem}
        elif kind == "error":
            result.status = "error"
            result.error = msg["message"]
            result.detail = msg.get("traceback")
        elif kind == "malformed":
            result.status = "error"
            result.error = (f"the worker wrote a line that is not protocol ({msg['line']!r}); "
                            "the worker was killed")

    def _record_model(self, reused: bool) -> None:
        assert self._case is not None and self.model is not None
        m = self.model
        self.store.update_case(self._case.case_id, model_desc=m.get("desc"),
                               model_size_bytes=m.get("size_bytes"), model_n_params=m.get("n_params"),
                               load_s=0.0 if reused else m.get("load_ns", 0) / 1e9,
                               model_reused=int(reused))


def _describe_exit(returncode: int | None, trials: int, wanted: int,
                   oom_before: dict[str, int] | None) -> str:
    """Why a worker died without a word. A SIGKILL is called out of memory only when the kernel
    counted an OOM kill while it ran (memory_guard.oom_kills), since `kill -9` looks the same."""
    done = f"after {trials}/{wanted} trials"
    if returncode is None:
        return f"worker could not be reaped {done}"
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        hint = ""
        if sig == "SIGKILL":
            hint = memory_guard.describe_sigkill(oom_before)
        return f"worker killed by {sig}{hint} {done}"
    return f"worker exited with code {returncode} without a result {done}"
