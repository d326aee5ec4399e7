"""Parquet core: schema inference over the whole input, a Parquet shard writer, Parquet -> JSONL.

The splitter converts in one pass: a `SchemaBuilder` fed the first 8 MiB gives a schema
snapshot, and each `ParquetShardWriter` writes with it, checking every record fits. A
chunk that does not fit is fed to the builder; if its schema grows, the writer raises
SchemaChanged and the splitter starts again with the grown snapshot (early on), or infers
the rest of the input first and rewrites what it had written (later). The result is the
same as inferring the whole input before writing, which `--dry-run` and the engine do::

    builder = SchemaBuilder(options, warn=print)
    for data, first_line, n in runs:           # whole JSONL lines, each ending in b"\n"
        builder.add_block(data, first_line, "big.jsonl", lines=n)   # lines= saves a count
    schema = builder.result()                  # or schema_from_parquet(options.schema_from)
    snap = builder.snapshot()                  # the same, silent: more data may follow
    state = schema.to_json()                   # plain JSON, for the manifest / --resume;
    schema = InferredSchema.from_json(state)   # gives back an equal schema
    schema.json_fields, schema.warnings        # ["messages[].content"], [...]

    writer = ParquetShardWriter(sink, schema, options)   # sink: .write(bytes), never seeked
    writer.add_lines(data, n, first_line, "big.jsonl")   # n whole lines
    writer.bytes_written                       # exact bytes handed to the sink so far
    writer.buffered_bytes                      # uncompressed bytes not in the sink yet
    writer.estimated_bytes                     # bytes_written + buffered at the ratio seen
    writer.close()                             # last row groups + footer; abort() on error
    done = writer.close_async()                # the same, finished on the writer's lane

    for line in parquet_lines("shard.parquet"):          # Parquet -> JSONL, bounded memory
        ...

Buffers passed to add_block / add_lines are read without copying until their chunk is
parsed (at most two chunks later, and always by result() / close()): don't modify them
after the call. shardkit's BlockReader never reuses a block's buffer. Blocks of about
`parse_chunk_bytes` (8 MiB) are fastest: one block is then one chunk, parsed in place.

Schema rules (the whole input, never a sample): null widens to any type, int to float,
objects become structs whose fields are the union over all records (a key seen once is
kept), arrays become lists (`messages` -> `list<struct<role, content>>`). Strings that look
like dates stay strings. A true conflict (`content` a string here and a list of parts
there; `id` a string and an int) follows `on_conflict`: "json-string" (default) stores
that field as JSON text - every non-null value, `"abc"` as `"\"abc\""` - marks it in the
field metadata and in the file's key-value metadata (`shardkit.json_fields`), lists it in
`InferredSchema.json_fields` and warns (file:line of the first conflicting value);
`parquet_lines` restores the values exactly. "error" raises DataError naming file:line,
the field and both types. Paths are dotted, with `[]` for list items: `messages[].content`.
A line that is not a JSON object is a DataError with file:line, in either pass.

Caveats: a field holding both integers and floats is float64, where integers beyond 2^53
lose precision (pyarrow converts them while parsing, before any check could see them).
Parquet has no "absent": a key missing from a record reads back as null
(`parquet_lines(drop_nulls=True)` omits null keys instead). Keys come back in schema order
(first appearance in the input). Integers outside int64 are inferred as float, as pyarrow
does. An object that is always empty (`{}`) cannot be a Parquet struct; it is stored as
JSON text too, with a warning.

How: pyarrow's C++ JSON reader parses 8 MiB chunks on a worker thread while the caller
reads the next block. Inference parses each chunk with the schema so far (new keys
inferred) and unifies; only a chunk with a new conflict (or a line pyarrow rejects) is
walked in Python, to name the line. Writing parses with the schema, no key inferred; lines
holding a JSON-text field (found with memmem) are re-serialised with orjson first. Row
groups (whole parsed chunks while they fit) are encoded, compressed and written on the
writer's lane thread; the splitter gives consecutive shards two lanes, so one shard's
last groups are compressed while the next one's are parsed.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import re
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from shardkit import __version__
from shardkit.core.errors import DataError, InputError, UsageError
from shardkit.core.io import started_pool
from shardkit.records.validate import utf8_error

COMPRESSIONS = ("zstd", "snappy", "gzip", "none")
ON_CONFLICT = ("json-string", "error")
DEFAULT_ROW_GROUP_BYTES = 64 * 2**20
PARSE_CHUNK_BYTES = 4 * 2**20  # JSON bytes per pyarrow call; its 1 MiB blocks parse in parallel (4 MiB: 0.1 s faster and 40-60 MB less than 8 on the 100k bench files, 2026-12-07)
_ARROW_BLOCK = 2**20

META_VERSION = "shardkit.version"
META_JSON_FIELDS = "shardkit.json_fields"  # JSON list of display paths, for people
META_JSON_PATHS = "shardkit.json_paths"  # JSON list of exact paths: keys, null for a list item
FIELD_ENCODING = {b"shardkit.encoding": b"json"}

Path_ = tuple  # a field path: keys (str) and None for "an item of this list"
Warn = Callable[[str], None]


# ---------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class ParquetOptions:
    """How Parquet shards are written. Checked at construction."""

    compression: str = "zstd"
    compression_level: int | None = None  # None: the codec's default (zstd 1, gzip 6)
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES  # uncompressed bytes per row group
    on_conflict: str = "json-string"
    schema_from: str | None = None  # take the schema of this Parquet file, skip inference
    parse_chunk_bytes: int = PARSE_CHUNK_BYTES  # tuning: JSON bytes parsed per call

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression for Parquet must be one of {', '.join(COMPRESSIONS)} (got {self.compression!r})")
        if self.on_conflict not in ON_CONFLICT:
            raise UsageError(f"on_conflict must be one of {', '.join(ON_CONFLICT)} (got {self.on_conflict!r})")
        if self.row_group_bytes < 1:
            raise UsageError(f"row group size must be at least 1 byte (got {self.row_group_bytes})")
        if self.parse_chunk_bytes < 1:
            raise UsageError(f"parse chunk size must be at least 1 byte (got {self.parse_chunk_bytes})")
        if self.compression_level is not None and self.compression in ("snappy", "none"):
            raise UsageError(f"--compression {self.compression} takes no compression level")

    def params(self) -> dict:
        """What goes into the manifest's params (resume compares them)."""
        return {
            "compression": self.compression,
            "compression_level": self.compression_level,
            "row_group_bytes": self.row_group_bytes,
            "on_conflict": self.on_conflict,
            "schema_from": self.schema_from,
        }


# ---------------------------------------------------------------- the type lattice
# Inference works on a small tree: leaves are the strings below, a list is ("list", item),
# a struct is a dict {key: type} in first-seen order. Trees are never mutated once built.

NULL, BOOL, INT, FLOAT, STRING, JSON = "null", "bool", "int", "float", "string", "json"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_NAMES = {NULL: "null", BOOL: "boolean", INT: "integer", FLOAT: "float", STRING: "string", JSON: "JSON text"}


class SchemaChanged(Exception):  # noqa: N818 - not an error: the caller starts again
    """A ParquetShardWriter met records its schema snapshot has no room for; `schema` is
    the builder's new snapshot."""

    def __init__(self, schema: InferredSchema) -> None:
        super().__init__("the schema grew")
        self.schema = schema


class _Conflict(Exception):
    def __init__(self, a, b) -> None:
        self.a, self.b = a, b


def type_name(t) -> str:
    """What a person calls a type: string, integer, float, boolean, array, object."""
    if isinstance(t, tuple):
        return "array"
    if isinstance(t, dict):
        return "object"
    return _NAMES[t]


