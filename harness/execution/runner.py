"""Runs a suite: a worker per model load serves every case that shares it, each trial stored as
soon as it arrives.

Cases that share backend, model and every parameter that reloads a model run in one worker,
which loads the model once (llama-bench's reuse). A case that crashes, hangs past the timeout
or is killed for memory becomes an error record, and a fresh worker takes the cases left;
`isolate` gives every case its own worker. The runner never imports an engine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import harness
from backends.registry import load_class, spec_for
from harness.execution import memory_guard
from harness.execution.engines import probe_engines
from harness.execution.lifecycle import CaseResult, Hooks, Workers, WorkerSession
from harness.execution.live_runs import LiveRun
from harness.execution.live_runs import describe as describe_contention
from harness.execution.searches import SearchPlan
from harness.execution.suite import Case, Suite, load_key
from harness.hardware import profile as hardware
from harness.models import sources as models
from results.store import Store, new_run_id


@dataclass
class RunOutcome:
    run_id: str
    status: str
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (index, label, error)
    live: Any = None  # the run's LiveRun while it runs: checked for contention after each case


def worker_groups(cases: list[Case], isolate: bool) -> list[list[int]]:
    """Indices of the cases one worker serves: consecutive cases with one load key (the suite
    keeps those together), or one case each when isolated."""
    groups: list[list[int]] = []
    for i, case in enumerate(cases):
        if groups and not isolate and load_key(cases[groups[-1][-1]]) == load_key(case):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def open_request(case: Case, model: models.ResolvedModel, seed: int, cases: list[Case],
                 idle: bool) -> dict[str, Any]:
    """The worker's first request: the model to load, with room for every case it will serve."""
    return {
        "op": "open", "backend": spec_for(case.backend), "model_path": str(model.path),
        "params": case.param_dict, "seed": seed, "idle": idle,
        "n_ctx": max(c.workload.n_ctx for c in cases),
        "n_seq": max(int(c.param_dict.get("batch", 1)) for c in cases),
    }


def case_request(case: Case, seed: int, warmup: bool) -> dict[str, Any]:
    wl = case.workload
    return {"params": case.param_dict, "n_ctx": wl.n_ctx, "seed": seed, "warmup": warmup,
            "workload": wl.spec()}


class Runner:
    def __init__(self, store: Store, suite: Suite, hooks: Hooks | None = None,
                 measure_bandwidth: bool = True) -> None:
        self.store, self.suite = store, suite
        self.hooks = hooks or Hooks()
        self.measure_bandwidth = measure_bandwidth
        self.workers = Workers(suite.python)

    def run(self, command: str) -> RunOutcome:
        suite = self.suite
        resolved = resolve_models(suite.cases)
        for warning in memory_guard.check_fits(suite.cases, resolved, suite.force):
            self.hooks.warn(warning)
        engines = probe_engines(self.workers, dict.fromkeys(c.backend for c in suite.cases))
        profile = hardware.collect(bandwidth=self.measure_bandwidth, engines=engines)
        run_id = start_run(self.store, command, profile)
        self.run_id, self.engines, self.next_index = run_id, engines, len(suite.cases)
        # a searched load's steps are recorded as they are chosen
        case_ids = [-1 if case.workload.search else
                    add_pending_case(self.store, run_id, index, case, resolved[index],
                                     suite.repetitions, engines[case.backend], slo=suite.slo)
                    for index, case in enumerate(suite.cases)]
        self.hooks.run_started(run_id, sum(not c.workload.search for c in suite.cases))
        outcome = RunOutcome(run_id, "complete")
        try:
            with final_status(self.store, outcome, self.hooks, command):
                for group in worker_groups(suite.cases, suite.isolate):
                    self._run_group(group, resolved, case_ids, outcome)
        finally:
            self.workers.close()
        return outcome

    def _run_group(self, group: list[int], resolved: list[models.ResolvedModel], case_ids: list[int],
                   outcome: RunOutcome) -> None:
        """Serve a group's cases with as few workers as faults allow: a fresh worker after a case
        that ended its worker; none after a load failure, which the cases left share."""
        suite, cases = self.suite, self.suite.cases
        pending = list(group)
        while pending:
            first = pending[0]
            session = WorkerSession(
                self.workers, cases[first].backend,
                open_request(cases[first], resolved[first], suite.seed + first,
                             [cases[j] for j in pending], idle=False),
                self.store, self.hooks, suite.timeout_s)
            try:
                while pending and not session.dead:
                    i = pending.pop(0)
                    if cases[i].workload.search:  # its steps are finished as they run
                        result = self._search(session, i, resolved[i], outcome)
                    else:
                        self.hooks.case_started(i, cases[i])
                        result = self._serve(session, i, case_ids[i], cases[i])
                        finish_case(outcome, self.hooks, i, cases[i].label(), result, self.store)
                    if result.status != "ok" and session.model is None:  # the model did not load
                        for j in pending:
                            skip_case(self.store, self.hooks, outcome, j, cases[j], case_ids[j],
                                      f"{result.error} (not retried: the same model load failed "
                                      f"for case {i + 1})")
                        pending = []
            finally:
                session.close()

    def _search(self, session: WorkerSession, i: int, model: models.ResolvedModel,
                outcome: RunOutcome) -> CaseResult:
        """Measure a searched load step by step, each step an ordinary serving case recorded when
        it is chosen; the last step records why the search ended."""
        suite, case = self.suite, self.suite.cases[i]
        plan = SearchPlan(case.workload, suite.slo)
        result, case_id = CaseResult("ok"), None
        while (chosen := plan.next_load()) is not None:
            level, load = chosen
            step = Case(case.backend, case.model, load, case.params)
            index, self.next_index = self.next_index, self.next_index + 1
            case_id = add_pending_case(self.store, self.run_id, index, step, model, suite.repetitions,
                                       self.engines[case.backend], slo=suite.slo,
                                       sweep=plan.doc(f"{self.run_id}/{i}", level))
            self.hooks.steps_added(1)
            self.hooks.case_started(index, step)
            result = self._serve(session, index, case_id, step)
            finish_case(outcome, self.hooks, index, step.label(), result, self.store)
            if result.status != "ok":
                plan.stop(f"step {index + 1} ({load.name}) failed: {result.error}")
                break
            trials = self.store.trials(self.run_id, case_id)
            plan.observe(level, load, self.store.requests(self.run_id, case_id),
                         sum(t["duration_ns"] for t in trials) / 1e9)
        if case_id is not None:  # the last step says why the search ended
            doc = self.store.case(case_id)["sweep"]
            self.store.update_case(case_id, sweep={**doc, "stop": plan.reason})
        return result

    def _serve(self, session: WorkerSession, i: int, case_id: int, case: Case) -> CaseResult:
        suite = self.suite
        try:
            if session.begin(case_id, i, case_request(case, suite.seed + i, suite.warmup),
                             suite.repetitions):
                session.block(suite.repetitions)
        except BaseException as exc:  # a signal, or the store failing: no worker outlives it
            session.abort(exc)
            raise
        return session.end()


