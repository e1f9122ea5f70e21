"""`--backend openai`: serving loads against any running OpenAI-compatible server at `--url`.

The load client (backends/openai_client.py) runs here, in the worker, like every engine. Before
the first case the server is checked, so each kind of bad input is one line naming the fix:
nothing listening, an API key refused, a URL that is not an OpenAI-compatible API, a model the
server does not serve, a stream that is not SSE, and a server that sends no usage when no
tokenizer is known to count tokens. The API key is read from the environment variable named by
`api_key_env` (OPENAI_API_KEY by default); only the variable's name is a parameter, so the key
itself is never stored or printed.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from backends.base import Backend, EngineMissing, ModelLoadError, PhaseSample
from backends.openai_client import (
    Endpoint,
    Prompt,
    StreamError,
    run_async,
    run_load,
    run_load_processes,
    stream_request,
)
from backends.prompts import PromptMaker, Tokenizer, open_tokenizer

#: Share of a case's requests whose prompt token count may differ before the case says so.
PROMPT_MISMATCH_LIMIT = 0.01
_PROBE_IDS = list(range(300, 308))  # in BLIND_IDS


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError as exc:
        raise EngineMissing(f"serving backends need aiohttp ({exc}): "
                            "pip install 'tokbench[serving]'") from None
    return aiohttp


class OpenAIBackend(Backend):
    name = "openai"
    install_hint = "pip install 'tokbench[serving]'"
    model_format = "remote"
    serving = True
    required = ("url",)
    needs_min_tokens: ClassVar[bool] = False  # the server is known to ignore ignore_eos
    defaults: ClassVar[dict[str, Any]] = {
        "url": None,  # base URL of the API, e.g. http://127.0.0.1:8000/v1
        "api_key_env": "OPENAI_API_KEY",
        "tokenizer": None,  # a GGUF or HF directory of the served model: text prompts, counting
        "ignore_eos": True,  # send ignore_eos (and min_tokens where needed): outputs of the asked length
        "client_procs": 1,  # load-client processes (when one cannot drive the load)
    }

    @classmethod
    def probe(cls) -> dict[str, Any]:
        aiohttp = _import_aiohttp()
        return {"engine": "openai-client", "engine_version": aiohttp.__version__,
                "client": f"aiohttp {aiohttp.__version__}"}

    def __init__(self, model_path: str, params: dict[str, Any], seed: int) -> None:
        super().__init__(model_path, params, seed)
        self.served_name = model_path  # remote: the name the server serves the model under
        self.tokenizer: Tokenizer | None = None
        self.token_ids = True  # the endpoint takes token-id prompts
        self.has_usage = True
        self.chat_overhead: int | None = None
        self.server_info: dict[str, Any] = {}
        self.nonce = os.urandom(8).hex()  # this run's prompts repeat no earlier run's
        # min_tokens as well as ignore_eos: only for servers that ignore ignore_eos (found in the
        # warm-up), since it costs vLLM a logits processor on every step
        self.min_tokens = self.needs_min_tokens
        self.length_note: str | None = None

    # -- where and how ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The API base as given; a bare http://HOST:PORT gets /v1, where every server here
        keeps its OpenAI routes."""
        url = str(self.params.get("url") or "").rstrip("/")
        bare = url.count("/") == 2  # scheme://host:port, no path
        return url + "/v1" if bare else url

    def headers(self) -> dict[str, str]:
        key = os.environ.get(str(self.params.get("api_key_env") or ""), "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def tokenizer_path(self) -> str | None:
        return self.params.get("tokenizer")

    def endpoint(self, chat: bool) -> Endpoint:
        extra: dict[str, Any] = {}
        if self.params.get("ignore_eos", True):
            extra["ignore_eos"] = True
            if self.min_tokens:
                extra["min_tokens"] = 0  # set per request to its max_tokens
        count = None
        if self.tokenizer is not None:
            tok = self.tokenizer
            count = (lambda text: len(tok.encode(text, specials=False)))  # noqa: E731
        return Endpoint(self.base_url, self.served_name, chat, self.headers(), extra, count)

    # -- load: check the server -------------------------------------------------------------
    def load(self, n_ctx: int, n_seq: int) -> dict[str, Any]:
        _import_aiohttp()
        path = self.tokenizer_path()
        if path:
            try:
                self.tokenizer = open_tokenizer(path)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
        run_async(self._check_server())
        info = self.server_info
        server = info.get("server") or "an OpenAI-compatible server"
        return {"desc": f"{self.served_name} via {server} at {self.base_url}", "load_ns": 0,
                "server": info}

    async def _check_server(self) -> None:
        import aiohttp

        url = self.base_url
        key_env = self.params.get("api_key_env")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            try:
                async with session.get(url + "/models", headers=self.headers()) as resp:
                    body = await resp.text()
                    status, ctype = resp.status, resp.headers.get("Content-Type", "")
                    self.server_info["http_server"] = resp.headers.get("Server")
            except aiohttp.ClientConnectorError as exc:
                raise ModelLoadError(f"nothing is listening at {url} ({exc.os_error or exc}): start "
                                     "the server, or fix --url (scheme, host, port)") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise ModelLoadError(f"{url} did not answer GET /models ({type(exc).__name__}: {exc}): "
                                     "check --url") from None
            if status in (401, 403):
                raise ModelLoadError(f"the server at {url} refused the request (HTTP {status}): set "
                                     f"${key_env} to its API key (--api-key-env names another variable)")
            models = self._served_models(status, ctype, body)
            if self.served_name not in models:
                shown = ", ".join(models[:5]) + (" …" if len(models) > 5 else "") or "nothing"
                raise ModelLoadError(f"model {self.served_name!r} is not served at {url}: it serves "
                                     f"{shown}; pass one of them with -m")
            await self._server_version(session)
            await self._probe_stream(session)

    def _served_models(self, status: int, ctype: str, body: str) -> list[str]:
        import json

        try:
            doc = json.loads(body) if status == 200 else None
        except ValueError:
            doc = None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise ModelLoadError(f"{self.base_url} is not an OpenAI-compatible API (GET /models: "
                                 f"HTTP {status}, {ctype or 'no content type'}): give the server's "
                                 "API base, such as http://HOST:PORT/v1")
        self.server_info["owned_by"] = next((m.get("owned_by") for m in data if isinstance(m, dict)), None)
        return [str(m.get("id")) for m in data if isinstance(m, dict)]

    async def _server_version(self, session: Any) -> None:
        """vLLM and SGLang answer /version; the others simply do not."""
        root = self.base_url.removesuffix("/v1")
        try:
            async with session.get(root + "/version", headers=self.headers()) as resp:
                if resp.status == 200 and "json" in resp.headers.get("Content-Type", ""):
                    self.server_info["version"] = (await resp.json()).get("version")
        except Exception:  # optional information
            pass
        owned = self.server_info.get("owned_by")
        version = self.server_info.get("version")
        if owned or version:
            self.server_info["server"] = " ".join(str(x) for x in (owned, version) if x)

    async def _probe_stream(self, session: Any) -> None:
        """One short streamed request in the form the load will use: text when the model's
        tokenizer is known (what users send; the server's tokenization is then part of TTFT, as
        in `vllm bench serve`), else token ids (exact lengths by construction). Does the server
        take it, send usage, speak SSE?"""
        ep = self.endpoint(chat=False)
        self.token_ids = self.tokenizer is None
        prompt = (Prompt(_PROBE_IDS, len(_PROBE_IDS), 2) if self.token_ids
                  else Prompt("Hello there, how are you", 6, 2))
        try:
            record = await self._probe(session, ep, prompt)
        except StreamError as exc:
            self._refuse(str(exc), ids=self.token_ids)
        self.has_usage = record.get("counted_by") == "usage"

    @staticmethod
    async def _probe(session: Any, ep: Endpoint, prompt: Prompt) -> dict[str, Any]:
        record: dict[str, Any] = {}
        await stream_request(session, ep, prompt, record)
        return record

    def _refuse(self, text: str, ids: bool) -> None:
        url = self.base_url
        if text.startswith("malformed SSE"):
            raise ModelLoadError(f"the server at {url} is not an OpenAI-compatible streaming server: "
                                 f"{text}") from None
        if ids and text.startswith("HTTP "):
            raise ModelLoadError(f"the server at {url} does not take token-id prompts ({text[:100]}…): "
                                 "give --tokenizer (the served model's GGUF or HF directory) so "
                                 "prompts are made as text") from None
        if "no usage" in text:
            raise ModelLoadError(f"the server at {url} sends no token usage while streaming: give "
                                 "--tokenizer (the served model's GGUF or HF directory) so tokens "
                                 "are counted with it") from None
        raise ModelLoadError(f"a test request to {url} failed: {text}") from None

    # -- cases ------------------------------------------------------------------------------
    def prompts(self, load: dict[str, Any], seed: Any) -> PromptMaker:
        chat = load.get("endpoint") == "chat"
        if chat and self.tokenizer is None:
            raise ModelLoadError("a chat workload needs the model's tokenizer to make prompts of "
                                 "the asked length: give --tokenizer (a GGUF or HF directory)")
        if int(load.get("turns") or 1) > 1 and self.tokenizer is None:
            raise ModelLoadError("a multi-turn workload resends each reply as text, so it needs "
                                 "text prompts: give --tokenizer (a GGUF or HF directory)")
        overhead = self._chat_overhead() if chat else 0
        return PromptMaker(load, seed, self.tokenizer, overhead, self.nonce)

    def _chat_overhead(self) -> int:
        """Tokens the chat template adds around the content, from one non-streamed request."""
        if self.chat_overhead is None:
            self.chat_overhead = run_async(self._measure_overhead())
        return self.chat_overhead

    async def _measure_overhead(self) -> int:
        import aiohttp

        assert self.tokenizer is not None
        content = "The quick brown fox jumps over the lazy dog"
        body = {"model": self.served_name, "max_tokens": 1,
                "messages": [{"role": "user", "content": content}]}
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
                    session.post(self.base_url + "/chat/completions", json=body,
                                 headers=self.headers()) as resp):
            doc = await resp.json(content_type=None) if resp.status == 200 else {}
        prompt_tokens = (doc.get("usage") or {}).get("prompt_tokens")
        if prompt_tokens is None:
            raise ModelLoadError(f"the server at {self.base_url} reports no usage for chat "
                                 "requests, so the chat template's length is unknown; use a "
                                 "completions workload (drop :chat)")
        return int(prompt_tokens) - len(self.tokenizer.encode(content, specials=False))

    def serve_warmup(self, load: dict[str, Any], seed: int) -> None:
        """The warm-up requests; if they come back short, the server ignored ignore_eos, and the
        timed requests also send min_tokens."""
        n = int(load.get("warmup") or 0)
        if not n:
            return
        result = run_async(run_load(self.endpoint(load.get("endpoint") == "chat"),
                                    {**load, "concurrency": min(n, load.get("concurrency") or n)},
                                    self.prompts(load, f"{seed}:warmup"), seed, n_requests=n))
        short = [r for r in result.records if r["status"] == "ok"
                 and (r.get("output_tokens") or 0) < (r.get("output_expected") or 0)]
        if short and not self.min_tokens and self.params.get("ignore_eos", True):
            self.min_tokens = True
            self.length_note = (f"{len(short)} of {n} warm-up requests stopped early with "
                                "ignore_eos alone: min_tokens was sent as well")

    def serve_trial(self, load: dict[str, Any], seed: int) -> dict[str, Any]:
        ep, prompts = self.endpoint(load.get("endpoint") == "chat"), self.prompts(load, seed)
        procs = int(self.params.get("client_procs") or 1)
        result = (run_load_processes(ep, load, prompts, seed, procs) if procs > 1
                  else run_async(run_load(ep, load, prompts, seed)))
        ok = [r for r in result.records if r["status"] == "ok"]
        out_tokens = sum(r.get("output_tokens") or 0 for r in ok)
        client = result.client()
        notes = trial_notes(result.records, client)
        if self.length_note:
            notes.insert(0, self.length_note)
        return {
            "samples": [PhaseSample("out", out_tokens, result.wall_ns).to_dict()],
            "requests": result.records, "client": client, "notes": notes,
            "fatal": self.fatal(result.records),
        }

    def fatal(self, records: list[dict[str, Any]]) -> str | None:
        """A trial in which every request failed ends the case, naming the first error."""
        failed = [r for r in records if r["status"] == "error"]
        if records and len(failed) == len(records):
            return f"all {len(records)} requests failed; the first: {failed[0].get('error')}"
        return None


