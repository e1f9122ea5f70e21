"""Backend worker: loads one model in its own process and serves cases on a line-based JSON protocol.

Started by the runner as `python -m backends.worker` under any interpreter that can import this
package and the engine; it needs nothing but `backends/`. The first stdin line is the request:

- `{"op": "probe", "backend"}` → `probe` {info}, then exit.
- `{"op": "open", "backend", "model_path", "params", "seed", "n_ctx", "n_seq", "idle"}` → load
  the model → `loaded` {model}; then one command per stdin line, until `close` or EOF:
  - `{"op": "case", "params", "n_ctx", "seed", "workload", "warmup"}` → prepare and warm up →
    `ready`;
  - `{"op": "trials", "n"}` → N trials, each sent as `trial` {index, started_at, samples} →
    `block_done` {trials}; a serving workload (`workload.serving`, a load against a server)
    runs through the backend's serve_warmup/serve_trial, and its trials also carry `requests`
    (one record per request), `client` (the client's own CPU use) and `notes`;
  - `{"op": "end_case"}` → `case_done` {memory}.

Any failure sends `error` {kind, message, traceback} and exits non-zero: the runner records it
on the case being served and starts a fresh worker for the cases left. With `idle`, the engine
releases the CPU after each warm-up and block (A/B runs interleave two workers).
Engines print to stdout from native code, so the protocol is moved to a private file
descriptor and fd 1 is pointed at stderr before any engine is imported.
Standard library only.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from typing import IO, Any

from backends.base import (
    Backend,
    BackendError,
    EngineMissing,
    ModelLoadError,
    ServerFailed,
    die_with_parent,
)
from backends.registry import load_class


def _protocol_stream() -> IO[str]:
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", buffering=1)


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image since the last reset. On Linux VmHWM, because ru_maxrss
    survives fork+exec and would report the parent's peak (the runner's) when that was higher."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _reset_peak_rss() -> str:
    """Start a new peak-RSS window (Linux: clear_refs 5 resets VmHWM to the current RSS), so each
    case's peak is its own: the resident model plus what the case allocated. Returns the scope
    the figure will have."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return "process"  # no reset here: the peak covers the worker's life so far
    return "case"


def _serve(request: dict[str, Any], send: Any) -> None:
    backend: Backend = load_class(request["backend"])(request["model_path"], request["params"],
                                                      request["seed"])
    idle = bool(request.get("idle"))
    try:
        send("loaded", model=backend.load(request["n_ctx"], request["n_seq"]))
        workload: dict[str, Any] = {}
        index, seed, scope = 0, 0, "process"
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "case":
                workload, index, seed = command["workload"], 0, int(command["seed"])
                scope = _reset_peak_rss()
                backend.prepare(command["params"], command["n_ctx"], command["seed"])
                if command.get("warmup", True) and "serving" in workload:
                    backend.serve_warmup(workload["serving"], command["seed"])
                elif command.get("warmup", True):
                    backend.warmup(workload["n_prompt"], workload["n_gen"])
                if idle:
                    backend.idle()
                send("ready")
            elif op == "trials":
                for _ in range(int(command["n"])):
                    started = time.time()
                    if "serving" in workload:
                        result = backend.serve_trial(workload["serving"], seed + index)
                        fatal = result.pop("fatal", None)
                        send("trial", index=index, started_at=started, **result)
                        index += 1
                        if fatal:
                            raise ServerFailed(fatal)
                        continue
                    samples = backend.run_trial(workload["n_prompt"], workload["n_gen"],
                                                workload["n_depth"])
                    send("trial", index=index, started_at=started,
                         samples=[s.to_dict() for s in samples])
                    index += 1
                if idle:
                    backend.idle()
                send("block_done", trials=index)
            elif op == "end_case":
                send("case_done", memory={"peak_rss_bytes": _peak_rss_bytes(),
                                          "peak_rss_scope": scope, **backend.memory()})
            else:  # close
                return
    finally:
        backend.close()


def _expendable() -> None:
    """Die with the runner, and be the process the OOM killer takes first (before the runner,
    which holds the results): the highest oom_score_adj, which any process may set itself."""
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the runner died before the request took hold
        os._exit(1)
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


def main() -> int:
    _expendable()
    out = _protocol_stream()

    def send(msg_type: str, **payload: Any) -> None:
        out.write(json.dumps({"type": msg_type, **payload}) + "\n")
        out.flush()

    try:
        request = json.loads(sys.stdin.readline())
        if request["op"] == "probe":
            send("probe", info=load_class(request["backend"]).probe())
        else:
            _serve(request, send)
    except EngineMissing as exc:
        send("error", kind="engine_missing", message=str(exc))
        return 3
    except (ModelLoadError, BackendError) as exc:
        send("error", kind="load", message=str(exc))
        return 4
    except ServerFailed as exc:
        send("error", kind="server", message=str(exc))
        return 6
    except MemoryError:
        send("error", kind="oom", message="out of memory in the worker (MemoryError)")
        return 5
    except Exception as exc:  # an engine failure becomes an error record, with its traceback
        send("error", kind="exception", message=f"{type(exc).__name__}: {exc}",
             traceback=traceback.format_exc(limit=8))
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Everything is sent and the engine closed: skip the interpreter's teardown of the engine's
    # modules (a quarter of a second for llama.cpp, more for torch), which nobody waits for.
    os._exit(code)