@contextmanager
def final_status(store: Store, outcome: RunOutcome, hooks: Hooks, command: str) -> Iterator[None]:
    """While the run runs, keep it in the host's live runs (others live meanwhile are recorded
    as contention); then record how it ended: interrupted by a signal, or failed by an error in
    the runner (both re-raised), else failed (some cases) or complete."""
    outcome.live = LiveRun(outcome.run_id, command, str(store.path))
    note_contention(store, outcome, hooks)
    try:
        yield
    except BaseException as exc:
        outcome.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        with suppress(Exception):  # the store may be what failed; `show` then says incomplete
            store.update_run(outcome.run_id, status=outcome.status, finished_at=time.time())
        raise
    finally:
        outcome.live.close()
    outcome.status = "failed" if outcome.failed else "complete"
    store.update_run(outcome.run_id, status=outcome.status, finished_at=time.time())


def note_contention(store: Store, outcome: RunOutcome, hooks: Hooks) -> None:
    """Record and say every other run live on this host that was not seen before."""
    new = outcome.live.check() if outcome.live is not None else []
    if new:
        store.update_run(outcome.run_id, contended=list(outcome.live.seen.values()))
        for other in new:
            hooks.warn(describe_contention(other))


def finish_case(outcome: RunOutcome, hooks: Hooks, index: int, label: str, result: CaseResult,
                store: Store | None = None) -> None:
    if result.status not in ("ok", "interrupted"):
        outcome.failed.append((index, label, result.error or result.status))
    hooks.case_done(index, result.status, result.error)
    if store is not None:
        note_contention(store, outcome, hooks)


def skip_case(store: Store, hooks: Hooks, outcome: RunOutcome, index: int, case: Case, case_id: int,
              error: str) -> None:
    """A case not run because a load it depends on failed for an earlier case."""
    hooks.case_started(index, case)
    store.update_case(case_id, status="error", error=error, finished_at=time.time())
    finish_case(outcome, hooks, index, case.label(), CaseResult("error", error))


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
    """Record a new run (with the runner's pid, so a killed run shows as incomplete). A dispatcher
    (harness.execution.cluster) names the run and the command that started it, with where it
    ran, in $TOKBENCH_RUN_ID and $TOKBENCH_RUN_COMMAND."""
    run_id = os.environ.get("TOKBENCH_RUN_ID") or new_run_id()
    command = os.environ.get("TOKBENCH_RUN_COMMAND") or command
    store.add_run(
        run_id=run_id, started_at=time.time(), status="running", command=command,
        runner_pid=os.getpid(), host=socket.gethostname(),
        tokbench_version=harness.__version__, git_commit=_git_commit(),
        profile=profile, fingerprint=hardware.fingerprint(profile),
    )
    return run_id


def add_pending_case(store: Store, run_id: str, index: int, case: Case, model: models.ResolvedModel,
                     repetitions: int, engine: dict[str, Any], slo: dict[str, float] | None = None,
                     **extra: Any) -> int:
    """Record a case before it runs, so a crash leaves it visible as pending. Its parameters and
    the backend's defaults are stored whole, so reports never need the backend class; a serving
    case stores its load and the SLOs its goodput is judged by."""
    if case.workload.serving:
        extra["load"] = {**case.workload.load_doc(), "slo": slo or {}}
    return store.add_case(
        run_id=run_id, case_index=index, backend=case.backend, model=case.model,
        model_path=str(model.path), model_id=model.model_id, quant=model.quant,
        model_file_bytes=model.file_bytes, workload=case.workload.name,
        n_prompt=case.workload.n_prompt, n_gen=case.workload.n_gen,
        n_depth=case.workload.n_depth, params=case.param_dict,
        param_defaults=load_class(spec_for(case.backend)).defaults,
        repetitions=repetitions, status="pending", engine=engine, **extra,
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
