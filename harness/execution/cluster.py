"""Dispatch a suite to every node of a Ray cluster: each node runs the ordinary runner on itself,
with its own hardware profile and fingerprint, and writes to the fleet store.

The head (the `tokbench run --cluster` process) connects to the cluster, picks the alive nodes
(those with a given resource label, if asked), gives each a run id, and starts one Ray task pinned
to each node (hard node affinity, no CPU slot, never retried: a retry would measure twice). The
task takes the node's lock, so two dispatches never measure on one node at once, and runs
`python -m harness.cli run …` in a subprocess with the pre-assigned run id ($TOKBENCH_RUN_ID) and
the head's command line plus where it ran ($TOKBENCH_RUN_COMMAND) — the same runner, output and
signal handling as a local run, in the environment the node started its Ray worker with (not
Ray's per-task additions such as OMP_NUM_THREADS=1).

A node that dies mid-suite leaves its run for the head to settle: the cases it had not finished
become error records naming the node, cases it never recorded are added as such, and the run is
failed; the other nodes' runs are untouched. A cancelled task (Ctrl-C at the head) sends SIGTERM
to its runner, which marks the case in progress and the run interrupted, as locally.

Ray is imported lazily: it is an optional extra (`pip install 'tokbench[cluster]'`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.common.errors import TokbenchError

if TYPE_CHECKING:  # the node's task imports this module: it stays light (no store, no suites)
    from harness.execution.suite import Case, Suite
    from harness.models.sources import ResolvedModel
    from results.store import Store

INSTALL_HINT = "pip install 'tokbench[cluster]'"
OUTPUT_TAIL = 4000  # characters of a node runner's output sent back to the head
TERM_GRACE_S = 30.0  # a runner told to stop (SIGTERM) that has not exited by then is killed
CANCEL_GRACE_S = 40.0  # cancelled tasks not ended by then are force-killed
SETTLE_GRACE_S = 1.0  # after a node's death, before its run is settled: its last writes land
POLL_S = 0.2
CONNECT_TIMEOUT_S = 10.0
_INTERRUPTED_CODES = (130, 143, 129)  # the runner's exit codes after SIGINT, SIGTERM, SIGHUP
_RAY_NODE_FAILURES = ("NodeDiedError", "WorkerCrashedError", "ActorDiedError", "ObjectLostError",
                      "OwnerDiedError", "LocalRayletDiedError", "TaskUnschedulableError")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise TokbenchError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class Node:
    node_id: str
    host: str
    address: str
    resources: dict[str, float]

    @property
    def short(self) -> str:
        return self.node_id[:8]


def connect(address: str) -> Any:
    """ray.init() on a running cluster (ray://HOST:PORT through the Ray client, or a GCS HOST:PORT);
    one line when it cannot."""
    ray = import_ray()
    import logging
    import warnings

    hint = "give ray://HEAD:10001 (its client server) or HEAD:6379 (its GCS)"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():  # Ray waits minutes for an unreachable GCS: fail in seconds
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise TokbenchError(f"--cluster {address}: cannot reach {host}:{port} "
                                f"({exc.strerror or exc}); {hint}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        first = _first_line(str(exc)) or type(exc).__name__
        raise TokbenchError(f"--cluster {address}: cannot connect to the Ray cluster ({first}); "
                            f"{hint}") from None


def disconnect() -> None:
    ray = import_ray()
    ray.shutdown()


_NOT_LABELS = ("CPU", "memory", "object_store_memory")


def alive_nodes(labels: Iterable[str] = ()) -> list[Node]:
    """The cluster's alive nodes; with labels, those that have any of these resources."""
    ray = import_ray()
    wanted = [label for label in labels if label]
    nodes = [Node(n["NodeID"], n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "?"),
                  n.get("NodeManagerAddress", "?"), dict(n.get("Resources") or {}))
             for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        raise TokbenchError("the Ray cluster has no alive nodes")
    chosen = [n for n in nodes if not wanted or any(n.resources.get(w, 0) > 0 for w in wanted)]
    if not chosen:
        have = sorted({r for n in nodes for r in n.resources
                       if r not in _NOT_LABELS and not r.startswith("node:")})
        raise TokbenchError(f"--nodes {','.join(wanted)}: no alive node of the cluster has that "
                            f"resource; its nodes have: {', '.join(have) or 'no custom resources'}")
    return sorted(chosen, key=lambda n: (n.host, n.node_id))


def all_local(nodes: Iterable[Node]) -> bool:
    """Whether every node runs on this host (they then share its filesystem)."""
    return all(n.host == socket.gethostname() for n in nodes)


def lock_path(node_id: str) -> Path:
    """The file lock one Ray node's measurements take turns on (keyed by node, not host: the
    nodes of a local test cluster share a host)."""
    return Path(tempfile.gettempdir()) / f"tokbench-ray-node-{node_id}.lock"


# -- on the node ------------------------------------------------------------------------------------
# A launcher that dies with its parent (the Ray worker: a force-cancelled task, a dead node) by
# SIGTERM on Linux, then becomes the runner (the death signal survives exec).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"
    "    if os.getppid() != int(sys.argv[1]): os._exit(143)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'harness.cli', *sys.argv[2:]])\n"
)


