"""`tokbench ab`: two arms of one suite on one machine, their trials interleaved in ABBA blocks.

An arm is the suite with a few things changed: its worker interpreter (an engine build in its
own venv), its model source, or case parameters, written `key=value` (`python=/venv/bin/python
threads=2`). For each case, both arms' workers are started and warmed up once, one after the
other, then asked for blocks of trials in the order A B B A A B B A …, so that drift (heat,
other jobs on a shared runner) hits both arms alike. An idle worker pauses its engine's
threads. Every trial is stored as it arrives, in one ordinary run whose cases carry arm A or B.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from backends.registry import spec_for
from harness import hardware, models
from harness.errors import TokbenchError
from harness.params import PARAMS
from harness.runner import (
    _STDERR_TAIL,
    Hooks,
    RunOutcome,
    Workers,
    _describe_exit,
    _WorkerResult,
    add_pending_case,
    apply_message,
    resolve_models,
    start_run,
)
from harness.suite import Case, Suite
from results.store import Store

ARM_KEYS = ("python", "model", *PARAMS)


@dataclass(frozen=True)
class Arm:
    """What one side changes in the suite's cases."""

    name: str  # "A" or "B"
    spec: str  # as written
    python: str | None = None
    model: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def apply(self, case: Case) -> Case:
        """The case as this arm runs it."""
        params = case.param_dict
        for key, value in self.params:
            if key not in params:
                raise TokbenchError(f"--{self.name.lower()} {self.spec!r}: backend {case.backend} does "
                                    f"not take {key}; it takes {', '.join(params)}")
            params[key] = value
        return Case(case.backend, self.model or case.model, case.workload, tuple(params.items()))


def parse_arm(name: str, text: str) -> Arm:
    """Parse `--a`/`--b`: space-separated key=value items; an empty spec changes nothing."""
    where = f"--{name.lower()} {text!r}"
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise TokbenchError(f"{where}: {exc}; quote values that contain spaces") from None
    found: dict[str, Any] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value:
            raise TokbenchError(f"{where}: {token!r} is not key=value; write e.g. threads=2, "
                                "python=/path/to/venv/bin/python or model=other.gguf")
        if key not in ARM_KEYS:
            hint = difflib.get_close_matches(key, ARM_KEYS, n=1)
            raise TokbenchError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                else "") + f"; use {', '.join(ARM_KEYS)}")
        if key in found:
            raise TokbenchError(f"{where}: {key} is given twice; an arm takes one value per key")
        if key == "python" and not (shutil.which(value) or Path(value).is_file()):
            raise TokbenchError(f"{where}: interpreter {value} does not exist; give the path of "
                                "the engine venv's bin/python")
        found[key] = PARAMS[key].coerce(value, where) if key in PARAMS else value
    params = tuple((k, v) for k, v in found.items() if k in PARAMS)
    return Arm(name, text, found.get("python"), found.get("model"), params)


def abba(n_blocks: int) -> list[str]:
    """The arm of each block: A B B A A B B A …, n_blocks of each arm."""
    return list(islice(cycle("ABBA"), 2 * n_blocks))


def pairs(suite: Suite, arm_a: Arm, arm_b: Arm) -> list[tuple[Case, Case]]:
    """(A case, B case) for each suite case, duplicates dropped."""
    return list(dict.fromkeys((arm_a.apply(c), arm_b.apply(c)) for c in suite.cases))


class _Session:
    """One arm's persistent worker for one case: started and warmed up once, asked for blocks of
    trials, closed. Each message is recorded as it arrives."""

    def __init__(self, runner: ABRunner, arm: str, case: Case, case_id: int, index: int,
                 request: dict[str, Any]) -> None:
        self.runner, self.arm, self.case, self.case_id, self.index = runner, arm, case, case_id, index
        self.request = request
        self.result = _WorkerResult()
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - lives until close()
        self.proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.result.status == "running"

    def start(self) -> bool:
        store = self.runner.store
        store.update_case(self.case_id, status="running", started_at=time.time())
        self.result.status = "running"
        self.proc = self.runner.workers[self.arm].spawn(self.case.backend, self.request, self.err,
                                                        keep_stdin=True)
        self.runner.hooks.worker_started(self.index, self.proc.pid)
        return self._until("ready")

    def block(self, n: int) -> bool:
        return self._send({"op": "trials", "n": n}) and self._until("block_done")

    def _send(self, command: dict[str, Any]) -> bool:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        return True

    def _until(self, kind: str) -> bool:
        """Record messages until `kind` arrives; False when the worker fails, ends or times out."""
        assert self.proc is not None
        timeout = self.runner.suite.timeout_s
        for msg in Workers.messages(self.proc, time.monotonic() + timeout):
            if msg is None:
                Workers.kill(self.proc)
                self.result.status = "error"
                self.result.error = (f"timed out after {timeout:g} s ({self.result.trials}/"
                                     f"{self.runner.suite.repetitions} trials done); raise --timeout "
                                     "if the case is just slow")
                return False
            if msg["type"] == kind:
                return True
            apply_message(self.runner.store, self.runner.hooks, self.case_id, self.index, msg,
                          self.result)
            if self.result.status != "running":
                return False
        return False

    def close(self, kill: bool = False) -> _WorkerResult:
        """Ask the worker to finish (or kill it), then write the case's final record."""
        if self.proc is None:
            return self.result
        if kill:
            Workers.kill(self.proc)
        elif self.alive and self._send({"op": "close"}):
            self._until("end of stream")  # records `done` (memory figures)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            returncode = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            Workers.kill(self.proc)
            returncode = self.proc.returncode
        self.err.seek(0)
        stderr_tail = self.err.read().decode(errors="replace")[-_STDERR_TAIL:]
        self.err.close()
        result = self.result
        if kill:
            result.status, result.error = "interrupted", "interrupted by the user"
        elif result.status == "running":
            result.status = "error"
            result.error = _describe_exit(returncode, result.trials, self.runner.suite.repetitions)
            result.detail = stderr_tail
        elif result.status == "error" and not result.detail:
            result.detail = stderr_tail
        self.runner.store.update_case(self.case_id, status=result.status, error=result.error,
                                      error_detail=result.detail, finished_at=time.time(),
                                      **result.updates)
        return result


