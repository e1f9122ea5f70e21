"""Prompts whose server-side token count is the workload's input length.

With the model's tokenizer (a managed server's own model, or --tokenizer), a prompt is text, as
users send it, made of random whole-word tokens, re-tokenized and repaired (words dropped or
added) until it counts exactly; the count includes the special
tokens the server adds (BOS), and for chat the template's own tokens, measured once from the
server's usage. Without a tokenizer the prompt is a list of token ids, which /v1/completions of
vLLM and SGLang take as is. Each request's lengths come from the case's seed, so every run asks
for the same lengths; the tokens come from the seed and a nonce drawn per run, so no run's
prompts repeat an earlier run's and a long-lived server's prefix cache cannot serve them. With
a shared prefix the first N tokens are the same for every request of the run; otherwise every
prompt starts differently.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from backends.openai_client import Prompt

#: Token ids used when no tokenizer is known: low enough to exist in any vocabulary, past the
#: special and byte tokens most vocabularies start with.
BLIND_IDS = range(260, 500)
_REPAIRS = 12


class Tokenizer(Protocol):
    def encode(self, text: str, specials: bool) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    @property
    def vocab_size(self) -> int: ...


class GgufTokenizer:
    """A GGUF's vocabulary through llama.cpp (vocab only: no weights loaded)."""

    def __init__(self, path: str) -> None:
        import llama_cpp

        self._llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)

    def encode(self, text: str, specials: bool) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=specials, special=False)

    def decode(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids).decode(errors="replace")

    @property
    def vocab_size(self) -> int:
        return int(self._llm.n_vocab())


class HfTokenizer:
    """A Hugging Face tokenizer from a local directory (offline)."""

    def __init__(self, path: str) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(path)

    def encode(self, text: str, specials: bool) -> list[int]:
        return list(self._tok(text, add_special_tokens=specials)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)


def open_tokenizer(path: str) -> Tokenizer:
    """A GGUF file or an HF directory; import errors and unreadable files are one line."""
    try:
        return GgufTokenizer(path) if path.endswith(".gguf") else HfTokenizer(path)
    except Exception as exc:  # any failure of the tokenizer library: one line
        raise ValueError(f"tokenizer {path!r} cannot be read ({type(exc).__name__}: {exc}); "
                         "give a .gguf file or a Hugging Face model directory") from None


def _word_ids(tok: Tokenizer, seed: int, wanted: int = 2000) -> list[int]:
    """Token ids that decode to a space and a lowercase word and re-encode to themselves, so a
    run of them tokenizes (almost always) one token per word; for a tiny vocabulary with few
    such words, any printable ASCII token that re-encodes to itself."""
    rng = random.Random(seed)
    size = tok.vocab_size
    words: list[int] = []
    plain: list[int] = []
    for i in rng.sample(range(size), min(size, 40_000)):
        text = tok.decode([i])
        if not (text.strip() and text.isascii() and text.isprintable()) or "<" in text or ">" in text:
            continue  # not text, or perhaps a control token's name (<|im_start|>, <eos>)
        if tok.encode(text, specials=False) != [i]:
            continue
        word = text[1:]
        if text.startswith(" ") and 2 <= len(word) <= 12 and word.isalpha() and word.islower():
            words.append(i)
            if len(words) >= wanted:
                break
        else:
            plain.append(i)
    if len(words) >= 50:
        return words
    if len(words) + len(plain) < 50:
        raise ValueError("the tokenizer has too few plain-text tokens to build prompts from")
    return words + plain


class PromptMaker:
    """Request i's prompt and output length, deterministic in (seed, i)."""

    def __init__(self, load: dict[str, Any], seed: Any, tokenizer: Tokenizer | None,
                 overhead: int = 0, nonce: str = "") -> None:
        self.load, self.seed, self.tok, self.nonce = load, seed, tokenizer, nonce
        self.overhead = overhead  # chat template tokens around the content
        self.words = _word_ids(tokenizer, 0) if tokenizer else list(BLIND_IDS)
        rng = random.Random(f"{seed}:{nonce}:prefix")
        self.prefix = [rng.choice(self.words) for _ in range(load.get("prefix_len") or 0)]

    def lengths(self, i: int) -> tuple[int, int]:
        rng = random.Random(f"{self.seed}:{i}:lengths")
        lo, hi = self.load["input_len"]
        olo, ohi = self.load["output_len"]
        return rng.randint(lo, hi), rng.randint(olo, ohi)

    def __call__(self, i: int) -> Prompt:
        n_in, n_out = self.lengths(i)
        rng = random.Random(f"{self.seed}:{self.nonce}:{i}")
        if self.tok is None:
            ids = self.prefix + [rng.choice(self.words) for _ in range(n_in - len(self.prefix))]
            return Prompt(ids, n_in, n_out)
        return Prompt(*self._text(rng, n_in), n_out)

    def _text(self, rng: random.Random, n_in: int) -> tuple[str, int]:
        """Text counting n_in tokens as the server counts it; else the closest, with its count."""
        assert self.tok is not None
        chat = self.load.get("endpoint") == "chat"
        specials = not chat  # chat: the template's tokens are in the measured overhead
        target = n_in - self.overhead
        ids = self.prefix + [rng.choice(self.words) for _ in range(max(target - len(self.prefix), 1))]
        count = 0
        for _ in range(_REPAIRS):
            text = self.tok.decode(ids).lstrip() if not self.prefix else self.tok.decode(ids)
            count = len(self.tok.encode(text, specials=specials))
            if count == target:
                break
            if count > target:
                del ids[max(len(self.prefix), len(ids) - (count - target)):]
            else:
                ids += [rng.choice(self.words) for _ in range(target - count)]
        return text, count + self.overhead
