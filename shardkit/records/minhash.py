"""MinHash signatures of records and the LSH index that finds near-duplicates.

A record's *shingles* are its word k-grams (`records.ngrams`: the text a trainer tokenizes,
case-folded, punctuation removed; a record of fewer than k words is one shingle of all its
words). Its *signature* is, for each of `num_perm` hash functions h_i(x) = (a_i x + b_i) mod
2^64 >> 32 (a_i odd; a, b fixed, so signatures are the same in every process and run), the
least h_i over its shingles' 64-bit hashes. Two records agree on a signature position with
probability equal to the Jaccard similarity of their shingle sets, so the share of equal
positions estimates it.

`NearDupIndex` is the global stage: records are offered in input order; one whose estimated
similarity to an earlier *kept* record is >= the threshold is a near-duplicate of the first
such record, else it is kept and indexed. Candidates come from LSH banding (b bands of r
rows, chosen by datasketch for the threshold as its MinHashLSH chooses them: the least
weighted sum of false-positive and false-negative probability); each is then confirmed on
the whole signature. Memory: the kept records' signatures (4 bytes per position, 512 bytes
at 128) and one band-table entry per band each; no text.

Signatures are computed in batches with numpy (the *batch hashing* the map stage runs on
worker processes); datasketch, where installed, supplies the banding parameters.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

from shardkit.core.errors import UsageError
from shardkit.records.ngrams import ngram_hashes, record_words

__all__ = ["DEFAULT_SHINGLE", "NUM_PERM", "NearDupIndex", "Signer", "lsh_params", "sign_raw_lines"]

NUM_PERM = 128
DEFAULT_SHINGLE = 5
_CHUNK = 4096  # shingles per numpy pass: bounded temporary memory for very long records
_SHIFT = 12  # kept signatures are stored 4096 to a block
_MASK = (1 << _SHIFT) - 1


def lsh_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows) for `threshold`, as datasketch's MinHashLSH picks them."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise UsageError(f"the near-duplicate threshold must be a fraction in (0, 1] (got {threshold!r})")
    try:
        from datasketch import MinHashLSH
    except ImportError:
        raise UsageError("near-duplicate detection needs datasketch: pip install 'shardkit[neardup]'") from None
    lsh = MinHashLSH(threshold=float(threshold), num_perm=num_perm)
    return lsh.b, lsh.r


class Signer:
    """Signatures of records: `sign(obj)` gives a numpy uint32 array of `num_perm`, or None
    for a record without a word."""

    def __init__(self, shingle: int = DEFAULT_SHINGLE, num_perm: int = NUM_PERM) -> None:
        import numpy as np

        if isinstance(shingle, bool) or not isinstance(shingle, int) or not 1 <= shingle <= 64:
            raise UsageError(f"--shingle must be a whole number from 1 to 64 (got {shingle!r})")
        self.np = np
        self.shingle, self.num_perm = shingle, num_perm
        seed = hashlib.shake_256(b"shardkit minhash").digest(16 * num_perm)
        words = np.frombuffer(seed, dtype="<u8")
        self.a = (words[:num_perm] | np.uint64(1)).reshape(-1, 1)
        self.b = words[num_perm:].copy().reshape(-1, 1)

    def sign(self, obj: object) -> Any:
        np = self.np
        if not isinstance(obj, dict | list):
            return None
        ws = record_words(obj)
        if not ws:
            return None
        hashes = ngram_hashes(ws, min(self.shingle, len(ws)))
        out = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(hashes), _CHUNK):
                h = hashes[start : start + _CHUNK]
                np.minimum(out, ((self.a * h + self.b) >> np.uint64(32)).min(axis=1), out=out)
        return out.astype(np.uint32)


_signer: Signer | None = None


def sign_raw_lines(shingle: int, num_perm: int, raws: list[bytes]) -> list[bytes | None]:
    """Signatures (bytes) of JSON lines: the map stage, run in worker processes."""
    global _signer
    if _signer is None or (_signer.shingle, _signer.num_perm) != (shingle, num_perm):
        _signer = Signer(shingle, num_perm)
    out: list[bytes | None] = []
    for raw in raws:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out.append(None)
            continue
        sig = _signer.sign(obj)
        out.append(None if sig is None else sig.tobytes())
    return out


class NearDupIndex:
    """The kept records' signatures in LSH band tables; `offer` decides each record in turn."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM) -> None:
        import numpy as np

        self.np = np
        self.threshold = float(threshold)
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self.need = math.ceil(round(self.threshold * num_perm, 9))  # equal positions needed
        self.tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._chunks: list[Any] = []  # kept signatures, _ROWS per numpy block
        self.kept = 0
        mix = hashlib.shake_256(b"shardkit lsh bands").digest(8 * self.rows)
        self._mix = (np.frombuffer(mix, dtype="<u8") | np.uint64(1))
        self._salt = np.arange(self.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)

    def _band_keys(self, sig: Any) -> list[int]:
        np = self.np
        rows = sig[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        with np.errstate(over="ignore"):
            keys = (rows * self._mix).sum(axis=1, dtype=np.uint64) + self._salt
        return keys.tolist()

    def offer(self, sig: Any) -> tuple[int, float] | None:
        """(id of the earliest kept record it resembles, estimated similarity) when `sig` is
        a near-duplicate; else None, and the record is kept (its id is the count before)."""
        np = self.np
        keys = self._band_keys(sig)
        candidates: set[int] = set()
        for table, key in zip(self.tables, keys, strict=True):
            hit = table.get(key)
            if hit is not None:
                if type(hit) is int:
                    candidates.add(hit)
                else:
                    candidates.update(hit)
        if candidates:
            chunks = self._chunks
            for c in sorted(candidates):
                equal = int(np.count_nonzero(chunks[c >> _SHIFT][c & _MASK] == sig))
                if equal >= self.need:
                    return c, equal / self.num_perm
        ident = self.kept
        self.kept += 1
        if ident & _MASK == 0:
            self._chunks.append(np.empty((1 << _SHIFT, self.num_perm), dtype=np.uint32))
        self._chunks[ident >> _SHIFT][ident & _MASK] = sig
        for table, key in zip(self.tables, keys, strict=True):
            hit = table.get(key)
            if hit is None:
                table[key] = ident
            elif type(hit) is int:
                table[key] = [hit, ident]
            else:
                hit.append(ident)
        return None
