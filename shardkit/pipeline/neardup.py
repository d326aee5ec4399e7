"""--near-dedup THRESHOLD: the map stage (signatures, on worker processes) and the global
stage (LSH in input order) of near-duplicate removal, as a record-flow step.

The map stage computes each record's MinHash signature (`records.minhash`); it depends on
the record's bytes only, so it may run anywhere, in any order: with `jobs` > 1 batches of
records are signed on a process pool while the flow goes on in input order. The global stage
is one `NearDupIndex` that sees every record in input order, so which record is kept and
which is set aside is the same on every engine and with any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from shardkit.records.check import mp_context
from shardkit.records.minhash import NUM_PERM, NearDupIndex, Signer, sign_raw_lines

__all__ = ["NearDedup", "NEAR_DUPLICATES_NAME"]

NEAR_DUPLICATES_NAME = "near-duplicates.jsonl"
BATCH = 256  # records per task of the map stage


class NearDedup:
    """The step: a record whose estimated similarity to an earlier kept record is >= the
    threshold goes to near-duplicates.jsonl with that record's file:line (counted as a
    duplicate); a record without a word is kept and never compared."""

    def __init__(self, flow: Any, threshold: float, shingle: int, jobs: int = 1) -> None:
        import numpy as np

        self.np = np
        self.flow = flow
        self.index = NearDupIndex(threshold)
        self.signer = Signer(shingle)
        self.shingle = shingle
        self.where: list[tuple[int, int]] = []  # kept id -> (input, line)
        self.pool: ProcessPoolExecutor | None = None
        self.jobs = max(1, jobs)
        self.pending: dict[int, bytes | None] = {}  # id(record) -> signature, from the map stage

    def manifest(self) -> dict:
        return {"threshold": self.index.threshold, "shingle": self.shingle, "num_perm": NUM_PERM,
                "bands": self.index.bands, "rows": self.index.rows, "kept": self.index.kept}

    # ----- the map stage

    def prefetch(self, records: Iterator[Any]) -> Iterator[Any]:
        """The records as they come, their signatures computed ahead on the pool (not with
        --to: a converted record is signed as it is written, in the step)."""
        if self.jobs == 1 or self.flow.opts.to:
            yield from records
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=mp_context())
        window: list[tuple[list, Any]] = []
        batch: list = []
        for rec in records:
            batch.append(rec)
            if len(batch) == BATCH:
                window.append((batch, self.pool.submit(sign_raw_lines, self.shingle, NUM_PERM, [r.raw for r in batch])))
                batch = []
                if len(window) > 2 * self.jobs:
                    yield from self._take(window.pop(0))
        if batch:
            window.append((batch, self.pool.submit(sign_raw_lines, self.shingle, NUM_PERM, [r.raw for r in batch])))
        for item in window:
            yield from self._take(item)

    def _take(self, item: tuple[list, Any]) -> Iterator[Any]:
        batch, future = item
        for rec, sig in zip(batch, future.result(), strict=True):
            self.pending[id(rec)] = sig
            yield rec
            self.pending.pop(id(rec), None)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    # ----- the global stage

    def __call__(self, rec: Any) -> bool:
        raw = self.pending.pop(id(rec), _MISSING)
        if raw is _MISSING or rec.raw is not rec.original:  # not signed ahead, or converted since
            sig = self.signer.sign(rec.obj())
        else:
            sig = None if raw is None else self.np.frombuffer(raw, dtype=self.np.uint32)
        if sig is None:
            return True
        found = self.index.offer(sig)
        if found is None:
            self.where.append((rec.source, rec.line))
            return True
        kept, similarity = found
        source, line = self.where[kept]
        where = f"{self.flow.specs[source].display}:{line}"
        entry = self.flow.side_entry(rec, "near_duplicate",
                                     f"near-duplicate of {where} (estimated Jaccard {similarity:.3f} >= {self.index.threshold})")
        entry["near_duplicate_of"] = where
        entry["similarity"] = round(similarity, 4)
        self.flow.near_duplicates.add(entry)
        self.flow.tallies[rec.source].duplicates += 1
        return False


_MISSING = object()
