"""split --tokenize MODEL_DIR --seq-len L: records become `input_ids` and `labels` rows.

The step runs last among the record steps (after dedup, exclusion and the holdout, which
look at the record as it came), so it composes with every other option: format (Parquet
shards get a fixed schema, input_ids and labels as list<int32>, with no schema pass),
shuffle, holdout, dedup, engine and store. Records are tokenized ahead in batches, the
tokenizer's own threads on all cores; the flow goes on in input order.

Records longer than L tokens: --overflow reject (default: to the rejects file with the count),
truncate (cut to L) or drop (to excluded.jsonl with the count). A record with no token
to learn from within L (every assistant token beyond it, or none at all) is always rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from shardkit.core.errors import InputError, UsageError
from shardkit.records.tokenize import IGNORE, TokenModel

__all__ = ["OVERFLOW", "TokenizeStep", "read_row", "segments", "token_schema"]

OVERFLOW = ("reject", "truncate", "drop")
BATCH = 512


def token_schema(pack: bool = False):
    """The Parquet schema of tokenized shards (as `parquet.InferredSchema`)."""
    import pyarrow as pa

    from shardkit.pipeline.parquet import InferredSchema

    names = ["input_ids", "labels", *(["position_ids", "seq_lens"] if pack else [])]
    return InferredSchema(pa.schema([pa.field(name, pa.list_(pa.int32())) for name in names]))


class TokenRows:
    """A shard writer's rows: one per example, or with --pack examples laid whole, in the
    order they come, into rows of at most `seq_len` tokens, with `position_ids` restarting
    at 0 for each example and `seq_lens` (the layout of HF's DataCollatorWithFlattening and
    flash-attention's varlen kernels). In a packed row the first token of each example has
    no loss (label -100), as that collator does: nothing is learned across examples.
    Counts per shard: examples, tokens (input, label) and padding (to seq_len per row)."""

    def __init__(self, seq_len: int, pack: bool) -> None:
        self.seq_len, self.pack = seq_len, pack
        self._reset_row()
        self._reset_shard()

    def _reset_row(self) -> None:
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.positions: list[int] = []
        self.lens: list[int] = []
        self.line: int | None = None

    def _reset_shard(self) -> None:
        self.examples = self.input = self.label = self.padding = 0

    def add(self, data: bytes, line: int | None) -> list[tuple[bytes, int | None]]:
        row = orjson.loads(data)
        ids, labels = row["input_ids"], row["labels"]
        if not self.pack:
            self._count(1, ids, labels)
            return [(data, line)]
        out = self.flush() if self.lens and len(self.ids) + len(ids) > self.seq_len else []
        if not self.lens:
            self.line = line
        self.ids += ids
        if labels:
            self.labels.append(IGNORE)
            self.labels += labels[1:]
        self.positions += range(len(ids))
        self.lens.append(len(ids))
        return out

    def flush(self) -> list[tuple[bytes, int | None]]:
        if not self.lens:
            return []
        row = orjson.dumps({"input_ids": self.ids, "labels": self.labels, "position_ids": self.positions,
                            "seq_lens": self.lens}) + b"\n"
        self._count(len(self.lens), self.ids, self.labels)
        line = self.line
        self._reset_row()
        return [(row, line)]

    def _count(self, examples: int, ids: list[int], labels: list[int]) -> None:
        self.examples += examples
        self.input += len(ids)
        self.label += len(labels) - labels.count(IGNORE)
        self.padding += self.seq_len - len(ids)

    def shard_totals(self) -> dict:
        """What the manifest lists for the shard just written (then counting starts again)."""
        d = {"examples": self.examples, "tokens": {"input": self.input, "label": self.label, "padding": self.padding}}
        self._reset_shard()
        return d


class TokenizeStep:
    def __init__(self, flow: Any, model: str, seq_len: int, overflow: str) -> None:
        self.flow = flow
        self.model = TokenModel(model)
        self.seq_len, self.overflow = seq_len, overflow
        self.pending: dict[int, Any] = {}
        self.totals = {"records": 0, "input": 0, "label": 0, "padding": 0, "truncated": 0}

    def manifest(self, model_path: str, files: list[dict], pack: bool = False) -> dict:
        """The tokenizer (sha256 of tokenizer.json and of the template), L, packing and the
        token totals over the shards written (input, label, padding to L per row)."""
        totals = {k: sum(f.get("tokens", {}).get(k, 0) for f in files) for k in ("input", "label", "padding")}
        return {**self.model.describe(), "model": model_path, "seq_len": self.seq_len, "overflow": self.overflow,
                "pack": pack, "rows": sum(f["records"] for f in files), "examples": sum(f.get("examples", 0) for f in files),
                "truncated": self.totals["truncated"], "tokens": totals}

    def prefetch(self, records: Iterator[Any]) -> Iterator[Any]:
        batch: list = []
        for rec in records:
            batch.append(rec)
            if len(batch) == BATCH:
                yield from self._encoded(batch)
                batch = []
        yield from self._encoded(batch)

    def _encoded(self, batch: list) -> Iterator[Any]:
        if not batch:
            return
        results = self.model.encode([rec.obj() for rec in batch])
        for rec, result in zip(batch, results, strict=True):
            self.pending[id(rec)] = result
            yield rec
            self.pending.pop(id(rec), None)

    def __call__(self, rec: Any) -> bool:
        result = self.pending.pop(id(rec), None)
        if result is None:
            (result,) = self.model.encode([rec.obj()])
        if type(result) is tuple:  # (code, reason): a Tokenized is a NamedTuple, not a plain tuple
            self.flow.reject(rec, *result)
            return False
        ids, labels = result.input_ids, result.labels
        limit = self.seq_len
        if len(ids) > limit:
            if self.overflow == "reject":
                self.flow.reject(rec, "too_many_tokens", f"{len(ids):,} tokens after the chat template, over --seq-len {limit:,}")
                return False
            if self.overflow == "drop":
                entry = self.flow.side_entry(rec, "overflow", f"{len(ids):,} tokens after the chat template, over --seq-len {limit:,}")
                entry["tokens"] = len(ids)
                self.flow.excluded.add(entry)
                self.flow.tallies[rec.source].excluded += 1
                return False
            ids, labels = ids[:limit], labels[:limit]
            self.totals["truncated"] += 1
        kept = len(labels) - labels.count(IGNORE)
        if not kept:
            where = f"within --seq-len {limit:,}" if len(result.input_ids) > limit else "at all"
            self.flow.reject(rec, "no_loss", f"no token to learn from {where} ({len(result.input_ids):,} tokens; "
                                             "every assistant token is masked or cut)")
            return False
        self.totals["records"] += 1
        self.totals["input"] += len(ids)
        self.totals["label"] += kept
        rec.replace({"input_ids": ids, "labels": labels})
        return True


# ------------------------------------------------------------------ reading a row back


def read_row(path: str | Path, row: int) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, rows in the file) of row `row` of a tokenized shard (Parquet or JSONL)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if row < 0:
        raise UsageError(f"--row must be 0 or more (got {row})")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path, columns=["input_ids", "labels"])
        except Exception as e:  # pyarrow raises its own types for a bad or foreign file
            raise InputError(f"{path}: not a tokenized Parquet shard (input_ids, labels): {e}") from None
        if row >= table.num_rows:
            raise UsageError(f"{path}: has {table.num_rows} row(s); --row {row} is beyond them")
        return table["input_ids"][row].as_py(), table["labels"][row].as_py(), table.num_rows
    lines = path.read_bytes().splitlines()
    if row >= len(lines):
        raise UsageError(f"{path}: has {len(lines)} row(s); --row {row} is beyond them")
    obj = orjson.loads(lines[row])
    if not isinstance(obj, dict) or "input_ids" not in obj or "labels" not in obj:
        raise InputError(f"{path}:{row + 1}: not a tokenized row (input_ids, labels)")
    return obj["input_ids"], obj["labels"], len(lines)


def segments(tokenizer: Any, ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """The row as text, in runs: (learned, text) where `learned` is False for masked tokens."""
    out: list[tuple[bool, str]] = []
    start = 0
    for k in range(1, len(ids) + 1):
        if k == len(ids) or (labels[k] != IGNORE) != (labels[start] != IGNORE):
            out.append((labels[start] != IGNORE, tokenizer.decode(ids[start:k], skip_special_tokens=False)))
            start = k
    return out
