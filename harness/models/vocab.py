"""An offline byte-level BPE vocabulary of any size, trained in code (no hub download).

Synthetic models need a tokenizer that the engines load: llama.cpp reads the token list,
types and merges from GGUF metadata, and its size (a few MB for 65k-200k tokens) is part of
the file size that must match the published one. Tokens are built by real BPE merges over
GPT-2's byte alphabet, so every token decodes and every merge names two existing tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

SPECIAL_TOKENS = ("<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 4


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    types: tuple[int, ...]  # llama.cpp token types: 1 normal, 3 control
    merges: tuple[str, ...]  # "left right", in rank order


def byte_alphabet() -> list[str]:
    """GPT-2's reversible byte → printable character map (the one every byte-level BPE uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, shift = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shift)
            shift += 1
    return [chars[b] for b in range(256)]


@lru_cache(maxsize=8)
def bpe_vocab(n_vocab: int, seed: int = 0) -> Vocab:
    """Special tokens, the 256 byte tokens, then merged tokens until n_vocab.

    Merges pair frequent-looking short pieces (letters and the space marker 'Ġ' weighted
    up), so token lengths come out like a real English-heavy vocabulary (mean ≈ 6 bytes).
    """
    if n_vocab < len(SPECIAL_TOKENS) + 256 + 1:
        raise ValueError(f"vocabulary size {n_vocab} is too small for a byte-level BPE")
    rng = random.Random(seed)
    alphabet = byte_alphabet()
    common = [c for c in alphabet if c.isalpha() and c.isascii()] + ["Ġ"] * 8
    tokens = list(SPECIAL_TOKENS) + alphabet
    seen = set(tokens)
    pieces = list(common)  # candidates for the left/right side of a merge
    merges: list[str] = []
    while len(tokens) < n_vocab:
        left = rng.choice(pieces)
        right = rng.choice(common if rng.random() < 0.6 else pieces)
        new = left + right
        if new in seen or len(new) > 16:
            continue
        seen.add(new)
        tokens.append(new)
        merges.append(f"{left} {right}")
        if len(new) <= 8:
            pieces.append(new)
    types = (3,) * len(SPECIAL_TOKENS) + (1,) * (n_vocab - len(SPECIAL_TOKENS))
    return Vocab(tuple(tokens), types, tuple(merges))
