"""Looking at data without writing anything: `head` (the first records) and `sample` (a
uniform random sample, one pass, bounded memory).

Both read every input `split` reads: JSONL (plain, .gz, .zst, stdin, s3:// and other
fsspec URLs), a .json file holding one JSON array, and Parquet. A record comes back as
(input, line, bytes): the line's own bytes without its newline (a JSON-array element as
compact JSON, a Parquet row as the JSON line `split` would write).

`sample` is reservoir sampling (Li's Algorithm L): after the first n records it draws how
many records to skip before the next one it keeps, so it walks most blocks without looking
at a single record. Memory: the n records kept plus one block. The same inputs, n and seed
give the same sample; it is printed in input order.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from shardkit.core.blocks import NL, BlockReader, nonblank_runs
from shardkit.core.errors import DataError, UsageError
from shardkit.core.io import InputSpec, InputStream
from shardkit.core.jsonarray import JsonArraySource, compact
from shardkit.pipeline.shard import check_run_inputs, holds_json_array, open_input


@dataclass(frozen=True)
class Peeked:
    """One record: which input, which line, its bytes (no newline)."""

    source: str
    line: int
    raw: bytes


def _runs(spec: InputSpec) -> Iterator[tuple[bytes | bytearray, int, int, int, int]]:
    """(buf, start, end, first_line, records) for each run of records, in input order. A
    JSON array's elements come one per run (compact, with a newline)."""
    if holds_json_array(spec):
        with InputStream(spec) as stream:
            try:
                for line, _offset, raw in JsonArraySource(stream):
                    data = compact(raw) + NL
                    yield data, 0, len(data), line, 1
            except DataError as e:  # a broken array: say which file, as validate does
                raise DataError(f"{spec.display}: {e}") from None
        return
    with open_input(spec) as stream:
        for block in BlockReader(stream):
            for run in nonblank_runs(block)[0]:
                yield block.buf, run.start, run.end, run.first_line, run.lines


def head(inputs: Sequence[str | os.PathLike], n: int = 10) -> list[Peeked]:
    """The first `n` records over the inputs in order (reading no further than needed)."""
    if n < 0:
        raise UsageError(f"-n must be 0 or more (got {n})")
    out: list[Peeked] = []
    for spec in check_run_inputs(inputs, resume=False, overwrite=False, arrays=True, repeats=True):
        if len(out) >= n:
            break
        for buf, pos, end, line, _records in _runs(spec):
            find = buf.find
            while pos < end and len(out) < n:
                nxt = find(NL, pos, end) + 1
                out.append(Peeked(spec.display, line, bytes(buf[pos:nxt]).rstrip(b"\r\n")))
                pos, line = nxt, line + 1
            if len(out) >= n:
                break
    return out


def sample(inputs: Sequence[str | os.PathLike], n: int, seed: int = 0) -> list[Peeked]:
    """A uniform random sample of `n` records (all of them when there are fewer), in input
    order; one pass, memory for `n` records."""
    if n < 1:
        raise UsageError(f"-n must be at least 1 (got {n})")
    rng = random.Random(f"shardkit-sample:{seed}")
    kept: list[tuple[int, Peeked]] = []  # (global index, record)
    w = math.exp(math.log(1.0 - rng.random()) / n)
    take = n  # global index of the next record to keep once the reservoir is full
    index = 0  # global index of the first record of the current run
    for spec in check_run_inputs(inputs, resume=False, overwrite=False, arrays=True, repeats=True):
        for buf, start, end, first_line, records in _runs(spec):
            # the records of this run to keep: the first n overall, then those the skips land on
            pos, at = start, 0  # cursor: offset of record `at` of this run
            while True:
                want = len(kept) if len(kept) < n else take
                rel = want - index
                if rel >= records:
                    break
                while at < rel:  # walk to it (only runs that hold a kept record are walked)
                    pos = buf.find(NL, pos, end) + 1
                    at += 1
                nxt = buf.find(NL, pos, end) + 1
                rec = (want, Peeked(spec.display, first_line + rel, bytes(buf[pos:nxt]).rstrip(b"\r\n")))
                if len(kept) < n:
                    kept.append(rec)
                else:
                    kept[rng.randrange(n)] = rec
                    w *= math.exp(math.log(1.0 - rng.random()) / n)
                    take += math.floor(math.log(1.0 - rng.random()) / math.log1p(-w)) + 1 if w < 1 else 1
                if len(kept) == n and want == n - 1:
                    take += math.floor(math.log(1.0 - rng.random()) / math.log1p(-w)) if w < 1 else 0
            index += records
    kept.sort(key=lambda r: r[0])
    return [p for _, p in kept]


__all__ = ["Peeked", "head", "sample"]