def node_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment the node's Ray worker was started with (the node's own: Ray sets
    OMP_NUM_THREADS=1, visible-device variables and others for each task, which would change what
    an engine does), plus the dispatch's variables."""
    import psutil

    try:
        env = dict(psutil.Process().environ())
    except (psutil.Error, OSError, NotImplementedError):
        env = dict(os.environ)
        if env.get("PYTHONBREAKPOINT", "").startswith("ray."):
            env.pop("PYTHONBREAKPOINT")
    return {**env, **overrides}


def _raylet_alive(pid: int | None) -> bool:
    if not pid:
        return True
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _wait_runner(proc: subprocess.Popen, raylet_pid: int | None) -> tuple[int, bool]:
    """Wait for the runner: its exit code, and whether the node died under it. If the node's
    raylet dies the runner is killed at once (the node is dead to the cluster, and the head
    settles its run); if the task is cancelled (an exception raised in this thread) the runner
    gets SIGTERM and time to mark its run interrupted."""
    try:
        while True:
            try:
                return proc.wait(timeout=POLL_S), False
            except subprocess.TimeoutExpired:
                pass
            if not _raylet_alive(raylet_pid):
                proc.kill()
                return proc.wait(), True
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def node_task(job: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: on its node, under the node's lock, run the suite with the ordinary runner.
    Returns the runner's exit code and the tail of its output."""
    from filelock import FileLock, Timeout

    # Ray cancels a running task with a KeyboardInterrupt raised by SIGINT; a node started from a
    # background shell or under nohup ignores SIGINT (and Python then installs no handler), so the
    # cancel would never arrive and the node would measure on for nobody
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        with suppress(ValueError):  # not the worker's main thread: Ray's own handler is in place
            signal.signal(signal.SIGINT, signal.default_int_handler)
    lock = FileLock(str(lock_path(job["node_id"])))
    asked = time.monotonic()
    while True:  # in steps, so a cancellation reaches this thread
        try:
            lock.acquire(timeout=1.0)
            break
        except Timeout:
            continue
    waited = time.monotonic() - asked
    try:
        with tempfile.TemporaryDirectory(prefix=f"tokbench-{job['run_id']}-") as tmp:
            argv = ["run", *job["options"]]
            if job.get("suite_text") is not None:
                suite = Path(tmp) / job["suite_name"]
                suite.write_text(job["suite_text"])
                argv.append(str(suite))
            env = node_environment({"TOKBENCH_RUN_ID": job["run_id"], "TOKBENCH_RUN_COMMAND": job["command"],
                                    "TOKBENCH_STORE": job["store"]})
            raylet = env.get("RAY_RAYLET_PID") or os.environ.get("RAY_RAYLET_PID")
            log = Path(tmp) / "runner.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
                code, died = _wait_runner(proc, int(raylet) if raylet and raylet.isdigit() else None)
            text = log.read_text(errors="replace")
    finally:
        lock.release()
    return {"returncode": code, "output": text[-OUTPUT_TAIL:], "host": socket.gethostname(),
            "waited_s": waited, "node_died": died}


# -- at the head ------------------------------------------------------------------------------------
@dataclass
class NodeRun:
    """One node's part of a dispatch, and how it ended."""

    node: Node
    run_id: str
    status: str = "dispatched"  # then the run's: complete | failed | interrupted
    note: str | None = None  # why the node failed, one line
    output: str = ""  # the tail of the node runner's output
    n_cases: int = 0
    n_ok: int = 0
    waited_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _error_line(output: str) -> str | None:
    """The runner's one-line error (`tokbench: error: …`), if it printed one."""
    found = re.findall(r"tokbench: error: (.*)", output)
    return found[-1].strip() if found else None


def describe_failure(exc: BaseException, node: Node) -> str:
    """A one-line error for a node whose task failed: dead, or its task broke."""
    ray = import_ray()
    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        cause = exc.cause
    name = type(cause).__name__
    detail = _first_line(str(cause))[:200]
    died = any(c.__name__ in _RAY_NODE_FAILURES for c in type(cause).__mro__)
    if not died:
        with suppress(Exception):
            died = not any(n["NodeID"] == node.node_id and n.get("Alive") for n in ray.nodes())
    if died:
        return f"node {node.short} ({node.host}) died mid-suite ({name}: {detail})"
    return f"node {node.short} ({node.host}): its Ray task failed ({name}: {detail})"


def dispatch(store: Store, nodes: list[Node], suite: Suite, job: dict[str, Any],
             say: Callable[[NodeRun], None] = lambda nr: None) -> list[NodeRun]:
    """Run the suite once on each node and wait for all; settle the runs of nodes that died.
    `job` holds what every node gets (options, suite text and name, store, command); `say` is
    called as each node ends. A KeyboardInterrupt (Ctrl-C) cancels the tasks, settles the runs and
    is re-raised."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from results.store import new_run_id

    task = ray.remote(num_cpus=0, max_retries=0)(node_task)
    runs: dict[Any, NodeRun] = {}
    ids: set[str] = set()
    started_at = time.time()
    for node in nodes:
        run_id = new_run_id()
        while run_id in ids:  # a dispatch starts its runs in one second: keep their ids apart
            run_id = new_run_id()
        ids.add(run_id)
        command = f"{job['command']} [ray node {node.node_id} on {node.host}, {job['cluster']}]"
        ref = task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            name=f"tokbench run {run_id}",
        ).remote({**job, "run_id": run_id, "node_id": node.node_id, "command": command})
        runs[ref] = NodeRun(node, run_id, extra={"command": command})
    pending, settled = list(runs), set()
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                _collect(ray, ref, runs[ref])
                settle(store, runs[ref], suite, started_at)
                settled.add(ref)
                say(runs[ref])
    except BaseException as exc:  # Ctrl-C, or the head failed: no node goes on measuring for nobody
        left = [ref for ref in runs if ref not in settled]
        _cancel(ray, left)
        if isinstance(exc, KeyboardInterrupt):
            for ref in left:
                with suppress(Exception):
                    _collect(ray, ref, runs[ref], interrupted=True)
                settle(store, runs[ref], suite, started_at, interrupted=True)
                say(runs[ref])
        raise
    return list(runs.values())


def _collect(ray: Any, ref: Any, nr: NodeRun, interrupted: bool = False) -> None:
    """What the node's task returned, or why it failed, onto nr."""
    try:
        result = ray.get(ref, timeout=0 if interrupted else None)
    except ray.exceptions.TaskCancelledError:
        nr.status = "interrupted"
        return
    except ray.exceptions.GetTimeoutError:
        nr.status = "interrupted"
        return
    except Exception as exc:  # the node died, or its task could not run there
        if interrupted and isinstance(getattr(exc, "cause", None), (KeyboardInterrupt,)):
            nr.status = "interrupted"
            return
        nr.status, nr.note = "failed", describe_failure(exc, nr.node)
        nr.extra["died"] = True
        return
    nr.output, nr.waited_s = result["output"], result["waited_s"]
    code = result["returncode"]
    nr.extra["returncode"] = code
    if result.get("node_died"):  # its raylet died; the worker outlived it long enough to say so
        nr.status, nr.note = "failed", (f"node {nr.node.short} ({nr.node.host}) died mid-suite "
                                        "(its raylet is gone; its runner was stopped)")
        nr.extra["died"] = True
    elif code in _INTERRUPTED_CODES:
        nr.status = "interrupted"
    elif code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        nr.status, nr.note = "failed", (f"node {nr.node.short} ({nr.node.host}): its runner was "
                                        f"killed by {sig} mid-suite")
    elif code not in (0, 1):
        nr.status = "failed"
        nr.note = (f"node {nr.node.short} ({nr.node.host}): "
                   + (_error_line(nr.output) or f"its runner exited with code {code}"))
    else:
        nr.status = "complete" if code == 0 else "failed"


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel the tasks: their runners get SIGTERM and time to record the interruption; tasks
    still running after CANCEL_GRACE_S are force-killed (a runner then gets SIGTERM as its parent
    dies, on Linux)."""
    for ref in refs:
        with suppress(Exception):
            ray.cancel(ref, force=False)
    deadline = time.monotonic() + CANCEL_GRACE_S
    left = list(refs)
    while left and time.monotonic() < deadline:
        _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
    for ref in left:
        with suppress(Exception):
            ray.cancel(ref, force=True)


def settle(store: Store, nr: NodeRun, suite: Suite, started_at: float, interrupted: bool = False) -> None:
    """Bring the node's run to a final state in the store and read back its counts.

    A node that failed (died, its runner killed, or an error before it ran) leaves cases pending or
    running, or no run at all: those cases become error records naming the node (missing ones are
    added, so the run lists the whole suite) and the run is failed. An interrupted node's run still
    marked running (its runner could not say so itself) is marked interrupted."""
    from harness.execution.runner import add_pending_case

    now = time.time()
    if nr.note:
        if nr.extra.get("died"):
            time.sleep(SETTLE_GRACE_S)
        exists = store.has_run(nr.run_id)
        if not exists:
            store.add_run(run_id=nr.run_id, started_at=started_at, status="failed", finished_at=now,
                          command=nr.extra.get("command"), host=nr.node.host)
        recorded = {c["case_index"]: c for c in store.cases(nr.run_id)} if exists else {}
        for case in recorded.values():
            if case["status"] in ("pending", "running"):
                store.update_case(case["case_id"], status="error", error=nr.note, finished_at=now)
        for index, case in enumerate(suite.cases):
            if index in recorded or case.workload.search:
                continue  # a searched load records its steps as it goes: none to stand for it
            case_id = add_pending_case(store, nr.run_id, index, case, _unresolved(case),
                                       suite.repetitions, {}, slo=suite.slo)
            store.update_case(case_id, status="error", error=nr.note, finished_at=now)
        if exists:
            store.update_run(nr.run_id, status="failed", finished_at=now)
    elif ((interrupted or nr.status == "interrupted") and store.has_run(nr.run_id)
          and store.run(nr.run_id)["status"] == "running"):  # its runner could not say so itself
        for case in store.cases(nr.run_id):
            if case["status"] == "running":
                store.update_case(case["case_id"], status="interrupted",
                                  error="interrupted: the dispatch was cancelled", finished_at=now)
        store.update_run(nr.run_id, status="interrupted", finished_at=now)
    if not store.has_run(nr.run_id):
        if nr.status == "interrupted":  # cancelled while it waited for the node's lock
            nr.note = f"node {nr.node.short} ({nr.node.host}): cancelled before its run started"
            return
        nr.status = "failed"  # it ran, but not into the store the head opened
        nr.note = nr.note or (f"node {nr.node.short} ({nr.node.host}) ran, but run {nr.run_id} is "
                              "not in the store the head opened: the nodes do not share it")
        return
    run = store.run(nr.run_id)
    cases = store.cases(nr.run_id)
    nr.n_cases, nr.n_ok = len(cases), sum(c["status"] == "ok" for c in cases)
    nr.status = run["status"] if run["status"] != "running" else nr.status


def _unresolved(case: Case) -> ResolvedModel:
    """The model as the suite names it, for an error record of a case its node never reached
    (the head need not hold the model)."""
    from harness.models.sources import ResolvedModel

    return ResolvedModel(case.model, Path(case.model), None, None, None, None)  # type: ignore[arg-type]