def path_text(path: Path_) -> str:
    """("messages", None, "content") -> "messages[].content"."""
    out = ""
    for step in path:
        if step is None:
            out += "[]"
        else:
            out += f".{step}" if out else step
    return out or "<record>"


Report = Callable[[Path_, object, object], None]


def _unify(a, b, path: Path_, report: Report):
    """The narrowest type holding both; a conflict below a field turns that field into JSON."""
    if a is b:
        return a
    ta, tb = type(a), type(b)
    if ta is str:
        if a == NULL:
            return b
        if a == JSON:
            return JSON
    if tb is str:
        if b == NULL:
            return a
        if b == JSON:
            return JSON
    if ta is str and tb is str:
        if a == b:
            return a
        if {a, b} == {INT, FLOAT}:
            return FLOAT
    elif ta is tuple and tb is tuple:
        item = _unify(a[1], b[1], (*path, None), report)
        return a if item is a[1] else ("list", item)
    elif ta is dict and tb is dict:
        return _unify_struct(a, b, path, report)
    raise _Conflict(a, b)


def _unify_struct(a: dict, b: dict, path: Path_, report: Report) -> dict:
    out = None
    for key, tb in b.items():
        ta = a.get(key)
        if ta is None:
            new = tb
        else:
            try:
                new = _unify(ta, tb, (*path, key), report)
            except _Conflict as c:
                report((*path, key), c.a, c.b)
                new = JSON
            if new is ta:
                continue
        if out is None:
            out = dict(a)
        out[key] = new
    return a if out is None else out


def _type_of(v, path: Path_, report: Report, known=NULL):
    """Type of one decoded JSON value (a conflict inside a list raises to the enclosing field).

    `known` is what the field is so far: a field already stored as JSON text is not walked.
    """
    if v is None:
        return NULL
    t = type(v)
    if t is str:
        return STRING
    if t is bool:
        return BOOL
    if t is int:
        return INT if _I64_MIN <= v <= _I64_MAX else FLOAT
    if t is float:
        return FLOAT
    if known == JSON:
        return JSON
    if t is list:
        item = NULL
        sub = (*path, None)
        inner = known[1] if type(known) is tuple else NULL
        for x in v:
            item = _unify(item, _type_of(x, sub, report, inner), sub, report)
        return ("list", item)
    if t is dict:
        out = {}
        fields = known if type(known) is dict else {}
        for key, x in v.items():
            try:
                out[key] = _type_of(x, (*path, key), report, fields.get(key, NULL))
            except _Conflict as c:
                report((*path, key), c.a, c.b)
                out[key] = JSON
        return out
    raise TypeError(f"not a JSON value: {t.__name__}")


def _from_arrow(t: pa.DataType):
    """pyarrow's inferred type -> the lattice (timestamps it guessed from strings are strings)."""
    if pa.types.is_struct(t):
        return {t.field(i).name: _from_arrow(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ("list", _from_arrow(t.value_type))
    if pa.types.is_null(t):
        return NULL
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_integer(t):
        return INT
    if pa.types.is_floating(t):
        return FLOAT
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return STRING
    raise AssertionError(f"pyarrow inferred an unexpected type from JSON: {t}")


def _seal(t, path: Path_, warn: Warn, sealed: dict | None = None):
    """Replace what Parquet cannot store (an object that was always empty) by JSON text.

    Each field so replaced goes into `sealed` with its type before sealing.
    """
    if isinstance(t, tuple):
        item, empty = _seal(t[1], (*path, None), warn, sealed)
        return ("list", item), empty
    if not isinstance(t, dict):
        return t, False
    out = {}
    for key, sub in t.items():
        done, empty = _seal(sub, (*path, key), warn, sealed)
        if empty:
            warn(f"field '{path_text((*path, key))}' only ever holds empty objects; stored as JSON text")
            done = JSON
            if sealed is not None:
                sealed[(*path, key)] = sub
        out[key] = done
    return out, not out


def _to_arrow(t, path: Path_, json_paths: list) -> pa.DataType:
    if isinstance(t, tuple):
        return pa.list_(pa.field("element", _to_arrow(t[1], (*path, None), json_paths)))
    if isinstance(t, dict):
        return pa.struct([_arrow_field(key, sub, (*path, key), json_paths) for key, sub in t.items()])
    if t == JSON:
        raise AssertionError("JSON is a field-level type")
    return {NULL: pa.null(), BOOL: pa.bool_(), INT: pa.int64(), FLOAT: pa.float64(), STRING: pa.string()}[t]


def _arrow_field(key: str, t, path: Path_, json_paths: list) -> pa.Field:
    if t == JSON:
        json_paths.append(path)
        return pa.field(key, pa.string())
    return pa.field(key, _to_arrow(t, path, json_paths))


# ---------------------------------------------------------------- the schema


class InferredSchema:
    """The Arrow schema every shard of a run is written with, and its JSON-text fields.

    `arrow` has no shardkit metadata; `parquet_schema()` adds it. `to_json()` is plain JSON
    (for the manifest / resume) and `from_json()` rebuilds an equal schema.
    """

    def __init__(self, arrow: pa.Schema, json_paths=(), warnings=(), sealed=None) -> None:
        self.arrow = pa.schema(list(arrow))  # no schema-level metadata
        self.json_paths: tuple[Path_, ...] = tuple(tuple(p) for p in json_paths)
        self.warnings: list[str] = list(warnings)
        # JSON-text fields that are so only because they always held empty objects so far,
        # with their type in the lattice: a writer given a schema from a SchemaBuilder's
        # snapshot() checks their values still fit it (not saved by to_json).
        self.sealed: dict[Path_, object] = dict(sealed or {})
        _encode_struct(self.arrow, (), set(self.json_paths))  # fails early on a type JSON can't fill

    @property
    def json_fields(self) -> list[str]:
        """Dotted paths of the fields stored as JSON text, e.g. ["id", "messages[].content"]."""
        return [path_text(p) for p in self.json_paths]

    def parquet_schema(self) -> pa.Schema:
        """`arrow` with JSON-text fields marked and shardkit's key-value metadata."""
        marked = _mark_json(self.arrow, set(self.json_paths))
        return marked.with_metadata(
            {
                META_VERSION: __version__,
                META_JSON_FIELDS: json.dumps(self.json_fields),
                META_JSON_PATHS: json.dumps([list(p) for p in self.json_paths]),
            }
        )

    def to_json(self) -> dict:
        """{"shardkit_schema": 1, "fields": [[name, type], ...], "json_fields": [...], "warnings": [...]}.

        Types: "null", "bool", "int64", "double", "string", ... ; "json" (a string holding
        JSON text); {"list": T}; {"struct": [[name, T], ...]}; {"timestamp": unit, "tz": tz};
        {"decimal128": [precision, scale]}.
        """
        return {
            "shardkit_schema": 1,
            "fields": _encode_struct(self.arrow, (), set(self.json_paths)),
            "json_fields": self.json_fields,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, doc: dict) -> InferredSchema:
        """Rebuild a schema saved by `to_json` (DataError if the document is not one)."""
        try:
            if doc.get("shardkit_schema") != 1:
                raise ValueError("no \"shardkit_schema\": 1")
            json_paths: list[Path_] = []
            fields = [_decode_field(name, t, (name,), json_paths) for name, t in doc["fields"]]
            return cls(pa.schema(fields), json_paths, doc.get("warnings", ()))
        except (KeyError, TypeError, ValueError, AttributeError, UsageError) as e:
            raise DataError(f"not a saved shardkit Parquet schema: {e}") from None

    def same_snapshot(self, other: InferredSchema) -> bool:
        """Equal, and the same fields sealed for holding only empty objects so far."""
        return self == other and self.sealed == other.sealed

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, InferredSchema)
            and self.arrow.equals(other.arrow)
            and set(self.json_paths) == set(other.json_paths)
        )

    def __repr__(self) -> str:
        return f"InferredSchema({self.arrow.to_string(show_schema_metadata=False)!r}, json_fields={self.json_fields})"


