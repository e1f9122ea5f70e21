"""Backend worker: runs one request in its own process and reports on a line-based JSON protocol.

Started by the runner as `python -m harness.worker` (any interpreter that can import this
package and the engine). It reads one JSON request on stdin and writes one JSON object per
line. Messages: `probe` {info}; `loaded` {model}; `trial` {index, samples}; `done` {memory};
`error` {kind, message}. Op `run` runs all repetitions at once; op `serve` (A/B runs) sends
`ready` after the warm-up, then runs one block per `{"op": "trials", "n": N}` line on stdin,
answering `block_done`, until `{"op": "close"}`: the runner interleaves two such workers.
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
from collections.abc import Iterator
from typing import IO, Any

from backends.base import EngineMissing, ModelLoadError
from backends.registry import load_class
from harness.errors import TokbenchError


def _protocol_stream() -> IO[str]:
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", buffering=1)


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image. On Linux VmHWM, because ru_maxrss survives fork+exec
    and would report the parent's peak (the runner's) when that was higher."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _stdin_blocks() -> Iterator[int]:
    """Trial counts of the blocks the runner asks for, until it says close (or hangs up)."""
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] != "trials":
            return
        yield int(command["n"])


def _run_case(request: dict[str, Any], send: Any) -> None:
    serve = request["op"] == "serve"
    cls = load_class(request["backend"])
    wl = request["workload"]
    n_prompt, n_gen, n_depth = wl["n_prompt"], wl["n_gen"], wl["n_depth"]
    backend = cls(request["model_path"], request["params"], request["seed"])
    try:
        model = backend.load(n_ctx=n_depth + n_prompt + n_gen)
        send("loaded", model=model)
        if request.get("warmup", True):
            backend.warmup(n_prompt, n_gen)
        index = 0
        if serve:
            backend.idle()
            send("ready")
        for n in _stdin_blocks() if serve else [request["repetitions"]]:
            for _ in range(n):
                started = time.time()
                samples = backend.run_trial(n_prompt, n_gen, n_depth)
                send("trial", index=index, started_at=started,
                     samples=[s.to_dict() for s in samples])
                index += 1
            if serve:
                backend.idle()
                send("block_done", trials=index)
        memory = {"peak_rss_bytes": _peak_rss_bytes(), **backend.memory()}
        send("done", memory=memory)
    finally:
        backend.close()


def main() -> int:
    out = _protocol_stream()

    def send(msg_type: str, **payload: Any) -> None:
        out.write(json.dumps({"type": msg_type, **payload}) + "\n")
        out.flush()

    try:
        request = json.loads(sys.stdin.readline())
        if request["op"] == "probe":
            send("probe", info=load_class(request["backend"]).probe())
        else:
            _run_case(request, send)
    except EngineMissing as exc:
        send("error", kind="engine_missing", message=str(exc))
        return 3
    except (ModelLoadError, TokbenchError) as exc:
        send("error", kind="load", message=str(exc))
        return 4
    except MemoryError:
        send("error", kind="oom", message="out of memory in the worker (MemoryError)")
        return 5
    except Exception as exc:  # an engine failure becomes an error record, with its traceback
        send("error", kind="exception", message=f"{type(exc).__name__}: {exc}",
             traceback=traceback.format_exc(limit=8))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
