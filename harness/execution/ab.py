"""`tokbench ab`: two arms of one suite on one machine, their trials interleaved in ABBA blocks.

An arm is the suite with a few things changed: its worker interpreter (an engine build in its
own venv), its model source, or case parameters, written `key=value` (`python=/venv/bin/python
threads=2`). For each case, both arms' workers are started and warmed up once, one after the
other, then asked for blocks of trials in the order A B B A A B B A …, so that drift (heat,
other jobs on a shared runner) hits both arms alike. An idle worker pauses its engine's
threads. Every trial is stored as it arrives, in one ordinary run whose cases carry arm A or B.

With a sequential plan (harness.gate.sequential; `tokbench ab`'s default) a pair runs ABBA units
(A B B A, `block` trials each) until the `stop` rule says its verdict is decided, its trial cap
is reached, or its share of the time budget (what is left, split over the pairs left) would run
out before one more unit; how it stopped is written as a note on both of its cases.
"""

from __future__ import annotations

import difflib
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import cycle, islice
from pathlib import Path
from typing import Any

from harness.common.errors import TokbenchError
from harness.execution import memory_guard
from harness.execution.engines import probe_engines
from harness.execution.lifecycle import Hooks, Workers, WorkerSession
from harness.execution.params import PARAMS
from harness.execution.runner import (
    RunOutcome,
    add_pending_case,
    case_request,
    final_status,
    finish_case,
    open_request,
    resolve_models,
    skip_case,
    start_run,
)
from harness.execution.suite import Case, Suite, load_key
from harness.gate.sequential import Plan
from harness.hardware import profile as hardware
from harness.models import sources as models
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