_SIMPLE = {
    str(t): t
    for t in (
        pa.null(), pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(),
        pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(), pa.float32(), pa.float64(),
        pa.string(), pa.large_string(), pa.binary(), pa.large_binary(),
    )
}


def _encode_struct(fields, path: Path_, json_paths: set) -> list:
    return [[f.name, _encode(f.type, (*path, f.name), json_paths)] for f in fields]


def _encode(t: pa.DataType, path: Path_, json_paths: set):
    if path in json_paths:
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise UsageError(f"field '{path_text(path)}' is marked as JSON text but has type {t}")
        return "json"
    if str(t) in _SIMPLE:
        return str(t)
    if pa.types.is_list(t):
        return {"list": _encode(t.value_type, (*path, None), json_paths)}
    if pa.types.is_large_list(t):
        return {"large_list": _encode(t.value_type, (*path, None), json_paths)}
    if pa.types.is_struct(t):
        return {"struct": _encode_struct([t.field(i) for i in range(t.num_fields)], path, json_paths)}
    if pa.types.is_timestamp(t):
        return {"timestamp": t.unit, "tz": t.tz}
    if pa.types.is_decimal128(t):
        return {"decimal128": [t.precision, t.scale]}
    raise UsageError(f"field '{path_text(path)}' has type {t}, which shardkit cannot fill from JSON")


def _decode_field(name: str, t, path: Path_, json_paths: list) -> pa.Field:
    if t == "json":
        json_paths.append(path)
        return pa.field(name, pa.string())
    return pa.field(name, _decode(t, path, json_paths))


def _decode(t, path: Path_, json_paths: list) -> pa.DataType:
    if isinstance(t, str):
        return _SIMPLE[t]
    if "list" in t:
        return pa.list_(pa.field("element", _decode(t["list"], (*path, None), json_paths)))
    if "large_list" in t:
        return pa.large_list(pa.field("element", _decode(t["large_list"], (*path, None), json_paths)))
    if "struct" in t:
        return pa.struct([_decode_field(n, sub, (*path, n), json_paths) for n, sub in t["struct"]])
    if "timestamp" in t:
        return pa.timestamp(t["timestamp"], t.get("tz"))
    if "decimal128" in t:
        return pa.decimal128(*t["decimal128"])
    raise ValueError(f"unknown type {t!r}")


