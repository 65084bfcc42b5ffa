"""Text to token streams: byte-level, and a small word-level vocabulary with byte fallback.

Ids: 0 is padding (masked out of LM losses), 1..256 are the bytes 0..255, and a word
vocabulary (if any) follows. Deterministic: the same corpus gives the same vocabulary.
"""

from __future__ import annotations

import collections
import re

import numpy as np

PAD = 0
NUM_BYTE_IDS = 257  # padding + 256 bytes
_WORD = re.compile(rb"[A-Za-z_][A-Za-z_0-9]*|[0-9]+| +|\n|[^A-Za-z_0-9 \n]")


def encode_bytes(text: bytes) -> np.ndarray:
    """Byte-level ids (byte + 1), int32."""
    return np.frombuffer(text, np.uint8).astype(np.int32) + 1


class WordTokenizer:
    """Greedy word-level tokens (identifiers, numbers, space runs, newlines, punctuation)
    from a fixed vocabulary of the corpus's most frequent words; anything else is spelled
    out in bytes. vocab_size counts padding and the 256 byte ids."""

    def __init__(self, words: list[bytes]):
        self.words = list(words)
        self._ids = {w: NUM_BYTE_IDS + i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, text: bytes, vocab_size: int) -> WordTokenizer:
        if vocab_size < NUM_BYTE_IDS:
            raise ValueError(f"vocab_size must be at least {NUM_BYTE_IDS} (padding + bytes), got {vocab_size}")
        counts = collections.Counter(m.group() for m in _WORD.finditer(text))
        multi = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
        return cls(multi[: vocab_size - NUM_BYTE_IDS])

    @property
    def vocab_size(self) -> int:
        return NUM_BYTE_IDS + len(self.words)

    def encode(self, text: bytes) -> np.ndarray:
        out: list[int] = []
        for m in _WORD.finditer(text):
            word = m.group()
            idx = self._ids.get(word)
            if idx is None:
                out.extend(b + 1 for b in word)
            else:
                out.append(idx)
        return np.asarray(out, np.int32)

    def decode(self, ids: np.ndarray) -> bytes:
        parts = []
        for i in np.asarray(ids).tolist():
            if i == PAD:
                continue
            parts.append(bytes([i - 1]) if i < NUM_BYTE_IDS else self.words[i - NUM_BYTE_IDS])
        return b"".join(parts)