class ABRunner:
    """Runs the (A, B) case pairs of a suite, interleaved, into one stored run. Each arm keeps one
    worker per model load, as `run` does, so consecutive pairs that share their loads reuse them."""

    def __init__(self, store: Store, suite: Suite, arm_a: Arm, arm_b: Arm, block: int = 1,
                 hooks: Hooks | None = None, measure_bandwidth: bool = True, plan: Plan | None = None,
                 stop: Callable[[dict[str, Any], dict[str, Any]], str | None] | None = None) -> None:
        """`plan` and `stop` make the run sequential: `stop(A case, B case)` (stored-case dicts with
        their trials so far) says why the pair may stop now, or None to go on."""
        if block < 1:
            raise TokbenchError(f"--block must be ≥ 1 trial (got {block})")
        if (plan is None) != (stop is None):
            raise ValueError("a sequential run needs both a plan and a stop rule")
        self.store, self.suite, self.block = store, suite, block
        self.plan, self.stop = plan, stop
        self._deadline = 0.0
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
        per_arm: dict[tuple[str, str], Any] = {}
        for arm in "AB":
            backends = dict.fromkeys(pair["AB".index(arm)].backend for pair in self.pairs)
            for backend, info in probe_engines(self.workers[arm], backends).items():
                per_arm[arm, backend] = info
        profile: dict[str, Any] = {}
        for backend in dict.fromkeys(b for _, b in per_arm):
            a, b = per_arm.get(("A", backend)), per_arm.get(("B", backend))
            if a == b or b is None or a is None:
                profile[backend] = a or b
            else:
                profile[f"{backend} [A]"], profile[f"{backend} [B]"] = a, b
        return per_arm, profile

    def run(self, command: str) -> RunOutcome:
        if self.plan is not None:  # the whole command's time: probes and model loads included
            self._deadline = time.monotonic() + self.plan.budget_s
        suite = self.suite
        cases = [c for pair in self.pairs for c in pair]
        resolved = resolve_models(cases)
        for warning in memory_guard.check_fits(cases, resolved, suite.force):
            self.hooks.warn(warning)
        engines, profile_engines = self._engines()
        profile = hardware.collect(bandwidth=self.measure_bandwidth, engines=profile_engines)
        run_id = start_run(self.store, command, profile)
        case_ids = [add_pending_case(self.store, run_id, index, case, resolved[index],
                                     suite.repetitions, engines["AB"[index % 2], case.backend],
                                     arm="AB"[index % 2])
                    for index, case in enumerate(cases)]
        self.hooks.run_started(run_id, len(cases))
        outcome = RunOutcome(run_id, "complete")
        sessions: dict[str, WorkerSession | None] = {"A": None, "B": None}
        try:
            with final_status(self.store, outcome, self.hooks, command):
                for k in range(len(self.pairs)):
                    for j, arm in enumerate("AB"):
                        sessions[arm] = self._session(arm, 2 * k + j, k, cases, resolved, sessions[arm])
                    share = (self._deadline - time.monotonic()) / (len(self.pairs) - k)
                    self._run_pair(k, cases[2 * k: 2 * k + 2], case_ids[2 * k: 2 * k + 2],
                                   [sessions["A"], sessions["B"]], outcome, time.monotonic() + share)
        finally:
            for session in sessions.values():
                if session is not None:
                    session.close()
            for workers in self.workers.values():
                workers.close()
        return outcome

    def _session(self, arm: str, index: int, k: int, cases: list[Case],
                 resolved: list[models.ResolvedModel], session: WorkerSession | None) -> WorkerSession:
        """The arm's worker for case `index`: the one it has when it holds this case's model load
        and is alive (and the suite does not isolate cases), else a fresh one."""
        key = load_key(cases[index])
        if session is not None and not session.dead and session.key == key and not self.suite.isolate:
            return session
        if session is not None:
            session.close()
        group = [cases[i] for i in range(index, len(cases), 2) if load_key(cases[i]) == key]
        return WorkerSession(self.workers[arm], cases[index].backend, open_request(
            cases[index], resolved[index], self.suite.seed + k, group, idle=True),
            self.store, self.hooks, self.suite.timeout_s, key=key)

    def _run_pair(self, k: int, cases: list[Case], case_ids: list[int], sessions: list[Any],
                  outcome: RunOutcome, deadline: float = 0.0) -> None:
        started: list[WorkerSession] = []
        stopped: str | None = None
        try:
            for j, session in enumerate(sessions):
                self.hooks.case_started(2 * k + j, cases[j])
                started.append(session)
                request = case_request(cases[j], self.suite.seed + k, self.suite.warmup)
                if not session.begin(case_ids[j], 2 * k + j, request, self.suite.repetitions):
                    break  # both arms' prompts come from seed + k: they see the same tokens
            if len(started) == 2 and not any(s.dead for s in started) and self.plan is not None:
                stopped = self._units(case_ids, dict(zip("AB", sessions, strict=True)), deadline)
            elif len(started) == 2 and not any(s.dead for s in started):
                left = {"A": self.suite.repetitions, "B": self.suite.repetitions}
                n_blocks = -(-self.suite.repetitions // self.block)
                by_arm = dict(zip("AB", sessions, strict=True))
                for arm in abba(n_blocks):
                    n = min(self.block, left[arm])
                    left[arm] -= n
                    if n and not by_arm[arm].block(n):
                        break
        except BaseException as exc:  # a signal, or the store failing: no worker outlives it
            for session in started:
                session.abort(exc)
            raise
        for j, session in enumerate(started):
            result = session.end()
            if stopped is not None and self.plan is not None:
                trials = len({t["trial"] for t in self.store.trials(outcome.run_id, case_ids[j])})
                notes = self.store.case(case_ids[j]).get("notes") or []
                self.store.update_case(case_ids[j], notes=[*notes, self.plan.note(trials, stopped)])
            finish_case(outcome, self.hooks, 2 * k + j, f"{'AB'[j]}: {cases[j].label()}", result,
                        self.store)
        for j in range(len(started), 2):  # the B worker never started: A's start failed
            skip_case(self.store, self.hooks, outcome, 2 * k + j, cases[j], case_ids[j],
                      "not run: the other arm failed")

    def _units(self, case_ids: list[int], by_arm: dict[str, WorkerSession], deadline: float) -> str | None:
        """A sequential pair's ABBA units, until a reason to stop (None: a worker failed). The first
        unit always runs; later ones only when the slowest unit so far still fits the deadline."""
        assert self.plan is not None and self.stop is not None
        plan, trials, took = self.plan, 0, [0.0]
        while True:
            if trials + plan.unit > plan.max_trials:
                return f"trial cap reached ({plan.max_trials} per arm)"
            if trials and time.monotonic() + max(took) > deadline:
                return f"time budget reached (this pair's share of {plan.budget_s:g} s)"
            started = time.monotonic()
            for arm in abba(2):
                if not by_arm[arm].block(self.block):
                    return None
            took.append(time.monotonic() - started)
            trials += plan.unit
            reason = self.stop(*(self._case_doc(case_id) for case_id in case_ids))
            if reason is not None:
                return reason

    def _case_doc(self, case_id: int) -> dict[str, Any]:
        """A stored case with its trials so far, as the gate reads it."""
        case = self.store.case(case_id)
        return {**case, "trials": self.store.trials(case["run_id"], case_id)}