def _plain(t: pa.DataType) -> pa.DataType:
    """Types pyarrow's JSON reader can fill: dictionary -> its values, lists with one item name."""
    if pa.types.is_dictionary(t):
        return _plain(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(pa.field("element", _plain(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(pa.field("element", _plain(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain(f.type)) for f in t])
    return t


def _mark_json(schema: pa.Schema, json_paths: set) -> pa.Schema:
    def field(f: pa.Field, path: Path_) -> pa.Field:
        if path in json_paths:
            return pa.field(f.name, f.type, metadata=FIELD_ENCODING)
        return pa.field(f.name, typ(f.type, path))

    def typ(t: pa.DataType, path: Path_) -> pa.DataType:
        if pa.types.is_list(t):
            return pa.list_(field(t.value_field, (*path, None)))
        if pa.types.is_large_list(t):
            return pa.large_list(field(t.value_field, (*path, None)))
        if pa.types.is_struct(t):
            return pa.struct([field(f, (*path, f.name)) for f in t])
        return t

    return pa.schema([field(f, (f.name,)) for f in schema])


def _open_parquet(path: str | Path) -> pq.ParquetFile:
    """Open a Parquet file; a missing, unreadable or non-Parquet file is an InputError."""
    from shardkit.core.objects import is_url, open_read

    try:
        return pq.ParquetFile(open_read(path) if is_url(path) else path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    except pa.ArrowException as e:
        raise InputError(f"{path}: not a Parquet file ({e})") from None


def schema_from_parquet(path: str | Path) -> InferredSchema:
    """The schema of an existing Parquet file (its JSON-text fields too, if shardkit wrote it)."""
    pf = _open_parquet(path)
    arrow = pf.schema_arrow
    try:
        return InferredSchema(
            pa.schema([pa.field(f.name, _plain(f.type)) for f in arrow]), _json_paths_of(pf, path)
        )
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None


def _json_paths_of(pf: pq.ParquetFile, path) -> list[Path_]:
    raw = (pf.metadata.metadata or {}).get(META_JSON_PATHS.encode())
    if raw is None:
        return []
    try:
        paths = json.loads(raw)
        return [tuple(p) for p in paths]
    except (ValueError, TypeError):
        raise DataError(f"{path}: unreadable {META_JSON_PATHS} metadata") from None


# ---------------------------------------------------------------- chunks of lines


class _Chunk:
    """JSONL lines gathered from several calls, and where each line came from.

    The caller's buffers are kept, not copied, until the chunk is parsed; a chunk of
    several pieces is copied once into a pooled buffer when it is sent.
    """

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self.fill = 0
        self.lines = 0
        self.segments: list[tuple[int, int, str]] = []  # (first index, first line, display)
        self.owned: list[bytearray] = []  # pooled buffers to hand back once parsed
        self.json: _JsonFields | None = None  # the JSON-text fields it was rewritten for
        self._data: memoryview | None = None

    def add(self, data, n: int | None, first_line: int, display: str) -> int:
        """Take whole lines (n of them; counted if None); return n."""
        view = memoryview(data).cast("B")
        if n is None:
            n = bytes(view).count(b"\n")
        self.parts.append(view)
        self.segments.append((self.lines, first_line, display))
        self.fill += len(view)
        self.lines += n
        return n

    def data(self, buffers: _Buffers) -> memoryview:
        """The chunk's bytes in one piece."""
        if self._data is None:
            if len(self.parts) == 1:
                self._data = self.parts[0]
            else:
                buf = buffers.get(self.fill)
                self.owned.append(buf)
                self._data = _gather(buf, self.parts)
        return self._data

    def where(self, index: int) -> str:
        """'file:line' of the chunk's index-th line."""
        for start, first_line, display in reversed(self.segments):
            if index >= start:
                return f"{display}:{first_line + index - start}"
        raise AssertionError("index before the first segment")


def _gather(buf: bytearray, pieces) -> memoryview:
    """Copy pieces one after the other into buf (big enough); return the filled part."""
    out = memoryview(buf)
    pos = 0
    for piece in pieces:
        end = pos + len(piece)
        out[pos:end] = piece
        pos = end
    return out[:pos]


class _Buffers:
    """A few reusable buffers: fresh multi-megabyte buffers cost page faults."""

    def __init__(self, size: int) -> None:
        self.size = size + size // 4
        self._free: list[bytearray] = []
        self._lock = threading.Lock()  # taken on the parse lane, given back by the caller

    def get(self, n: int) -> bytearray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= n:
                    return self._free.pop(i)
        return bytearray(max(n, self.size))

    def release(self, chunk: _Chunk) -> None:
        with self._lock:
            for buf in chunk.owned:
                if len(self._free) < 2 and len(buf) <= 2 * self.size:
                    self._free.append(buf)
            chunk.owned = []

    def clear(self) -> None:
        self._free.clear()


def _line_spans(buf, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each line in buf[:end]."""
    spans = []
    find = buf.find
    pos, end = 0, len(buf) if end is None else end
    while pos < end:
        nxt = find(b"\n", pos) + 1 or end
        spans.append((pos, nxt))
        pos = nxt
    return spans


def _decode_line(line) -> object:
    """orjson first; the standard library for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as first:
        try:
            return json.loads(bytes(line))
        except (ValueError, UnicodeDecodeError):
            raise first from None


def _dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _object_at(chunk: _Chunk, i: int, line) -> dict:
    """Decode the chunk's i-th line; DataError unless it is a JSON object."""
    try:
        rec = _decode_line(line)
    except orjson.JSONDecodeError as e:
        raise DataError(f"{chunk.where(i)}: not valid JSON: {e}") from None
    if not isinstance(rec, dict):
        raise DataError(f"{chunk.where(i)}: not a JSON object (got {_kind(rec)})")
    return rec


def _kind(v) -> str:
    if v is None:
        return "null"
    return {str: "string", bool: "boolean", int: "integer", float: "float", list: "array"}.get(type(v), "value")


def _libc_search():
    """glibc's memmem, memchr and memrchr (SIMD), or None: bytes.find is several times slower."""
    try:
        libc = ctypes.CDLL(None)
        funcs = libc.memmem, libc.memchr, libc.memrchr
    except (OSError, AttributeError):
        return None
    for fn in funcs:
        fn.restype = ctypes.c_void_p
    funcs[0].argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    funcs[1].argtypes = funcs[2].argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return funcs


_libc = _libc_search()


class _Finder:
    """find / newline search over any contiguous buffer, through libc where it can."""

    def __init__(self, data) -> None:
        self._buf = pa.py_buffer(data)  # pins the memory while searching
        self._base = self._buf.address
        self._bytes = None if _libc else self._buf.to_pybytes()

    def find(self, needle: bytes, start: int, end: int) -> int:
        if self._bytes is not None:
            return self._bytes.find(needle, start, end)
        if end - start < len(needle):
            return -1
        hit = _libc[0](self._base + start, end - start, needle, len(needle))
        return hit - self._base if hit else -1

    def line_start(self, pos: int) -> int:
        """Offset just past the last newline before pos (0 if none)."""
        if self._bytes is not None:
            return self._bytes.rfind(b"\n", 0, pos) + 1
        hit = _libc[2](self._base, 10, pos)
        return hit - self._base + 1 if hit else 0

    def line_end(self, pos: int, end: int) -> int:
        """Offset just past the first newline at or after pos (end if none)."""
        if self._bytes is not None:
            return self._bytes.find(b"\n", pos, end) + 1 or end
        hit = _libc[1](self._base + pos, 10, end - pos)
        return hit - self._base + 1 if hit else end


# ---------------------------------------------------------------- JSON-text fields


class _JsonFields:
    """Rewrites lines so every JSON-text field holds a string: its value's JSON text.

    Only lines holding one of the fields' keys (as orjson or json.dumps would write it)
    are rewritten. A key spelled another way (`"\\u0069d"` for `"id"`) escapes that byte
    search; `missed()` catches it afterwards by comparing the values rewritten with the
    non-null values pyarrow parsed, and the chunk is then rewritten line by line.
    """

    def __init__(self, json_paths, sealed: dict | None = None) -> None:
        self.paths = [tuple(p) for p in json_paths]
        self.trie: dict = {}
        keys = set()
        sealed = sealed or {}
        for path in self.paths:
            node = self.trie
            for step in path[:-1]:
                node = node.setdefault(step, {})
            node[path[-1]] = _Sealed(sealed[path]) if path in sealed else True
            keys.add(orjson.dumps(path[-1]))
            keys.add(json.dumps(path[-1]).encode())
        self.keys = sorted(keys)

    def __bool__(self) -> bool:
        return bool(self.trie)

    def rewrite(self, chunk: _Chunk, buffers: _Buffers, everything: bool = False) -> tuple[memoryview, int]:
        """(the chunk's lines with JSON-text fields re-serialised, values rewritten).

        Same line count. Lines that cannot be decoded are left alone: the parser reports them.
        """
        data = chunk.data(buffers)
        spans = None if everything else self._candidates(data, chunk.lines)
        if spans is None:  # most lines hold a key: rewrite them all
            spans = _line_spans(bytes(data))
        counter = [0]
        pieces = []
        prev = 0
        for s, e in spans:
            line = self._rewrite_line(data[s:e], counter)
            if line is not None:
                pieces.append(data[prev:s])
                pieces.append(line)
                prev = e
        if not pieces:
            return data, 0
        pieces.append(data[prev:])
        buf = buffers.get(sum(len(p) for p in pieces))
        chunk.owned.append(buf)
        return _gather(buf, pieces), counter[0]

    def missed(self, table: pa.Table, rewritten: int) -> bool:
        """True if the table holds more non-null JSON-text values than were rewritten."""
        return sum(_non_null(table.column(p[0]), p[1:]) for p in self.paths) != rewritten

    def _candidates(self, data, lines: int) -> list[tuple[int, int]] | None:
        """Spans of the lines holding a key; None if that is most of them."""
        end = len(data)
        spans: dict[int, int] = {}
        most = lines // 2 + 1
        finder = _Finder(data)
        for key in self.keys:
            pos = finder.find(key, 0, end)
            while pos >= 0:
                s, e = finder.line_start(pos), finder.line_end(pos, end)
                spans[s] = e
                if len(spans) >= most:
                    return None
                pos = finder.find(key, e, end)
        return sorted(spans.items())

    def _rewrite_line(self, line, counter: list[int]) -> bytes | None:
        try:
            rec = _decode_line(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(rec, dict):
            return None
        _stringify(rec, self.trie, counter)
        return _dumps(rec) + b"\n"

    def restore(self, rec: dict, where: Callable[[], str]) -> None:
        _restore(rec, self.trie, where, ())


def _non_null(column: pa.ChunkedArray, steps: Path_) -> int:
    """Non-null values at a path below a column (list items flattened, struct nulls applied)."""
    total = 0
    for arr in column.chunks:
        for step in steps:
            if step is None:
                arr = arr.flatten()
            else:
                arr = arr.flatten()[arr.type.get_field_index(step)]
        total += len(arr) - arr.null_count
    return total


class _Sealed:
    """A JSON-text leaf that only ever held empty objects: `type` is what it held."""

    __slots__ = ("type",)

    def __init__(self, t) -> None:
        self.type = t


class _Widened(pa.ArrowInvalid):
    """A value no longer fits a field stored as JSON text because it always held empty
    objects: the schema is only a snapshot (SchemaBuilder.snapshot) and must widen."""


def _fits(v, t) -> bool:
    """True if the value's type adds nothing to the lattice type t."""
    grew: list = []
    try:
        u = _unify(t, _type_of(v, (), lambda *c: grew.append(c), t), (), lambda *c: grew.append(c))
    except _Conflict:
        return False
    return u is t and not grew


def _stringify(v, node, counter: list[int]) -> object:
    if node is True or type(node) is _Sealed:
        if v is None:
            return None
        if node is not True and not _fits(v, node.type):
            raise _Widened("a field stored as JSON text for holding only empty objects holds more")
        counter[0] += 1
        return _dumps(v).decode("utf-8", "surrogatepass")
    if type(v) is dict:
        for key, sub in node.items():
            if key is not None and key in v:
                v[key] = _stringify(v[key], sub, counter)
    elif type(v) is list and None in node:
        sub = node[None]
        for i, x in enumerate(v):
            v[i] = _stringify(x, sub, counter)
    return v


def _restore(v, node, where: Callable[[], str], path: Path_) -> object:
    if node is True or type(node) is _Sealed:
        if v is None:
            return None
        try:
            return _decode_line(v.encode("utf-8", "surrogatepass"))
        except (orjson.JSONDecodeError, AttributeError):
            raise DataError(f"{where()}: field '{path_text(path)}' is marked as JSON text but holds {v!r:.60}") from None
    if type(v) is dict:
        for key, sub in node.items():
            if key is not None and key in v:
                v[key] = _restore(v[key], sub, where, (*path, key))
    elif type(v) is list and None in node:
        sub = node[None]
        for i, x in enumerate(v):
            v[i] = _restore(x, sub, where, (*path, None))
    return v


# ---------------------------------------------------------------- parsing with pyarrow


def _read_json(data, schema: pa.Schema | None, *, threads: bool = True, unexpected: str = "error") -> pa.Table:
    """One pyarrow parse; a line longer than a block gets one block for the whole chunk.

    With a schema, its fields are parsed as given (a value of another type is an error)
    and fields it lacks are an error, or inferred with unexpected="infer".
    """
    parse = (
        pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior=unexpected)
        if schema is not None
        else pj.ParseOptions()
    )
    # Inferring, pyarrow 26 sometimes crashes (SIGSEGV in InferringChunkedArrayBuilder,
    # converting a block again after a later block promoted a field's type, e.g. null to
    # string); one block per call never promotes across blocks. Seen 2 times in 40 runs
    # on 4 KB-10 MB drifting chunks, 0 in 40 with one block.
    block = len(data) + 1 if schema is None or unexpected == "infer" else _ARROW_BLOCK
    while True:
        try:
            return pj.read_json(
                pa.BufferReader(data),
                read_options=pj.ReadOptions(use_threads=threads, block_size=block),
                parse_options=parse,
            )
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e) or block > len(data):
                raise
            block = len(data) + 1


_ROW = re.compile(r"\s+in row \d+$")
_CHANGED = re.compile(r"Column\((.*)\) changed from (\w+) to (\w+)")


def _first_bad_line(buf, schema: pa.Schema | None, spans: list[tuple[int, int]]) -> int:
    """Index of the first line pyarrow rejects on its own (bisection), or -1 if none does."""
    view = memoryview(buf)

    def fails(lo: int, hi: int) -> bool:
        try:
            _read_json(view[spans[lo][0] : spans[hi - 1][1]], schema, threads=False)
            return False
        except pa.ArrowInvalid:
            return True

    lo, hi = 0, len(spans)
    if not hi or not fails(lo, hi):
        return -1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(lo, mid):
            hi = mid
        elif fails(mid, hi):
            lo = mid
        else:  # only the two halves together fail (a conflict between lines)
            return -1
    return lo


def _arrow_message(err: Exception) -> str:
    msg = _ROW.sub("", str(err).removeprefix("JSON parse error: "))
    m = _CHANGED.search(msg)
    if m:
        field = ".".join(s for s in m.group(1).split("/") if s).replace(".[]", "[]")
        return f"field '{field}': {m.group(3)} where the schema has {m.group(2)}"
    return msg


def _unexpected_field(rec, t: pa.DataType, path: Path_) -> Path_ | None:
    """The first key in rec that the schema has no place for."""
    if pa.types.is_struct(t) and isinstance(rec, dict):
        names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        for key, v in rec.items():
            if key not in names:
                return (*path, key)
            found = _unexpected_field(v, names[key], (*path, key))
            if found:
                return found
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and isinstance(rec, list):
        for x in rec:
            found = _unexpected_field(x, t.value_type, (*path, None))
            if found:
                return found
    return None


def _parse_error(chunk: _Chunk, data, schema: pa.Schema | None, err: Exception, source: str = "") -> DataError:
    """A one-line DataError naming the file:line pyarrow could not convert, and why."""
    data = bytes(data)
    spans = _line_spans(data)
    i = _first_bad_line(data, schema, spans)
    if i < 0:
        return DataError(
            f"{chunk.where(0)}: cannot convert to Parquet: {_arrow_message(err)} "
            f"(somewhere in this line and the {chunk.lines - 1} after it)"
        )
    line = data[spans[i][0] : spans[i][1]]
    rec = _object_at(chunk, i, line)  # raises for invalid JSON or a non-object
    if schema is not None:
        extra = _unexpected_field(rec, pa.struct(list(schema)), ())
        if extra is not None:
            return DataError(f"{chunk.where(i)}: field '{path_text(extra)}' is not in the schema{source}")
    try:
        _read_json(line, schema, threads=False)
    except pa.ArrowInvalid as line_err:
        err = line_err
    return DataError(f"{chunk.where(i)}: cannot convert to Parquet: {_arrow_message(err)}")


# ---------------------------------------------------------------- threads


def _block_signals() -> None:
    """Worker threads never take SIGINT/SIGTERM: the main thread handles them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


_lanes: dict[str, ThreadPoolExecutor] = {}
_lanes_lock = threading.Lock()


def _forget_lanes() -> None:
    """In a forked child: its copy has none of the threads, and the lock may look held."""
    global _lanes_lock
    _lanes.clear()
    _lanes_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_lanes)


def thread_lane(name: str) -> ThreadPoolExecutor:
    """One worker thread per job ("parse", "write"); jobs on a lane run in submission order."""
    with _lanes_lock:
        if name not in _lanes:
            _lanes[name] = started_pool(f"shardkit-parquet-{name}", _block_signals)
        return _lanes[name]


class _Parsing:
    """Chunks prepared (JSON-text fields rewritten) on one lane and parsed on another,
    while the caller reads the next: three chunks move at once.

    `prepare(chunk, buffers, *args)` runs on the prepare lane and returns what
    `parse(prepared, *args)` takes on the parse lane; `done(chunk, result)` runs in the
    caller's thread, in chunk order, with what parse returned or the ArrowInvalid it raised.
    """

    _DEPTH = 2  # chunks sent and not yet done

    def __init__(self, prepare: Callable, parse: Callable, done: Callable, buffers: _Buffers) -> None:
        self._prepare, self._parse, self._done, self._buffers = prepare, parse, done, buffers
        self._queue: deque[tuple[_Chunk, Future]] = deque()

    def submit(self, chunk: _Chunk, *args) -> None:
        prepared = thread_lane("prepare").submit(self._prepare, chunk, self._buffers, *args)
        self._queue.append((chunk, thread_lane("parse").submit(self._run_parse, prepared, args)))
        while len(self._queue) > self._DEPTH:
            self._finish_one()

    def _run_parse(self, prepared: Future, args: tuple):
        return self._parse(prepared.result(), *args)

    @property
    def queued_bytes(self) -> int:
        return sum(chunk.fill for chunk, _ in self._queue)

    def drain(self) -> None:
        while self._queue:
            self._finish_one()

    def cancel(self) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            try:
                future.result()
            except Exception:  # noqa: BLE001 - being dropped anyway
                pass

    def _finish_one(self) -> None:
        chunk, future = self._queue.popleft()
        try:
            result = future.result()
        except pa.ArrowInvalid as e:
            result = e
        try:
            self._done(chunk, result)
        finally:
            self._buffers.release(chunk)


# ---------------------------------------------------------------- inference


class SchemaBuilder:
    """Infers the schema of the whole input, fed block by block in input order.

    `add_block` takes whole JSONL lines (each ending in b"\\n", no blank lines); give
    `lines` if you counted them. Parsing runs on a second thread while the caller reads
    the next block. Warnings (one per field stored as JSON text, naming where the
    conflict was first seen) go to `warn` and into the result. Errors (DataError with
    file:line) may surface one chunk (8 MiB) after the block that caused them.
    """

    def __init__(self, options: ParquetOptions | None = None, *, warn: Warn | None = None) -> None:
        self.options = options or ParquetOptions()
        self.records = 0
        self._type: dict = {}
        self._known: tuple[dict, pa.Schema] | None = None  # (self._type, as an Arrow schema)
        self._json = _JsonFields(())
        self._warnings: list[str] = []
        self._warn_cb = warn
        self._buffers = _Buffers(self.options.parse_chunk_bytes)
        self._chunk = _Chunk()
        self._parsing = _Parsing(_prepare, _infer_parse, self._chunk_parsed, self._buffers)
        self._result: InferredSchema | None = None

    def add_block(self, data, first_line: int, display: str, lines: int | None = None) -> None:
        """Feed whole lines (`lines` of them, counted if not given)."""
        self._result = None
        if self._chunk.fill and self._chunk.fill + memoryview(data).nbytes > self.options.parse_chunk_bytes:
            self._dispatch()
        self.records += self._chunk.add(data, lines, first_line, display)
        if self._chunk.fill >= self.options.parse_chunk_bytes:
            self._dispatch()

    def result(self) -> InferredSchema:
        """The schema of everything fed so far."""
        if self._result is None:
            self._result = self._schema(self._warn)
        return self._result

    def snapshot(self) -> InferredSchema:
        """The schema of everything fed so far, to write with before the input is all seen.

        Unlike result(), it reports nothing: a field that held only empty objects so far
        is sealed as JSON text silently (and listed in `.sealed`, so that a writer checks
        its values), as more data may give it fields.
        """
        return self._schema(None)

    def add_chunk(self, chunk: _Chunk) -> None:
        """Feed a writer's chunk of lines and wait until it is inferred."""
        ends = [start for start, _, _ in chunk.segments[1:]] + [chunk.lines]
        for part, (start, first_line, display), end in zip(chunk.parts, chunk.segments, ends, strict=True):
            self.add_block(part, first_line, display, lines=end - start)
        self._settle()

    def state(self) -> dict:
        """Plain JSON holding the inference so far (the manifest keeps it for --resume)."""
        self._settle()
        return {"type": _type_to_json(self._type), "warnings": list(self._warnings)}

    @classmethod
    def from_state(cls, state: dict, options: ParquetOptions | None = None, *, warn: Warn | None = None) -> SchemaBuilder:
        """A builder that goes on from `state()` (DataError if it is not one)."""
        builder = cls(options, warn=warn)
        try:
            builder._type = _type_from_json(state["type"])
            builder._warnings = [str(w) for w in state["warnings"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DataError(f"not a saved shardkit schema inference: {e}") from None
        builder._json = _JsonFields(_json_leaves(builder._type, ()))
        return builder

    def _settle(self) -> None:
        if self._chunk.lines:
            self._dispatch()
        self._parsing.drain()
        self._buffers.clear()

    def _schema(self, warn: Warn | None) -> InferredSchema:
        self._settle()
        before = len(self._warnings)
        sealed: dict = {}
        done, _ = _seal(self._type, (), warn or self._warnings.append, sealed)
        warnings = self._warnings[:]
        del self._warnings[before:]  # sealing is redone if more data comes
        json_paths: list[Path_] = []
        fields = [_arrow_field(key, t, (key,), json_paths) for key, t in done.items()]
        return InferredSchema(pa.schema(fields), json_paths, warnings, sealed)

    def _warn(self, msg: str) -> None:
        self._warnings.append(msg)
        if self._warn_cb:
            self._warn_cb(msg)

    def _dispatch(self) -> None:
        chunk, self._chunk = self._chunk, _Chunk()
        chunk.json = self._json
        self._parsing.submit(chunk, self._json, self._known_schema())

    def _known_schema(self) -> pa.Schema | None:
        """The schema so far, as pyarrow's parser takes it."""
        if not self._type:
            return None
        if self._known is None or self._known[0] is not self._type:
            self._known = (self._type, pa.schema(list(_parse_type(self._type))))
        return self._known[1]

    def _chunk_parsed(self, chunk: _Chunk, result) -> None:
        if isinstance(result, Exception) and chunk.json is not self._json:
            # sent before the chunk ahead of it found a new JSON-text field: rewrite, retry
            chunk.json = self._json
            try:
                known = self._known_schema()
                result = _infer_parse(_prepare(chunk, self._buffers, self._json, known), self._json, known)
            except pa.ArrowInvalid as e:
                result = e
        if isinstance(result, Exception):
            # A conflict inside the chunk, or a line pyarrow rejects: walk it in Python,
            # then check pyarrow reads it with the JSON-text fields rewritten.
            self._infer_python(chunk)
            data = self._json.rewrite(chunk, self._buffers, everything=True)[0] if self._json else chunk.data(self._buffers)
            try:
                _read_json(data, None)
            except pa.ArrowInvalid as e:
                raise _parse_error(chunk, data, None, e) from None
            return
        conflicts: list = []
        new = _unify_struct(self._type, _from_arrow(pa.struct(list(result))), (), lambda *c: conflicts.append(c))
        if conflicts:
            self._infer_python(chunk)  # to name the line of each new conflict
        else:
            self._type = new

    def _infer_python(self, chunk: _Chunk) -> bool:
        """Infer the chunk record by record; True if it found new JSON-text fields."""
        acc = self._type
        i = 0
        new_json: list[Path_] = []

        def report(path: Path_, a, b) -> None:
            where = chunk.where(i)
            field, had, got = path_text(path), type_name(a), type_name(b)
            if self.options.on_conflict == "error":
                raise DataError(
                    f"{where}: field '{field}' is {got} here but {had} in earlier records "
                    '(use on_conflict="json-string" to store it as JSON text)'
                )
            new_json.append(path)
            self._warn(f"{where}: field '{field}' is {got} here but {had} in earlier records; stored as JSON text")

        data = bytes(chunk.data(self._buffers))
        for i, (s, e) in enumerate(_line_spans(data)):  # noqa: B007 - report() reads i
            rec = _object_at(chunk, i, data[s:e])
            acc = _unify_struct(acc, _type_of(rec, (), report, acc), (), report)
        self._type = acc
        if new_json:
            self._json = _JsonFields(_json_leaves(acc, ()))
        return bool(new_json)


def _prepare(chunk: _Chunk, buffers: _Buffers, fields: _JsonFields, _schema) -> tuple[memoryview, int]:
    """(prepare lane) The chunk in one piece, JSON-text fields rewritten; values rewritten."""
    return fields.rewrite(chunk, buffers) if fields else (chunk.data(buffers), 0)


def _infer_parse(prepared: tuple[memoryview, int], _fields, known: pa.Schema | None) -> pa.Schema:
    """(parse lane) The chunk's schema: parsed with the schema so far, new keys inferred;
    inferred from scratch when a value no longer fits (a type widens, or a conflict)."""
    data = prepared[0]
    if known is not None:
        try:
            return _read_json(data, known, unexpected="infer").schema
        except pa.ArrowInvalid:
            pass
    return _read_json(data, None).schema


def _parse_type(t) -> pa.DataType:
    """The lattice as pyarrow's parser takes it: JSON-text fields are strings."""
    if isinstance(t, tuple):
        return pa.list_(_parse_type(t[1]))
    if isinstance(t, dict):
        return pa.struct([pa.field(key, _parse_type(sub)) for key, sub in t.items()])
    return {NULL: pa.null(), BOOL: pa.bool_(), INT: pa.int64(), FLOAT: pa.float64(), STRING: pa.string(), JSON: pa.string()}[t]


def _type_to_json(t):
    """The lattice as plain JSON: leaves are strings, a list is ["list", item], a struct an object."""
    if isinstance(t, tuple):
        return ["list", _type_to_json(t[1])]
    if isinstance(t, dict):
        return {key: _type_to_json(sub) for key, sub in t.items()}
    return t


def _type_from_json(doc):
    if isinstance(doc, list):
        if len(doc) != 2 or doc[0] != "list":
            raise ValueError(f"bad list type {doc!r:.60}")
        return ("list", _type_from_json(doc[1]))
    if isinstance(doc, dict):
        return {str(key): _type_from_json(sub) for key, sub in doc.items()}
    for name in _NAMES:  # the module's own strings: `is` comparisons stay true
        if doc == name:
            return name
    raise ValueError(f"unknown type {doc!r:.60}")


def _json_leaves(t, path: Path_) -> list[Path_]:
    if isinstance(t, dict):
        return [p for key, sub in t.items() for p in ([(*path, key)] if sub == JSON else _json_leaves(sub, (*path, key)))]
    if isinstance(t, tuple):
        return _json_leaves(t[1], (*path, None))
    return []


# ---------------------------------------------------------------- the writer


class _SinkAdapter:
    """What pyarrow writes to: counts bytes, batches small writes, never seeks the sink."""

    _BATCH = 1 << 20

    def __init__(self, sink) -> None:
        self._sink = sink
        self._buf = bytearray()
        self.received = 0  # what pyarrow handed us (its tell())
        self.flushed = 0  # what the sink has
        self.closed = False
        self.discard = False

    def write(self, data) -> int:
        n = len(data)
        self.received += n
        if self.discard:
            return n
        if len(self._buf) + n < self._BATCH:
            self._buf += data
        else:
            self.flush()
            self._sink.write(data)
            self.flushed += n
        return n

    def flush(self) -> None:
        if self._buf and not self.discard:
            self._sink.write(self._buf)
            self.flushed += len(self._buf)
        self._buf = bytearray()

    def tell(self) -> int:
        return self.received

    def close(self) -> None:
        self.flush()
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class ParquetShardWriter:
    """Writes one Parquet shard: JSONL lines in, row groups of at most `row_group_bytes`.

    Rows are buffered until `row_group_bytes` of them (Arrow's in-memory size, which is at
    least Parquet's uncompressed size for JSON data) are waiting; the largest prefix under
    the limit becomes one row group (a single larger row gets a group of its own).
    Parsing runs on one thread and encoding + compression + writing on another, while the
    caller reads on; memory is about two row groups plus three parse chunks, whatever the
    shard or input size. The sink is written from the writing thread, one call at a time,
    and never after close() or abort() return. Call abort() if anything goes wrong before
    close(). Errors (DataError with file:line) may surface one chunk after their block.

    With a `builder`, `schema` is that builder's snapshot() of the input so far: a chunk
    that does not fit it is fed to the builder, and if the builder's schema grows,
    SchemaChanged (holding the new snapshot) is raised; the caller aborts and starts
    again with it. That is how the splitter converts in one pass.
    """

    def __init__(self, sink, schema: InferredSchema, options: ParquetOptions | None = None,
                 *, builder: SchemaBuilder | None = None, lane: str = "write") -> None:
        self.options = options = options or ParquetOptions()
        self.schema = schema
        self.records = 0
        self.row_groups = 0
        self._source = f" (from {options.schema_from})" if options.schema_from else ""
        self._parse_schema = schema.arrow
        self._json = _JsonFields(schema.json_paths, schema.sealed)
        self._builder = builder
        self.thread_lane = lane  # where row groups are encoded and written, in order
        self._buffers = _Buffers(options.parse_chunk_bytes)
        self._chunk = _Chunk()
        self._parsing = _Parsing(_prepare, _convert_parse, self._chunk_parsed, self._buffers)
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._inflight: Future | None = None
        self._inflight_bytes = 0
        self._written_uncompressed = 0
        self._out = _SinkAdapter(sink)
        self._closed = self._closing = False
        self._writer = pq.ParquetWriter(
            pa.PythonFile(self._out, mode="w"),
            schema.parquet_schema(),
            compression=options.compression,
            compression_level=options.compression_level,
        )

    # ----- sizes

    @property
    def bytes_written(self) -> int:
        """Bytes the sink has taken so far (counted when its write() returns): every row
        group written so far, complete. Never more than the sink holds; after close() it
        is the size of the file.
        """
        return self._out.flushed

    @property
    def buffered_bytes(self) -> int:
        """Uncompressed bytes not yet in the sink: rows waiting or being written, unparsed JSON."""
        return self._pending_bytes + self._inflight_bytes + self._chunk.fill + self._parsing.queued_bytes

    @property
    def estimated_bytes(self) -> int:
        """bytes_written plus buffered_bytes at the compression ratio seen so far (1.0 at first)."""
        done = self._written_uncompressed
        ratio = self._out.flushed / done if done else 1.0
        return self._out.flushed + int(self.buffered_bytes * ratio)


    # ----- feeding

    def add_lines(self, data, n: int, first_line: int, display: str) -> None:
        """Buffer n whole JSONL lines; row groups are written as they fill up."""
        if self._closing:
            raise ValueError("writer is closed")
        if self._chunk.fill and self._chunk.fill + memoryview(data).nbytes > self.options.parse_chunk_bytes:
            self._dispatch()
        self.records += self._chunk.add(data, n, first_line, display)
        if self._chunk.fill >= self.options.parse_chunk_bytes:
            self._dispatch()

    def close(self) -> None:
        """Write what is buffered and the footer (key-value metadata). The sink stays open.

        If it raises, call abort().
        """
        if self._closed:
            return
        self.close_async().result()  # sets _closed once the file is whole

    def close_async(self) -> Future:
        """close(), with the last row groups and the footer written on the writer's lane:
        returns once every chunk is parsed (parse errors and SchemaChanged are raised
        here); the future is done when the sink has the whole file. Don't touch the
        writer until then, except to abort()."""
        if self._closing:
            raise ValueError("writer is closed")
        self._closing = True
        if self._chunk.lines:
            self._dispatch()
        self._parsing.drain()
        self._buffers.clear()
        groups = []
        while self._pending:
            groups.append(self._next_group())

        def finish() -> None:
            for group in groups:
                self._write_group(group)
            self._writer.close()
            self._out.flush()
            self._closed = True

        self._inflight = thread_lane(self.thread_lane).submit(finish)
        return self._inflight

    def abort(self) -> None:
        """Drop what is buffered; once this returns, nothing more reaches the sink."""
        if self._closed:
            return
        self._closed = self._closing = True
        self._out.discard = True
        self._parsing.cancel()
        self._pending.clear()
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - the write being aborted may fail; it is dropped anyway
            pass
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001
            pass

    def __del__(self) -> None:
        out = getattr(self, "_out", None)
        if out is not None and not getattr(self, "_closed", True):
            out.discard = True  # never a footer into a sink the caller gave up on

    # ----- internals

    def _dispatch(self) -> None:
        chunk, self._chunk = self._chunk, _Chunk()
        self._parsing.submit(chunk, self._json, self._parse_schema)

    def _chunk_parsed(self, chunk: _Chunk, result) -> None:
        if isinstance(result, _NotUtf8):
            raise DataError(f"{chunk.where(result.index)}: cannot convert to Parquet: {result}; "
                            "Parquet strings must be UTF-8 (validate names every such line)")
        table = self._retry(chunk) if isinstance(result, Exception) else result
        if table.num_rows != chunk.lines or not table.num_columns:
            raise _rows_error(chunk, self._buffers, table)
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        self._write_full_groups()

    def _retry(self, chunk: _Chunk) -> pa.Table:
        """A chunk that failed to parse: a JSON-text key the byte search missed (rewrite
        every line, in Python), a record the schema snapshot has no room for
        (SchemaChanged), or a bad line (DataError naming it)."""
        data = None
        try:
            if self._json:
                data, rewritten = self._json.rewrite(chunk, self._buffers, everything=True)
            else:
                data = chunk.data(self._buffers)
            table = _read_json(data, self._parse_schema)
        except pa.ArrowInvalid as e:
            if self._builder is not None:
                self._builder.add_chunk(chunk)  # DataError if a line is bad
                grown = self._builder.snapshot()
                if not grown.same_snapshot(self.schema):
                    raise SchemaChanged(grown) from None
            if data is None:
                raise AssertionError(f"a value does not fit its JSON-text field, but the schema did not grow: {e}") from None
            raise _parse_error(chunk, data, self._parse_schema, e, self._source) from None
        if self._json and self._json.missed(table, rewritten):
            raise AssertionError("JSON-text values were not all rewritten")
        return table

    def _write_full_groups(self) -> None:
        while self._pending and self._pending_bytes >= self.options.row_group_bytes:
            self._submit(self._next_group())

    def _next_group(self) -> pa.Table:
        """The next row group out of the pending rows: whole parsed chunks while they fit
        in row_group_bytes, then as many rows of the next as fit (none if the group is
        already half full); what is left stays pending."""
        limit = self.options.row_group_bytes
        take, size = 0, 0
        while take < len(self._pending) and size + self._pending[take].nbytes <= limit:
            size += self._pending[take].nbytes
            take += 1
        tables = self._pending[:take]
        rest = self._pending[take:]
        if rest and (size < limit // 2 or not tables):
            head = rest[0]
            rows = _rows_within(head, limit - size)
            if size == 0 or head.slice(0, rows).nbytes <= limit - size:
                tables.append(head.slice(0, rows))
                rest = [head.slice(rows), *rest[1:]] if rows < head.num_rows else rest[1:]
        self._pending = rest
        self._pending_bytes = sum(t.nbytes for t in rest)
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def _submit(self, group: pa.Table) -> None:
        self._wait()  # one row group in flight: memory stays bounded
        self._inflight_bytes = group.nbytes
        self._inflight = thread_lane(self.thread_lane).submit(self._write_group, group)

    def _wait(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            try:
                inflight.result()
            finally:
                self._written_uncompressed += self._inflight_bytes
                self._inflight_bytes = 0

    def _write_group(self, group: pa.Table) -> None:
        self._writer.write_table(group, row_group_size=group.num_rows)
        self._out.flush()
        self.row_groups += 1


class _NotUtf8(pa.ArrowInvalid):
    """(parse lane) Bytes that are not UTF-8 in a chunk: pyarrow's reader would copy them
    into the Parquet strings as they are, and no reader could read the shard back."""

    def __init__(self, data, offset: int) -> None:
        head = bytes(data[:offset])
        self.index = head.count(b"\n")  # the chunk's line
        self.column = offset - (head.rfind(b"\n") + 1) + 1
        self.byte = data[offset]
        super().__init__(f"invalid UTF-8 at byte column {self.column} (byte 0x{self.byte:02x})")


def _convert_parse(prepared: tuple[memoryview, int], fields: _JsonFields, schema: pa.Schema) -> pa.Table:
    """(parse lane) The chunk as a table of the shard's schema.

    _NotUtf8 if it holds bytes that are not UTF-8; ArrowInvalid too if a JSON-text field's
    key was spelled so that the byte search missed it (pyarrow would have kept that value
    as a plain string).
    """
    data, rewritten = prepared
    bad = utf8_error(data)
    if bad >= 0:
        raise _NotUtf8(data, bad)
    table = _read_json(data, schema)
    if fields and fields.missed(table, rewritten):
        raise pa.ArrowInvalid("a JSON-text field's key is spelled with escapes")
    return table


def _rows_error(chunk: _Chunk, buffers: _Buffers, table: pa.Table) -> DataError:
    """pyarrow read another number of rows than the chunk has lines: records with no key
    at all (a Parquet row needs a column), or a line pyarrow cut in two at a lone CR."""
    if table.num_columns == 0:
        return DataError(f"{chunk.where(0)}: cannot convert to Parquet: the records have no keys ({{}}), and a "
                         "Parquet file needs at least one column; write JSONL (leave out --format parquet)")
    data = bytes(chunk.data(buffers))
    for i, (s, e) in enumerate(_line_spans(data)):
        line = data[s:e].rstrip(b"\n").removesuffix(b"\r")
        if b"\r" in line:
            _object_at(chunk, i, line)  # raises: not valid JSON
            return DataError(f"{chunk.where(i)}: cannot convert to Parquet: a carriage return (CR) inside the line")
    return DataError(f"{chunk.where(0)}: cannot convert to Parquet: {table.num_rows} rows read from {chunk.lines} "
                     f"lines (somewhere in this line and the {chunk.lines - 1} after it)")


def _rows_within(table: pa.Table, limit: int) -> int:
    """The most leading rows whose Arrow size is at most limit (at least one)."""
    n = table.num_rows
    if table.nbytes <= limit:
        return n
    lo, hi = 1, n  # invariant: the answer is in [lo, hi]; lo may exceed the limit alone
    estimate = max(1, min(n - 1, n * limit // max(table.nbytes, 1)))
    if table.slice(0, estimate).nbytes <= limit:
        lo = estimate
    else:
        hi = max(1, estimate - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if table.slice(0, mid).nbytes <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ---------------------------------------------------------------- Parquet as input


def parquet_lines(path: str | Path, batch_rows: int = 2048, *, drop_nulls: bool = False) -> Iterator[bytes]:
    """Stream a Parquet file as JSONL lines (each ending in b"\\n"), batch by batch.

    JSON-text fields (listed in the file's shardkit metadata) are decoded back to the
    values they held. `drop_nulls` leaves out keys whose value is null, the closest to the
    original records when their keys were optional.
    """
    if batch_rows < 1:
        raise UsageError(f"batch_rows must be at least 1 (got {batch_rows})")
    pf = _open_parquet(path)
    names = pf.schema_arrow.names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # to_pylist would keep the last column of each name: a silent loss
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, repeated))} repeat; a JSON record cannot "
                        "hold two keys of one name: rename the columns")
    fields = _JsonFields(_json_paths_of(pf, path))
    dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    row = 0
    with pf:
        for batch in pf.iter_batches(batch_size=batch_rows):
            records = batch.to_pylist()
            for rec in records:
                if fields:
                    fields.restore(rec, lambda r=row: f"{path}: row {r}")
                if drop_nulls:
                    rec = _without_nulls(rec)
                yield dumps(rec, default=_json_default, option=nl)
                row += 1


def _without_nulls(v):
    if type(v) is dict:
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    if type(v) is list:
        return [_without_nulls(x) for x in v]
    return v


def _json_default(v):
    """Values orjson does not know, from files with richer types (schema_from)."""
    import base64
    import decimal

    if isinstance(v, decimal.Decimal):
        return orjson.Fragment(str(v))
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(v).decode("ascii")
    if isinstance(v, datetime.timedelta):  # a duration column: ISO 8601, e.g. P1DT3.5S
        seconds = f"{v.seconds}.{v.microseconds:06d}".rstrip("0").rstrip(".")  # exact, no float
        return f"P{v.days}DT{seconds}S" if v.days else f"PT{seconds}S"
    if isinstance(v, datetime.datetime | datetime.date | datetime.time):  # pandas' Timestamp (ns, or a time zone)
        return v.isoformat()
    raise TypeError(f"cannot write {type(v).__name__} as JSON")
