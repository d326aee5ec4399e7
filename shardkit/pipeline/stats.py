"""Dataset statistics: records, kinds, lengths, duplicates and token counts, in one pass.

Each input is streamed record by record (`open_source`); nothing is loaded whole. What
is kept per record is one small row of typed columns: file index 4 bytes, line number 8,
kind 1, characters 8, messages 4, turns 4, tokens 4 (only with a tokenizer) and the first
16 bytes of the sha256 of the record's normalised JSON (``orjson`` with sorted keys, so
records that differ only in key order or whitespace are duplicates): 45 bytes, 49 with
tokens. At the end polars (imported only then) copies the columns into a DataFrame and
aggregates them: percentiles, histogram bins, and duplicates found by sorting the hashes.
Measured: 1M chat records (2.9 GB) peak at 192 MB RSS; Python with polars loaded is
~50 MB of that, so about 140 bytes per record at the peak.

Definitions:
- records: non-blank lines that hold a JSON object. Invalid lines (not JSON, or not an
  object) and blank lines are counted apart and get no row.
- characters: ``len(tokens.record_text(obj, kind))``, the text a trainer tokenizes.
- tokens (with a tokenizer): of the text the model's chat template renders, when the model
  folder has one (chat records, and the kinds ``split --to chat`` maps); else of the text.
- messages: chat and sharegpt count their list; alpaca counts 2 per exchange (+1 for a
  system prompt); prompt-completion is 2. Turns are user -> assistant exchanges. Text
  records and unknown kinds have neither and are left out of those two statistics.
- percentiles interpolate linearly between ranks (numpy's default; p50 is the median).
- duplicates: rows whose normalised record appeared earlier. Per input, within that
  input; in the total, across all inputs.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shardkit.core.errors import DataError, UsageError
from shardkit.core.io import InputSpec, InputStream, format_size, inspect_input
from shardkit.pipeline.shard import open_input
from shardkit.records.minhash import DEFAULT_SHINGLE, NUM_PERM, NearDupIndex, Signer, lsh_params
from shardkit.records.template import TemplateError, chat_view, load_chat_template
from shardkit.records.tokens import (
    SEPARATOR,
    add_content_parts,
    count_tokens,
    load_tokenizer,
    text_parts,
)
from shardkit.records.validate import KINDS, decode_line, detect_kind

__all__ = ["TOKEN_LIMITS", "compute_stats", "open_source", "render_histogram", "render_stats"]

TOKEN_LIMITS = (2048, 4096, 8192)
PERCENTILES = (50, 95, 99)
UNKNOWN = "unknown"
HISTOGRAM_BINS = 12  # linear bins for a narrow spread; wide spreads get powers of two
_NA = 0xFFFFFFFF  # "no messages/turns for this kind" in a uint32 column
_KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
_KIND_NAMES = (*KINDS, UNKNOWN)
_TOKEN_BATCH_RECORDS = 1024
_TOKEN_BATCH_CHARS = 4 * 1024 * 1024
_BLOCKS = " ▏▎▍▌▋▊▉█"  # eighths of a character cell


class RecordSource(Protocol):
    """What a source yields: (line number, byte offset, raw bytes); `blank` lines skipped."""

    blank: int

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]: ...


def open_source(spec: InputSpec, stream: Any) -> RecordSource:
    """The record source for one input: JSON Lines, or a streamed `.json` array."""
    from shardkit.pipeline.scan import open_records

    return open_records(spec.path, stream)


class _CountingReader:
    """Counts the decompressed bytes the source reads (one call per 1 MiB block)."""

    def __init__(self, stream: InputStream) -> None:
        self._stream = stream
        self.bytes = 0

    def read(self, n: int) -> bytes:
        data = self._stream.read(n)
        self.bytes += len(data)
        return data

    def readinto(self, view: memoryview) -> int:
        n = self._stream.readinto(view)
        self.bytes += n
        return n


@dataclass(slots=True)
class StatsColumns:
    """One row per record, in typed arrays (no Python object per value)."""

    with_tokens: bool
    shingle: int | None = None  # with --near-dup: signatures of word shingles of this length
    file: array = field(default_factory=lambda: array("I"))
    line: array = field(default_factory=lambda: array("Q"))
    kind: array = field(default_factory=lambda: array("B"))
    chars: array = field(default_factory=lambda: array("Q"))
    messages: array = field(default_factory=lambda: array("I"))
    turns: array = field(default_factory=lambda: array("I"))
    tokens: array = field(default_factory=lambda: array("I"))
    hashes: bytearray = field(default_factory=bytearray)  # 16 bytes per row
    signatures: bytearray = field(default_factory=bytearray)  # --near-dup: NUM_PERM x 4 bytes per row
    signed: bytearray = field(default_factory=bytearray)  # --near-dup: 1 when the row has a signature

    def drain_to_frame(self, pl: Any) -> Any:
        """The rows as a polars DataFrame; the arrays are emptied as they are copied."""
        halves = array("Q")
        halves.frombytes(self.hashes)
        self.hashes = bytearray()
        both = pl.Series("h", halves, dtype=pl.UInt64)
        data = {
            "file": pl.Series("file", self.file, dtype=pl.UInt32),
            "line": pl.Series("line", self.line, dtype=pl.UInt64),
            "kind": pl.Series("kind", self.kind, dtype=pl.UInt8),
            "chars": pl.Series("chars", self.chars, dtype=pl.UInt64),
            "messages": pl.Series("messages", self.messages, dtype=pl.UInt32),
            "turns": pl.Series("turns", self.turns, dtype=pl.UInt32),
            "h0": both.gather_every(2),
            "h1": both.gather_every(2, offset=1),
        }
        if self.with_tokens:
            data["tokens"] = pl.Series("tokens", self.tokens, dtype=pl.UInt32)
        for name in ("file", "line", "kind", "chars", "messages", "turns", "tokens"):
            setattr(self, name, array(getattr(self, name).typecode))
        return pl.DataFrame(data)


@dataclass(slots=True)
class _InputTally:
    """What one input contributes besides its rows."""

    display: str
    first_row: int
    rows: int = 0
    bytes: int = 0
    file_bytes: int = 0
    blank: int = 0
    invalid: int = 0
    invalid_first: list[dict] = field(default_factory=list)
    template_failed: int = 0


class _TokenCounter:
    """Batches record texts for `count_tokens` so the tokenizer works on all cores. With a
    chat template, a record a template renders (chat, and the kinds `--to chat` maps) is
    counted as the template renders it; one it refuses, by its text (`failed` counts them)."""

    def __init__(self, tokenizer: Any, out: array, template: Any = None) -> None:
        self._tokenizer = tokenizer
        self._template = template
        self._out = out
        self._texts: list[str] = []
        self._chars = 0
        self.failed = 0

    def add_record(self, obj: dict, kind: str | None, parts: list[str]) -> None:
        view = chat_view(obj, kind) if self._template is not None else None
        if view is not None:
            try:
                self.add(self._template.render(view[0], tools=view[1]))
                return
            except TemplateError:
                self.failed += 1
        self.add(SEPARATOR.join(parts))

    def add(self, text: str) -> None:
        self._texts.append(text)
        self._chars += len(text)
        if len(self._texts) >= _TOKEN_BATCH_RECORDS or self._chars >= _TOKEN_BATCH_CHARS:
            self.flush()

    def flush(self) -> None:
        self._out.extend(count_tokens(self._tokenizer, self._texts))
        self._texts = []
        self._chars = 0


def compute_stats(
    paths: list[str],
    *,
    tokenizer_path: str | None = None,
    seq_len: int | None = None,
    near_dup: float | None = None,
    shingle: int = DEFAULT_SHINGLE,
    examples: int = 3,
    progress: Callable[[int], None] | None = None,
    extras: bool = False,
) -> dict:
    """Statistics for each input and overall; see the module docstring for definitions.

    `examples` caps the invalid lines and duplicate pairs listed. `progress`, if given,
    is called with the number of bytes read from disk as the inputs are read.
    Raises `InputError` for a missing or unreadable input before reading any.
    """
    if not paths:
        raise UsageError("no inputs given")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise UsageError(f"examples must be a whole number >= 0, got {examples!r}")
    check_seq_len(seq_len, tokenizer_path)
    if near_dup is not None:
        lsh_params(near_dup)
        Signer(shingle)  # its range
    specs = [inspect_input(str(p)) for p in paths]
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    template = load_chat_template(tokenizer_path) if tokenizer_path is not None else None
    columns = StatsColumns(with_tokens=tokenizer is not None, shingle=shingle if near_dup is not None else None)
    tallies = [
        scan_input(index, spec, columns, tokenizer, examples, progress, template) for index, spec in enumerate(specs)
    ]
    return stats_report(columns, tallies, examples, tokenizer_path, seq_len, near_dup, extras)


def check_seq_len(seq_len: int | None, tokenizer_path: str | None) -> None:
    if seq_len is None:
        return
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise UsageError(f"--seq-len must be a whole number >= 1 (got {seq_len!r})")
    if tokenizer_path is None:
        raise UsageError("--seq-len needs --tokenizer PATH (the plan counts tokens)")


def scan_input(
    index: int,
    spec: InputSpec,
    columns: StatsColumns,
    tokenizer: Any,
    examples: int,
    progress: Callable[[int], None] | None,
    template: Any = None,
) -> _InputTally:
    tally = _InputTally(spec.display, first_row=len(columns.kind))
    on_raw = (lambda data: progress(len(data))) if progress is not None else None
    counter = _TokenCounter(tokenizer, columns.tokens, template) if tokenizer is not None else None
    signer = Signer(columns.shingle) if columns.shingle is not None else None
    with open_input(spec, on_raw) as stream:  # JSONL, or Parquet read as JSONL
        counted = _CountingReader(stream)
        source = open_source(spec, counted)
        try:
            _scan_records(source, index, columns, tally, counter, examples, signer)
        except DataError as e:
            raise DataError(f"{spec.display}: {e}") from None
        tally.blank = source.blank
        tally.bytes = counted.bytes
        tally.file_bytes = stream.raw_bytes
    if counter is not None:
        counter.flush()
        tally.template_failed = counter.failed
    tally.rows = len(columns.kind) - tally.first_row
    return tally


def _scan_records(
    source: Iterable[tuple[int, int, bytes]],
    index: int,
    columns: StatsColumns,
    tally: _InputTally,
    counter: _TokenCounter | None,
    examples: int,
    signer: Signer | None = None,
) -> None:
    # the hot loop: names bound locally, one pass per record
    loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    JSONDecodeError = orjson.JSONDecodeError
    sha256 = hashlib.sha256
    kind_code, unknown_code = _KIND_CODE, len(KINDS)
    add_file, add_line, add_kind = columns.file.append, columns.line.append, columns.kind.append
    add_chars, add_messages, add_turns = columns.chars.append, columns.messages.append, columns.turns.append
    hashes = columns.hashes
    for number, _offset, raw in source:
        try:
            obj = loads(raw)
        except JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            obj = _invalid(raw, number, tally, examples)
            if obj is None:
                continue
        kind = detect_kind(obj)
        parts, n_messages, n_turns = _measure(obj, kind)
        try:
            normalised = dumps(obj, option=sort_keys)
        except orjson.JSONEncodeError:  # not expected for decoded JSON; hash the bytes then
            normalised = raw.strip()
        add_file(index)
        add_line(number)
        add_kind(kind_code.get(kind, unknown_code))  # type: ignore[arg-type]
        add_chars(sum(map(len, parts)) + len(parts) - 1 if parts else 0)
        add_messages(n_messages)
        add_turns(n_turns)
        hashes += sha256(normalised).digest()[:16]
        if counter is not None:
            counter.add_record(obj, kind, parts)
        if signer is not None:
            sig = signer.sign(obj)
            columns.signed.append(sig is not None)
            columns.signatures += sig.tobytes() if sig is not None else bytes(4 * NUM_PERM)


def _invalid(raw: bytes, number: int, tally: _InputTally, examples: int) -> dict | None:
    """Count a line that is not a JSON object; return the object if it is one after all (BOM)."""
    obj, issue = decode_line(raw.rstrip(b"\r\n"))
    if obj is not None:
        return obj  # valid apart from a leading BOM: `validate` reports that, stats count it
    tally.invalid += 1
    if len(tally.invalid_first) < examples:
        message = issue.message if issue is not None else "not a JSON object"
        tally.invalid_first.append({"file": tally.display, "line": number, "message": message})
    return None


_SHAREGPT_ROLES = (("human", "user"), ("gpt", "assistant", "function_call"))


def _measure(obj: dict, kind: str | None) -> tuple[list[str], int, int]:
    """(text parts as `tokens.text_parts` gives them, messages, user -> assistant exchanges).

    Messages and exchanges are _NA for kinds without a dialogue.
    """
    if kind == "chat":
        return _measure_chat(obj.get("messages"))
    parts = text_parts(obj, kind)
    if kind == "sharegpt":
        return (parts, *_exchanges(obj.get("conversations"), "from", *_SHAREGPT_ROLES))
    if kind == "alpaca":
        history = obj.get("history")
        pairs = len(history) if type(history) is list else 0
        system = obj.get("system")
        return parts, 2 * (pairs + 1) + (1 if type(system) is str and system else 0), pairs + 1
    if kind == "prompt-completion":
        return parts, 2, 1
    return parts, _NA, _NA


def _measure_chat(messages: object) -> tuple[list[str], int, int]:
    """One pass over a chat record (the common kind): the same parts as tokens._chat_parts."""
    if type(messages) is not list:
        return [], _NA, _NA
    parts: list[str] = []
    append = parts.append
    exchanges = 0
    asked = False
    for message in messages:
        if type(message) is not dict:
            continue
        content = message.get("content")
        if type(content) is str:
            if content:
                append(content)
        elif type(content) is list:
            add_content_parts(parts, content)
        role = message.get("role")
        if role == "user":
            asked = True
        elif asked and role == "assistant":  # tool calls and results inside an exchange count once
            exchanges += 1
            asked = False
    return parts, min(len(messages), _NA - 1), exchanges


def _exchanges(turns: object, key: str, users: tuple, assistants: tuple) -> tuple[int, int]:
    if type(turns) is not list:
        return _NA, _NA
    exchanges = 0
    asked = False
    for turn in turns:
        role = turn.get(key) if type(turn) is dict else None
        if type(role) is not str:
            continue
        if role in users:
            asked = True
        elif asked and role in assistants:
            exchanges += 1
            asked = False
    return min(len(turns), _NA - 1), exchanges


# ------------------------------------------------------------------ aggregation (polars)


def stats_report(
    columns: StatsColumns, tallies: list[_InputTally], examples: int, tokenizer_path: str | None,
    seq_len: int | None = None, near_dup: float | None = None, extras: bool = False,
) -> dict:
    import polars as pl

    near = near_duplicates(columns, tallies, near_dup, examples) if near_dup is not None else None
    frame = columns.drain_to_frame(pl)
    more = _extras(pl, frame, [t.display for t in tallies]) if extras else None
    plan = token_plan(frame["tokens"].to_list(), seq_len) if seq_len is not None and "tokens" in frame.columns else None
    names = [t.display for t in tallies]
    inputs = [
        {"path": t.display, **_section(pl, frame.slice(t.first_row, t.rows), [t], names, examples)}
        for t in tallies
    ]
    total = _section(pl, frame, tallies, names, examples)
    return {
        "inputs": inputs,
        "total": {"files": len(tallies), **total},
        "tokenizer": str(tokenizer_path) if tokenizer_path is not None else None,
        "token_limits": list(TOKEN_LIMITS) if tokenizer_path is not None else [],
        **_template_fields(tokenizer_path, tallies),
        **({"token_plan": plan} if plan is not None else {}),
        **({"near_duplicates": near} if near is not None else {}),
        **({"extras": more} if more is not None else {}),
    }


def _extras(pl: Any, frame: Any, names: list[str], longest: int = 10) -> dict:
    """What `shardkit report` plots besides the totals: length (and token) histograms per
    kind, the distribution of turns, the longest records."""
    by_kind = {}
    shared = {c: _bin_edges(int(frame[c].min()), int(frame[c].max())) if frame.height else None
              for c in ("chars", "tokens") if c in frame.columns}  # one set of bins for every kind
    for code, name in enumerate(_KIND_NAMES):
        rows = frame.filter(pl.col("kind") == code)
        if rows.height:
            by_kind[name] = {
                "records": rows.height,
                "chars_histogram": _histogram(pl, rows["chars"], shared["chars"]),
                **({"tokens_histogram": _histogram(pl, rows["tokens"], shared["tokens"])} if "tokens" in rows.columns else {}),
            }
    turns = frame.filter(pl.col("turns") != _NA)["turns"].value_counts().sort("turns")
    top = frame.sort(["chars", "file", "line"], descending=[True, False, False]).head(longest)
    return {
        "by_kind": by_kind,
        "turns": [[int(t), int(n)] for t, n in zip(turns["turns"].to_list(), turns["count"].to_list(), strict=True)],
        "longest": [{"file": names[f], "line": int(line), "kind": _KIND_NAMES[k], "chars": int(c)}
                    for f, line, k, c in zip(top["file"].to_list(), top["line"].to_list(), top["kind"].to_list(),
                                              top["chars"].to_list(), strict=True)],
    }


def near_duplicates(columns: StatsColumns, tallies: list[_InputTally], threshold: float, examples: int) -> dict:
    """Near-duplicate clusters over all rows in input order (the global stage of `split
    --near-dedup`, without writing): each cluster is a kept record and the later records
    whose estimated similarity to it is >= `threshold`."""
    import numpy as np

    index = NearDupIndex(threshold)
    size = 4 * NUM_PERM
    members: dict[int, list[int]] = {}  # kept id -> rows of its near-duplicates
    kept_row: list[int] = []
    names = {i: t.display for i, t in enumerate(tallies)}
    for row in range(len(columns.signed)):
        if not columns.signed[row]:
            continue
        sig = np.frombuffer(columns.signatures, dtype=np.uint32, count=NUM_PERM, offset=row * size)
        found = index.offer(sig)
        if found is None:
            kept_row.append(row)
        else:
            members.setdefault(found[0], []).append(row)
    columns.signatures, columns.signed = bytearray(), bytearray()

    def where(row: int) -> str:
        return f"{names[columns.file[row]]}:{columns.line[row]}"

    largest = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:examples]
    return {
        "threshold": threshold,
        "shingle": columns.shingle,
        "num_perm": NUM_PERM,
        "records": sum(len(v) for v in members.values()),
        "clusters": len(members),
        "largest": [{"kept": where(kept_row[k]), "size": len(rows) + 1, "members": [where(r) for r in rows[:examples]]}
                    for k, rows in largest],
    }


def token_plan(lengths: Sequence[int], seq_len: int) -> dict:
    """What an epoch costs at `seq_len`: every record truncated to `seq_len` tokens, then

    - without packing, one sequence per record, padded to `seq_len`;
    - with greedy packing, records laid in input order into the current sequence while they
      fit, a new sequence when one does not (each record whole, as packing collators keep them).

    Padding share = padding tokens / (sequences x seq_len)."""
    kept = 0
    sequences, room = 0, 0
    for n in lengths:
        n = min(n, seq_len)
        kept += n
        if n > room:
            sequences += 1
            room = seq_len
        room -= n
    total = sum(lengths)
    records = len(lengths)

    def padding(seqs: int) -> float:
        return round(1 - kept / (seqs * seq_len), 4) if seqs else 0.0

    return {
        "seq_len": seq_len,
        "records": records,
        "tokens": total,
        "kept_tokens": kept,
        "truncated_tokens": total - kept,
        "truncated_records": sum(1 for n in lengths if n > seq_len),
        "unpacked": {"sequences": records, "padding_share": padding(records)},
        "packed": {"sequences": sequences, "padding_share": padding(sequences)},
    }

def _template_fields(tokenizer_path: str | None, tallies: list[_InputTally]) -> dict:
    """Which chat template the token counts went through, and how many records it refused."""
    template = load_chat_template(tokenizer_path) if tokenizer_path is not None else None
    if template is None:
        return {"chat_template": None}
    return {"chat_template": template.name, "template_failed": sum(t.template_failed for t in tallies)}


def _section(pl: Any, rows: Any, tallies: list[_InputTally], names: list[str], examples: int) -> dict:
    invalid_first = [entry for t in tallies for entry in t.invalid_first][:examples]
    section: dict[str, Any] = {
        "records": rows.height,
        "bytes": sum(t.bytes for t in tallies),
        "file_bytes": sum(t.file_bytes for t in tallies),
        "blank_lines": sum(t.blank for t in tallies),
        "invalid": {"count": sum(t.invalid for t in tallies), "first": invalid_first},
        "kinds": _kind_counts(pl, rows),
        "messages": _summary(pl, rows, "messages", percentiles=(50,), skip_na=True),
        "turns": _summary(pl, rows, "turns", percentiles=(50,), skip_na=True),
        "chars": _summary(pl, rows, "chars"),
        "chars_histogram": _histogram(pl, rows["chars"]),
        "duplicates": _duplicates(pl, rows, names, examples),
    }
    if "tokens" in rows.columns:
        section["tokens"] = _token_summary(pl, rows)
        section["tokens_histogram"] = _histogram(pl, rows["tokens"])
    return section


def _kind_counts(pl: Any, rows: Any) -> dict[str, int]:
    counts = rows.group_by("kind").len()
    by_code = dict(zip(counts["kind"].to_list(), counts["len"].to_list(), strict=True))
    return {name: by_code[code] for code, name in enumerate(_KIND_NAMES) if code in by_code}


def _summary(
    pl: Any, rows: Any, column: str, *, percentiles: tuple[int, ...] = PERCENTILES, skip_na: bool = False
) -> dict | None:
    """min, mean, percentiles and max of one column; None when there is nothing to summarise."""
    col = pl.col(column)
    if skip_na:
        col = col.filter(col != _NA)
    exprs = [
        col.len().alias("count"),
        col.min().alias("min"),
        col.mean().alias("mean"),
        *(col.quantile(p / 100, "linear").alias(f"p{p}") for p in percentiles),
        col.max().alias("max"),
    ]
    values = rows.select(exprs).row(0, named=True)
    if not values["count"]:
        return None
    return {key: _tidy(value) for key, value in values.items()}


def _tidy(value: Any) -> Any:
    """Whole floats become ints; others keep two decimals (JSON output stays readable)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else round(value, 2)
    return value