def trial_notes(records: list[dict[str, Any]], client: dict[str, Any]) -> list[str]:
    """What the figures of a trial need said beside them."""
    ok = [r for r in records if r["status"] == "ok"]
    notes = []
    off = [r for r in ok if r.get("prompt_tokens") is not None and r.get("prompt_expected") is not None
           and r["prompt_tokens"] != r["prompt_expected"]]
    if ok and len(off) > PROMPT_MISMATCH_LIMIT * len(ok):
        r = off[0]
        notes.append(f"{len(off)} of {len(ok)} requests had a prompt of another length than asked "
                     f"(e.g. {r['prompt_tokens']} tokens for {r['prompt_expected']})")
    short = [r for r in ok if (r.get("output_tokens") or 0) < (r.get("output_expected") or 0)]
    if short:
        notes.append(f"{len(short)} of {len(ok)} requests returned fewer output tokens than asked "
                     "(the server stopped early: it ignores ignore_eos/min_tokens)")
    if any(r.get("counted_by") == "tokenizer" for r in ok):
        notes.append("output tokens counted with the model's tokenizer: the server sends no usage "
                     "while streaming")
    if client.get("client_bound"):
        notes.append(f"the client was the bottleneck (CPU {client['cpu_share']:.0%} of its core, "
                     f"event-loop lag p99 {client['loop_lag_p99_ms']:.1f} ms): the figures "
                     "understate the server")
    elif client.get("late_timestamps"):
        notes.append(f"the client waited for a CPU (event-loop lag p99 "
                     f"{client['loop_lag_p99_ms']:.1f} ms at {client['cpu_share']:.0%} of a core: "
                     "the server and client share the cores): timestamps may be late by that much")
    return notes
