"""Copying runs between stores (`tokbench push` / `pull`): a machine's SQLite file to the fleet's
PostgreSQL database and back.

A run travels whole, in one transaction on the target (run, cases, trials, requests), so a
connection dropped mid-copy leaves no half run; run ids are unique across machines, so a run the
target already holds is skipped and copying twice adds nothing. A run still being measured is
not copied until it ends."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from harness.common.errors import TokbenchError
from results.store import Store


@dataclass(frozen=True)
class Copied:
    run_id: str
    added: bool  # False: the target already held it
    n_cases: int = 0
    n_trials: int = 0
    n_requests: int = 0


def copy_run(source: Store, target: Store, run_id: str) -> Copied:
    """Copy one run from source to target, whole or not at all."""
    run = source.run(run_id)
    if source.run_state(run).startswith("running"):
        raise TokbenchError(f"run {run_id} is still running: copy it when it ends")
    cases = source.cases(run_id)
    trials, requests = defaultdict(list), defaultdict(list)
    for row in source.trials(run_id):
        trials[row.pop("case_id")].append(row)
    for row in source.requests(run_id):
        requests[row.pop("case_id")].append(row)
    with target.transaction():
        target.claim(run_id)  # a concurrent copy of the same run waits here, then finds it present
        if target.has_run(run_id):
            return Copied(run_id, added=False)
        target.add_run(**{k: v for k, v in run.items() if k not in ("n_cases", "n_failed")})
        for case in cases:
            old_id = case.pop("case_id")
            new_id = target.add_case(**case)
            target.add_rows("trials", [{**r, "case_id": new_id} for r in trials[old_id]])
            target.add_rows("requests", [{**r, "case_id": new_id} for r in requests[old_id]])
    return Copied(run_id, True, len(cases), sum(map(len, trials.values())),
                  sum(map(len, requests.values())))


def unsent(source: Store, target: Store) -> list[str]:
    """Runs of source that target lacks and that have ended (what `push --all` sends)."""
    have = target.run_ids()
    return [r["run_id"] for r in source.runs()
            if r["run_id"] not in have and not source.run_state(r).startswith("running")]


def describe(copied: Copied, where: str) -> str:
    if not copied.added:
        return f"{copied.run_id}: already in {where}, nothing added"
    parts: list[Any] = [f"{copied.n_cases} cases", f"{copied.n_trials} trial samples"]
    if copied.n_requests:
        parts.append(f"{copied.n_requests} requests")
    return f"{copied.run_id}: copied to {where} ({', '.join(parts)})"