class ABRunner:
    """Runs the (A, B) case pairs of a suite, interleaved, into one stored run."""

    def __init__(self, store: Store, suite: Suite, arm_a: Arm, arm_b: Arm, block: int = 1,
                 hooks: Hooks | None = None, measure_bandwidth: bool = True) -> None:
        if block < 1:
            raise TokbenchError(f"--block must be ≥ 1 trial (got {block})")
        self.store, self.suite, self.block = store, suite, block
        self.arms = {"A": arm_a, "B": arm_b}
        self.hooks = hooks or Hooks()
        self.measure_bandwidth = measure_bandwidth
        self.pairs = pairs(suite, arm_a, arm_b)
        backends = {c.backend for pair in self.pairs for c in pair}
        self.workers = {
            name: Workers({b: arm.python for b in backends} if arm.python else suite.python)
            for name, arm in self.arms.items()
        }

    def _engines(self) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
        """Engine info per (arm, backend), probed under each arm's interpreter, and the run
        profile's engines: one entry per backend, or one per arm where the arms' builds differ."""
        per_arm = {(arm, c.backend): None for pair in self.pairs for arm, c in zip("AB", pair, strict=True)}
        for arm, backend in per_arm:
            per_arm[arm, backend] = self.workers[arm].probe(backend)
        profile: dict[str, Any] = {}
        for backend in dict.fromkeys(b for _, b in per_arm):
            a, b = per_arm.get(("A", backend)), per_arm.get(("B", backend))
            if a == b or b is None or a is None:
                profile[backend] = a or b
            else:
                profile[f"{backend} [A]"], profile[f"{backend} [B]"] = a, b
        return per_arm, profile

    def run(self, command: str) -> RunOutcome:
        suite = self.suite
        cases = [c for pair in self.pairs for c in pair]
        resolved = resolve_models(cases)
        engines, profile_engines = self._engines()
        profile = hardware.collect(bandwidth=self.measure_bandwidth, engines=profile_engines)
        run_id = start_run(self.store, command, profile)
        case_ids = [add_pending_case(self.store, run_id, index, case, resolved[index],
                                     suite.repetitions, engines["AB"[index % 2], case.backend],
                                     arm="AB"[index % 2])
                    for index, case in enumerate(cases)]
        self.hooks.run_started(run_id, len(cases))
        outcome = RunOutcome(run_id, "complete")
        try:
            for k in range(len(self.pairs)):
                self._run_pair(k, cases[2 * k: 2 * k + 2], case_ids[2 * k: 2 * k + 2],
                               resolved[2 * k: 2 * k + 2], outcome)
        except KeyboardInterrupt:
            outcome.status = "interrupted"
            self.store.update_run(run_id, status="interrupted", finished_at=time.time())
            raise
        finally:
            for workers in self.workers.values():
                workers.close()
        outcome.status = "failed" if outcome.failed else "complete"
        self.store.update_run(run_id, status=outcome.status, finished_at=time.time())
        return outcome

    def _run_pair(self, k: int, cases: list[Case], case_ids: list[int],
                  resolved: list[models.ResolvedModel], outcome: RunOutcome) -> None:
        sessions: list[_Session] = []
        interrupted = False
        try:
            for j, (arm, case, case_id) in enumerate(zip("AB", cases, case_ids, strict=True)):
                index = 2 * k + j
                self.hooks.case_started(index, case)
                request = {
                    "op": "serve", "backend": spec_for(case.backend),
                    "model_path": str(resolved[j].path), "params": case.param_dict,
                    "seed": self.suite.seed + k,  # both arms see the same prompt tokens
                    "workload": {"n_prompt": case.workload.n_prompt, "n_gen": case.workload.n_gen,
                                 "n_depth": case.workload.n_depth},
                    "warmup": self.suite.warmup,
                }
                session = _Session(self, arm, case, case_id, index, request)
                sessions.append(session)
                if not session.start():
                    break
            if len(sessions) == 2 and all(s.alive for s in sessions):
                left = {"A": self.suite.repetitions, "B": self.suite.repetitions}
                n_blocks = -(-self.suite.repetitions // self.block)
                by_arm = {s.arm: s for s in sessions}
                for arm in abba(n_blocks):
                    n = min(self.block, left[arm])
                    left[arm] -= n
                    if n and not by_arm[arm].block(n):
                        break
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            for j, session in enumerate(sessions):
                result = session.close(kill=interrupted)
                if result.status != "ok" and not interrupted:
                    outcome.failed.append((2 * k + j, f"{session.arm}: {session.case.label()}",
                                           result.error or result.status))
                self.hooks.case_done(2 * k + j, result.status, result.error)
            for j in range(len(sessions), 2):  # the B worker never started: A's start failed
                self.store.update_case(case_ids[j], status="error", error="not run: the other arm failed")
                outcome.failed.append((2 * k + j, f"{'AB'[j]}: {cases[j].label()}",
                                       "not run: the other arm failed"))
