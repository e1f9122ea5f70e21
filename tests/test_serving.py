"""Serving loads against real servers: llama-cpp-python's server on gemma (started here, and by
tokbench itself), vLLM's CPU server on a tiny model (started by tokbench): closed and open loops,
a server killed mid-run, bad URLs, keys and models, and the gate on two stored serving runs."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli.main import main
from results.export import run_document
from results.store import Store

pytestmark = pytest.mark.engine

KEY = "tokbench-test-key"
NAME = "tokbench-model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(gguf: Path, port: int, *extra: str) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on loopback, with an API key; yields its /v1 URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", NAME,
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2", "--n_ctx", "512",
         "--interrupt_requests", "False", "--api_key", KEY, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):  # ready in 3-8 s; bounded at 120 s
            assert proc.poll() is None, "llama_cpp.server exited during start-up"
            with contextlib.suppress(OSError):
                req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {KEY}"})
                with urllib.request.urlopen(req, timeout=2):
                    break
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def llama_url(gemma_path: Path) -> Iterator[str]:
    with llama_server(gemma_path, _free_port()) as url:
        yield url


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKBENCH_TEST_KEY", KEY)


def _run(store: Path, *args: str) -> int:
    return main(["--store", str(store), "run", "--no-bandwidth", *args])


def _doc(store: Path, ref: str = "last") -> dict:
    db = Store(store, create=False)
    try:
        return run_document(db, db.resolve_run(ref))
    finally:
        db.close()


def test_openai_backend_closed_and_open_loop(llama_url: str, gemma_path: Path, key_env: None,
                                             store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = _run(store_path, "--backend", "openai", "--url", llama_url, "-m", NAME,
              "--api-key-env", "TOKBENCH_TEST_KEY", "--tokenizer", str(gemma_path),
              "-w", "c2:in32:out8,r4:in24-40:out6:n6", "--requests", "6",
              "--slo", "ttft=60s,tpot=10s")
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = _doc(store_path)
    closed, open_ = doc["cases"]
    # --requests gave the closed loop its count, and its name says so
    assert closed["workload"] == "c2:in32:out8:n6" and open_["workload"] == "r4:in24-40:out6:n6"
    assert closed["load"]["requests"] == 6 and closed["load"]["concurrency"] == 2
    for case, n_out in ((closed, 8), (open_, 6)):
        reqs = case["requests"]
        assert [r["status"] for r in reqs] == ["ok"] * 6
        for r in reqs:
            # the server counts exactly the prompt length asked for (BOS included)
            assert r["prompt_tokens"] == r["prompt_expected"]
            assert r["output_tokens"] <= r["output_expected"] == n_out
            assert r["counted_by"] == "tokenizer"  # llama_cpp.server streams no usage
            assert 0 < r["ttft_ns"] <= r["e2el_ns"]
            assert r["chunk_ns"] == sorted(r["chunk_ns"]) and r["chunk_ns"][0] == r["ttft_ns"]
        # llama_cpp.server ignores ignore_eos: once a warm-up reply stops early, min_tokens is
        # sent too (sampling is the server's, so a warm-up may not stop early); every reply that
        # came back short is counted and said
        short = [r for r in reqs if r["output_tokens"] < n_out]
        assert not short or any(f"{len(short)} of 6 requests returned fewer output tokens" in n
                                for n in case["notes"])
        assert case["trials"][0]["phase"] == "out"
        assert case["trials"][0]["n_tokens"] == sum(r["output_tokens"] for r in reqs)
        assert case["client"][0]["cpu_s"] > 0
        assert any("tokenizer" in n for n in case["notes"])
    assert "tokbench-test-key" not in json.dumps(doc)  # the key is read, never stored
    # the open loop's prompts have lengths drawn from the range; sends are spread in time
    lengths = {r["prompt_expected"] for r in open_["requests"]}
    assert len(lengths) > 1 and all(24 <= n <= 40 for n in lengths)
    starts = [r["start_ns"] for r in open_["requests"]]
    assert starts == sorted(starts) and starts[-1] > 0.3e9  # 6 Poisson arrivals at 4/s
    # the closed loop starts 2 at once, then one as each ends
    c_starts = sorted(r["start_ns"] for r in closed["requests"])
    assert c_starts[1] < 0.2e9 < c_starts[2]
    assert "TTFT p50" in out and "goodput" in out and "100%" in out


def test_nothing_listening_wrong_model_and_key_are_one_line_errors(
        llama_url: str, key_env: None, store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["-w", "c1:in8:out2:n1", "--api-key-env", "TOKBENCH_TEST_KEY"]
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    assert _run(store_path, "--backend", "openai", "--url", dead, "-m", NAME, *common) == 1
    assert "nothing is listening at " + dead in capsys.readouterr().out
    assert _run(store_path, "--backend", "openai", "--url", llama_url, "-m", "nope", *common) == 1
    out = capsys.readouterr().out
    assert "model 'nope' is not served at" in out and f"it serves {NAME}" in out
    assert _run(store_path, "--backend", "openai", "--url", llama_url, "-m", NAME, "-w", "c1:in8:out2:n1",
                "--api-key-env", "TOKBENCH_UNSET_KEY") == 1
    assert "refused the request (HTTP 401)" in capsys.readouterr().out
    assert "Traceback" not in capsys.readouterr().err
    # a serving workload on an engine backend, and a missing URL: refused before anything runs
    assert main(["--store", str(store_path), "run", "-w", "c4:in8:out2"]) == 2
    assert "is a serving load" in capsys.readouterr().err
    assert main(["--store", str(store_path), "run", "--backend", "openai", "-m", NAME,
                 "-w", "c4:in8:out2"]) == 2
    assert "needs --url" in capsys.readouterr().err


class _NotOpenAI(http.server.BaseHTTPRequestHandler):
    """Fault injection, not a model of a server: an HTML page, and a stream of broken SSE."""

    def do_GET(self) -> None:
        if self.path.endswith("/v1/models"):
            body, ctype = json.dumps({"object": "list", "data": [{"id": NAME}]}).encode(), "application/json"
        else:
            body, ctype = b"<html>hello</html>", "text/html"
        self.send_response(200 if ctype == "application/json" else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"data: {\"choices\": [{\"text\": \"hi\"\n\ndata: [DONE]\n\n")

    def log_message(self, *args: object) -> None:
        pass


def test_not_openai_compatible_and_malformed_sse(store_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _run(store_path, "--backend", "openai", "--url", base + "/api", "-m", NAME,
                    "-w", "c1:in8:out2:n1") == 1
        assert "is not an OpenAI-compatible API (GET /models: HTTP 404, text/html)" in capsys.readouterr().out
        assert _run(store_path, "--backend", "openai", "--url", base + "/v1", "-m", NAME,
                    "-w", "c1:in8:out2:n1") == 1
        assert "not an OpenAI-compatible streaming server: malformed SSE" in capsys.readouterr().out
    finally:
        server.shutdown()


def _llama_server_pids(gguf: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"llama_cpp.server" in cmd and b"--model_alias" in cmd and str(gguf).encode() in cmd \
                    and b"--api_key" not in cmd:
                pids.append(int(entry.name))
    return pids


def test_managed_llama_server_killed_mid_run_keeps_finished_requests(
        gemma_path: Path, store_path: Path, tmp_path: Path) -> None:
    """tokbench starts llama_cpp.server itself; killing it mid-load ends the case with the
    server's log, and the requests that finished are stored."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "--store", str(store_path), "run",
         "--backend", "llama.cpp-server", "-t", "2", "-w", "c1:in16:out32:n60:warm0", "--no-bandwidth"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _llama_server_pids(gemma_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = _llama_server_pids(gemma_path)
        assert pids, "tokbench did not start llama_cpp.server"
        time.sleep(25)  # ready in 3-8 s, prompts made, then a request every 2-3 s
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    case = _doc(store_path)["cases"][0]
    assert case["status"] == "error"
    assert "llama.cpp server killed by SIGKILL during the load" in case["error"]
    assert "llama.cpp server log" in case["error_detail"]
    statuses = [r["status"] for r in case["requests"]]
    assert statuses.count("ok") >= 1 and statuses.count("error") >= 1
    assert not _llama_server_pids(gemma_path)


def test_gate_on_two_serving_runs(gemma_path: Path, key_env: None, store_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Same server address and command, a slower server: prefill one token per batch makes
    TTFT several times longer, and the gate says so; TPOT, ITL and E2EL are judged too."""
    port = _free_port()
    args = ["--backend", "openai", "--url", f"http://127.0.0.1:{port}/v1", "-m", NAME,
            "--tokenizer", str(gemma_path), "--api-key-env", "TOKBENCH_TEST_KEY",
            "-w", "c1:in48:out8:n12:warm2"]
    with llama_server(gemma_path, port):
        assert _run(store_path, *args) == 0
    with llama_server(gemma_path, port, "--n_batch", "1", "--n_ubatch", "1"):
        assert _run(store_path, *args) == 0
    out = store_path.parent / "gate.json"
    rc = main(["--store", str(store_path), "gate", "--baseline", "last~1", "--current", "last",
               "--json", str(out)])
    report = json.loads(out.read_text())
    verdicts = {e["metric"]: e["verdict"] for e in report["entries"]}
    assert set(verdicts) == {"ttft", "tpot", "itl", "e2el"}
    assert verdicts["ttft"] == "REGRESSION" and rc == 1
    # judged, not an error: one token per batch leaves decode as it was, so either way within noise
    assert verdicts["tpot"] in ("PASS", "INCONCLUSIVE", "REGRESSION", "IMPROVED")


def test_vllm_server_closed_and_open_loop(store_path: Path, tmp_path: Path) -> None:
    """tokbench starts vLLM's OpenAI server (CPU build) on a tiny model: usage in the stream,
    token-id prompts of exact length, fixed output length."""
    tiny = tmp_path / "tiny"
    assert main(["models", "tiny", "--arch", "llama", "--format", "hf", str(tiny)]) == 0
    rc = _run(store_path, "--backend", "vllm-server", "-m", str(tiny), "--max-model-len", "256",
              "-w", "c4:in32:out8:n16,r8:in32:out8:n16:chat", "--timeout", "900")
    doc = _doc(store_path)
    assert rc == 0, [c["error"] for c in doc["cases"]]
    for case in doc["cases"]:
        assert case["model_reused"] in (0, 1)
        reqs = case["requests"]
        assert len(reqs) == 16 and all(r["status"] == "ok" for r in reqs)
        assert all(r["counted_by"] == "usage" for r in reqs)
        assert all(r["prompt_tokens"] == r["prompt_expected"] == 32 for r in reqs)
        assert all(r["output_tokens"] == 8 for r in reqs)
        assert case["memory"]["server_peak_rss_bytes"] > 0
    assert [c["model_reused"] for c in doc["cases"]] == [0, 1]  # one server for both cases


def test_mlx_server_closed_loop(store_path: Path, tmp_path: Path) -> None:
    """tokbench starts mlx-lm's server: its keep-alive SSE comments are skipped, usage counts the
    tokens, text prompts have the asked length."""
    tiny = tmp_path / "tiny"
    assert main(["models", "tiny", "--arch", "llama", "--format", "hf", str(tiny)]) == 0
    assert _run(store_path, "--backend", "mlx-server", "-m", str(tiny), "-w", "c2:in32:out8:n8") == 0
    (case,) = _doc(store_path)["cases"]
    assert [r["status"] for r in case["requests"]] == ["ok"] * 8
    assert all(r["counted_by"] == "usage" and r["prompt_tokens"] == 32 for r in case["requests"])
    assert case["memory"]["server_peak_rss_bytes"] > 0