def _token_summary(pl: Any, rows: Any) -> dict | None:
    summary = _summary(pl, rows, "tokens")
    if summary is None:
        return None
    tokens = pl.col("tokens")
    extra = rows.select(
        tokens.sum().alias("total"),
        *(
            (tokens > limit).sum().alias(str(limit))
            for limit in TOKEN_LIMITS
        ),
    ).row(0, named=True)
    return {
        **summary,
        "total": extra.pop("total"),
        "over": {str(limit): extra[str(limit)] for limit in TOKEN_LIMITS},
    }


def _duplicates(pl: Any, rows: Any, names: list[str], examples: int) -> dict:
    """Records whose normalised JSON appeared earlier, and the first pairs of them.

    Sort-based rather than a hash table over all rows: sorting (h0, h1, row) puts copies
    next to each other, with the earliest first, in about a third of the memory.
    """
    key = (pl.col("h0") == pl.col("h0").shift(1)) & (pl.col("h1") == pl.col("h1").shift(1))
    repeats = (
        rows.select("h0", "h1")
        .with_row_index("row")
        .sort("h0", "h1", "row")
        .select("row", key.fill_null(False).alias("repeat"))
        .with_columns(pl.when(~pl.col("repeat")).then(pl.col("row")).forward_fill().alias("first"))
        .filter(pl.col("repeat"))
    )
    shown = repeats.sort("row").head(examples)
    files, lines = rows["file"], rows["line"]
    return {
        "records": repeats.height,
        "distinct": rows.height - repeats.height,
        "groups": repeats["first"].n_unique(),
        "first": [
            {
                "file": names[files[row]],
                "line": lines[row],
                "duplicates_file": names[files[first]],
                "duplicates_line": lines[first],
            }
            for row, first in zip(shown["row"].to_list(), shown["first"].to_list(), strict=True)
        ],
    }


