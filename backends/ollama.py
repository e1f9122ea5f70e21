"""Ollama through its native API (`/api/generate`, `/api/chat`), for the server's own timings:
Ollama reports how long it spent loading the model, evaluating the prompt and decoding each
request, so the client's TTFT and E2EL can be set against them (the difference is HTTP,
queueing and streaming). Its OpenAI-compatible `/v1` routes work through `--backend openai`.

Ollama cannot be installed on the machines this was built on: the adapter is tested against
transcripts of its documented wire format (tests/fixtures/ollama/), never a live Ollama.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from backends.base import ModelLoadError
from backends.ollama_client import ollama_models, stream_ollama
from backends.openai_api import OpenAIBackend
from backends.openai_client import Endpoint, Prompt, StreamError


class OllamaBackend(OpenAIBackend):
    name = "ollama"
    defaults: ClassVar[dict[str, Any]] = {
        "url": None,  # the server's root, e.g. http://127.0.0.1:11434
        "api_key_env": "OLLAMA_API_KEY",  # for a proxy in front of it; Ollama itself has none
        "tokenizer": None,
        "ignore_eos": False,  # Ollama has no ignore_eos: num_predict caps, short replies are flagged
        "client_procs": 1,
    }

    @property
    def base_url(self) -> str:
        return str(self.params.get("url") or "").rstrip("/").removesuffix("/v1")

    def endpoint(self, chat: bool) -> Endpoint:
        ep = super().endpoint(chat)
        ep.extra_body = {}
        ep.send = stream_ollama
        return ep

    async def _check_server(self) -> None:
        import aiohttp

        url = self.base_url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            try:
                models = await ollama_models(session, url)
            except aiohttp.ClientConnectorError as exc:
                raise ModelLoadError(f"nothing is listening at {url} ({exc.os_error or exc}): start "
                                     "Ollama (`ollama serve`), or fix --url") from None
            except (aiohttp.ClientError, asyncio.TimeoutError, StreamError, ValueError) as exc:
                raise ModelLoadError(f"{url} is not an Ollama server (GET /api/tags: {exc}): give its "
                                     "root, such as http://127.0.0.1:11434") from None
            if self.served_name not in models:
                shown = ", ".join(models[:5]) + (" …" if len(models) > 5 else "") or "nothing"
                raise ModelLoadError(f"model {self.served_name!r} is not pulled at {url}: it has "
                                     f"{shown}; `ollama pull` it or pass one of them with -m")
            self.server_info["server"] = "Ollama (native API)"
            self.token_ids = False
            record: dict[str, Any] = {}
            try:
                await stream_ollama(session, self.endpoint(chat=False),
                                    Prompt("Hello there, how are you", None, 2), record)
            except StreamError as exc:
                raise ModelLoadError(f"a test request to {url}/api/generate failed: {exc}") from None
            self.has_usage = True

    def prompts(self, load: dict[str, Any], seed: Any) -> Any:
        if self.tokenizer is None:
            raise ModelLoadError("Ollama's native API takes text prompts: give --tokenizer (the "
                                 "served model's GGUF) so prompts have the asked length")
        return super().prompts(load, seed)

    async def _measure_overhead(self) -> int:
        """Tokens Ollama's chat template adds, from one non-streamed /api/chat request."""
        import aiohttp

        assert self.tokenizer is not None
        content = "The quick brown fox jumps over the lazy dog"
        body = {"model": self.served_name, "stream": False, "options": {"num_predict": 1},
                "messages": [{"role": "user", "content": content}]}
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
                    session.post(self.base_url + "/api/chat", json=body, headers=self.headers()) as resp):
            doc = await resp.json(content_type=None) if resp.status == 200 else {}
        if doc.get("prompt_eval_count") is None:
            raise ModelLoadError(f"Ollama at {self.base_url} reported no prompt_eval_count for a "
                                 "chat request; use a completions workload (drop :chat)")
        return int(doc["prompt_eval_count"]) - len(self.tokenizer.encode(content, specials=False))
