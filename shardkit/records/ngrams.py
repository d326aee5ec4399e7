"""Word n-grams of a record's text, hashed: what decontamination compares (and near-duplicate
shingles are made of).

Words: the text case-folded, every run of characters that are not letters or digits made one
space (punctuation normalised away), split on spaces. ``"Hello, World!"`` and ``"hello world"``
have the same words. A record's text is what a trainer tokenizes (`tokens.record_text`: every
message, prompt, answer...); a record of no known kind gives every string it holds, so an eval
file of ``{"question", "answer"}`` objects is read whole.

An n-gram's hash is a 64-bit combination of its words' hashes (blake2b of each word, cached),
computed for all n-grams of a record at once with numpy; the same words give the same hash in
every process and on every run.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from shardkit.records.tokens import record_text
from shardkit.records.validate import detect_kind

__all__ = ["DEFAULT_NGRAM", "ngram_hashes", "record_words", "words"]

DEFAULT_NGRAM = 13
_SPLIT = re.compile(r"[\W_]+")
_CACHE_LIMIT = 1 << 20  # distinct words kept hashed; cleared when full (bounded memory)
_word_hash: dict[str, int] = {}
_np: Any = None
_COEFFICIENTS: Any = None


def words(text: str) -> list[str]:
    """The words of `text`: case-folded, split on anything that is not a letter or digit."""
    return [w for w in _SPLIT.split(text.casefold()) if w]


def record_words(obj: object) -> list[str]:
    """The words of a decoded record's text (see the module docstring)."""
    kind = detect_kind(obj)
    text = record_text(obj, kind) if kind is not None else "\n".join(_strings(obj))
    return words(text)


def _strings(value: object) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is str:
            out.append(v)
        elif type(v) is dict:
            stack.extend(reversed(list(v.values())))
        elif type(v) is list:
            stack.extend(reversed(v))
    return out


def _numpy() -> Any:
    global _np, _COEFFICIENTS
    if _np is None:
        import numpy

        _np = numpy
        seed = hashlib.shake_256(b"shardkit word n-grams").digest(8 * 64)
        coefficients = numpy.frombuffer(seed, dtype="<u8").copy()
        _COEFFICIENTS = coefficients | numpy.uint64(1)  # odd multipliers
    return _np


def ngram_hashes(ws: list[str], n: int) -> Any:
    """A numpy uint64 array: the hash of each run of `n` consecutive words, in order (empty
    when there are fewer than `n` words)."""
    np = _numpy()
    if n < 1 or n > 64:
        raise ValueError(f"n-gram length must be 1..64 (got {n})")
    count = len(ws) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    cache = _word_hash
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    hashes = []
    for w in ws:
        h = cache.get(w)
        if h is None:
            h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        hashes.append(h)
    word = np.array(hashes, dtype=np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            out += word[j : j + count] * _COEFFICIENTS[j]
        out ^= out >> np.uint64(29)
        out *= np.uint64(0xBF58476D1CE4E5B9)
        out ^= out >> np.uint64(32)
    return out