def _histogram(pl: Any, values: Any, edges: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(low, high, count) bins over [low, high), empty bins included, counts summing to len;
    `edges` (covering every value) to share bins between histograms."""
    if values.len() == 0:
        return []
    if edges is None:
        edges = _bin_edges(int(values.min()), int(values.max()))
    index = pl.Series("edge", edges, dtype=pl.UInt64).search_sorted(values.cast(pl.UInt64), side="right")
    counts = index.value_counts()
    by_bin = dict(zip(counts[index.name].to_list(), counts["count"].to_list(), strict=True))
    return [(edges[i - 1], edges[i], by_bin.get(i, 0)) for i in range(1, len(edges))]


def _bin_edges(low: int, high: int) -> list[int]:
    """Powers of two when lengths span more than 16x (they usually do), else even steps."""
    if high >= 16 * max(low, 1):
        edge = 1 << (max(low, 1).bit_length() - 1)  # the largest power of two <= low
        edges = [0, edge] if low == 0 else [edge]
        while edge <= high:
            edge *= 2
            edges.append(edge)
        return edges
    step = _nice_step((high - low + 1) / HISTOGRAM_BINS)
    start = low // step * step
    edges = [start]
    while edges[-1] <= high:
        edges.append(edges[-1] + step)
    return edges


def _nice_step(raw: float) -> int:
    """The smallest of 1, 2, 5 x 10^k that is at least `raw` (and at least 1)."""
    if raw <= 1:
        return 1
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= raw:
            return int(factor * magnitude)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ rendering


def render_histogram(hist: list[tuple[int, int, int]] | list[list[int]], width: int = 40) -> list[str]:
    """One line per bin: range, a bar of block characters scaled to the largest bin, count."""
    if not hist:
        return []
    peak = max(count for _, _, count in hist) or 1
    labels = [f"{_num(low)}–{_num(high - 1)}" if high - low > 1 else _num(low) for low, high, _ in hist]
    label_width = max(map(len, labels))
    count_width = max(len(_num(count)) for _, _, count in hist)
    lines = []
    for label, (_low, _high, count) in zip(labels, hist, strict=True):
        eighths = round(count * width * 8 / peak)
        if count and not eighths:
            eighths = 1  # a non-empty bin always shows
        bar = "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")
        lines.append(f"{label:>{label_width}} {bar:<{width}} {_num(count):>{count_width}}")
    return lines


def render_stats(report: dict) -> list[str]:
    """The human-readable report: one block per input, then the total for several inputs."""
    lines: list[str] = []
    for section in report["inputs"]:
        lines.extend(_render_section(section["path"], section, report.get("chat_template")))
        lines.append("")
    if len(report["inputs"]) > 1:
        lines.extend(_render_section(f"total ({report['total']['files']} files)", report["total"], report.get("chat_template")))
    elif lines:
        lines.pop()
    near = report.get("near_duplicates")
    if near is not None:
        lines.append(
            f"near-duplicates (estimated Jaccard >= {near['threshold']}, {near['shingle']}-word shingles): "
            f"{_count(near['records'], 'record')} in {_count(near['clusters'], 'cluster')}"
        )
        for c in near["largest"]:
            more = c["size"] - 1 - len(c["members"])
            lines.append(f"  {c['kept']} and {c['size'] - 1}: " + ", ".join(c["members"]) + (f", ... {more} more" if more else ""))
    plan = report.get("token_plan")
    if plan is not None:
        lines += [
            f"token plan at --seq-len {_num(plan['seq_len'])}: {_num(plan['tokens'])} tokens in {_count(plan['records'], 'record')}; "
            f"{_count(plan['truncated_records'], 'record')} longer, truncation cuts {_num(plan['truncated_tokens'])} tokens",
            f"  without packing: {_num(plan['unpacked']['sequences'])} sequences, "
            f"{plan['unpacked']['padding_share']:.1%} of their tokens padding",
            f"  greedy packing (input order): {_num(plan['packed']['sequences'])} sequences, "
            f"{plan['packed']['padding_share']:.1%} of their tokens padding",
        ]
    return lines


def _render_section(title: str, s: dict, template: str | None = None) -> list[str]:
    size = format_size(s["bytes"])
    if s["file_bytes"] != s["bytes"]:
        size += f" ({format_size(s['file_bytes'])} on disk)"
    invalid = s["invalid"]
    lines = [
        f"{title}: {_count(s['records'], 'record')}, {size}, "
        f"{_count(s['blank_lines'], 'blank line')}, {_count(invalid['count'], 'invalid line')}"
    ]
    lines += [f"  {e['file']}:{e['line']}: {e['message']}" for e in invalid["first"]]
    if s["kinds"]:
        lines.append("  kinds: " + ", ".join(f"{k} {_num(n)}" for k, n in s["kinds"].items()))
    for label, key in (("messages/record", "messages"), ("turns/record", "turns")):
        if s[key]:
            lines.append(f"  {label}: " + _stat_line(s[key], ("min", "mean", "p50", "max")))
    if s["chars"]:
        lines.append("  chars/record: " + _stat_line(s["chars"], ("min", "mean", "p50", "p95", "p99", "max")))
    if s.get("tokens"):
        t = s["tokens"]
        after = " (after the chat template)" if template else ""
        lines.append(f"  tokens/record{after}: " + _stat_line(t, ("min", "mean", "p50", "p95", "p99", "max")))
        over = ", ".join(f"{_num(int(limit))}: {_num(n)}" for limit, n in t["over"].items())
        lines.append(f"  tokens in all: {_num(t['total'])}; records over {over}")
    dup = s["duplicates"]
    if dup["records"]:
        lines.append(
            f"  duplicates: {_count(dup['records'], 'record')} repeat an earlier one "
            f"({_num(dup['groups'])} distinct with copies)"
        )
        lines += [
            f"    {d['file']}:{d['line']} duplicates {d['duplicates_file']}:{d['duplicates_line']}"
            for d in dup["first"]
        ]
    else:
        lines.append("  duplicates: none")
    for label, key in (("chars", "chars_histogram"), ("tokens", "tokens_histogram")):
        if s.get(key):
            lines.append(f"  {label} per record:")
            lines += [f"    {row}" for row in render_histogram(s[key])]
    return lines


def _stat_line(summary: dict, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{key} {_num(summary[key])}" for key in keys)


def _num(value: Any) -> str:
    """1,234 for counts and large values; one decimal for small fractional ones (mean 3.8)."""
    if isinstance(value, float) and abs(value) < 100 and not value.is_integer():
        return f"{value:,.1f}"
    return f"{round(value):,}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
