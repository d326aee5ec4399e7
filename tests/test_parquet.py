"""Parquet core: whole-input schema inference, shard writer, Parquet -> JSONL.

Real files and real readers (pyarrow, polars, duckdb, datasets); small parse chunks so
that drift and conflicts land in different chunks than the records before them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardkit.core.blocks import BlockReader, nonblank_runs
from shardkit.core.errors import DataError, InputError, UsageError
from shardkit.core.io import InputStream, inspect_input
from shardkit.pipeline.parquet import (
    InferredSchema,
    ParquetOptions,
    ParquetShardWriter,
    SchemaBuilder,
    parquet_lines,
    schema_from_parquet,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = 64 * 1024  # parse chunk size for tests: many chunks from a few MB


def _load_drift():
    spec = importlib.util.spec_from_file_location("shardkit_fixture_drift", ROOT / "fixtures" / "drift.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


drift = _load_drift()


# ---------------------------------------------------------------- helpers (the caller's side)


def runs(path: Path, block_size: int = 16 * 1024):
    """(bytes of whole lines, first line, count) as the splitter feeds them."""
    with InputStream(inspect_input(str(path))) as stream:
        for block in BlockReader(stream, block_size):
            found, _ = nonblank_runs(block)
            for run in found:
                yield memoryview(block.buf)[run.start : run.end], run.first_line, run.lines


def infer(path: Path, options: ParquetOptions | None = None, warn=None) -> InferredSchema:
    options = options or ParquetOptions(parse_chunk_bytes=SMALL)
    builder = SchemaBuilder(options, warn=warn)
    for data, first_line, n in runs(path):
        builder.add_block(data, first_line, path.name, lines=n)
    return builder.result()


def convert(path: Path, out: Path, schema: InferredSchema, options: ParquetOptions | None = None, per_shard: int | None = None) -> list[Path]:
    """Write shards of at most per_shard records; return their paths."""
    options = options or ParquetOptions(parse_chunk_bytes=SMALL)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    writer = sink = None
    count = 0
    for data, first_line, n in runs(path):
        pos, line = 0, first_line
        view = bytes(data)
        while n:
            if writer is None:
                shards.append(out / f"part-{len(shards):05d}.parquet")
                sink = open(shards[-1], "wb")  # noqa: SIM115
                writer, count = ParquetShardWriter(sink, schema, options), 0
            take = n if per_shard is None else min(n, per_shard - count)
            cut = pos
            for _ in range(take):
                cut = view.index(b"\n", cut) + 1
            writer.add_lines(view[pos:cut], take, line, path.name)
            pos, line, n, count = cut, line + take, n - take, count + take
            if per_shard is not None and count == per_shard:
                writer.close()
                sink.close()
                writer = None
    if writer is not None:
        writer.close()
        sink.close()
    return shards


def to_parquet(path: Path, out: Path, options: ParquetOptions | None = None, per_shard: int | None = None):
    schema = infer(path, options)
    return schema, convert(path, out, schema, options, per_shard)


def originals(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def expected(value, t: pa.DataType):
    """What a record reads back as: absent keys null, ints widened where the column is float."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return {f.name: expected(value.get(f.name), f.type) for f in t}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [expected(x, t.value_type) for x in value]
    if pa.types.is_floating(t):
        return float(value)
    return value


def read_back(shards: list[Path]) -> list[dict]:
    return [row for s in shards for row in pq.read_table(s).to_pylist()]


def write_lines(path: Path, records: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


# ---------------------------------------------------------------- schema drift


@pytest.fixture(scope="module")
def drift_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("drift") / "drift.jsonl"
    drift.write_jsonl(path, 12_000, seed=3)
    return path


def test_schema_comes_from_the_whole_input(drift_file: Path) -> None:
    schema = infer(drift_file)
    s = schema.arrow
    assert s.field("note").type == pa.string()  # null for 9,000 rows, then strings
    assert s.field("score").type == pa.float64()  # ints, then floats
    assert s.field("flag").type == pa.bool_()  # every 1,000th row
    assert s.field("tags").type.value_type == pa.string()  # empty lists, then strings
    meta = s.field("meta").type
    assert meta.field("extra").type == pa.struct([("seen", pa.string()), ("at", pa.int64())])  # last row only
    message = s.field("messages").type.value_type
    assert [f.name for f in message] == ["role", "content", "name"]
    assert message.field("content").type == pa.string()
    assert schema.json_fields == [] and schema.warnings == []


def test_drifting_records_round_trip_in_order(drift_file: Path, tmp_path: Path) -> None:
    schema, shards = to_parquet(drift_file, tmp_path / "out", per_shard=5_000)
    assert [pq.ParquetFile(s).metadata.num_rows for s in shards] == [5_000, 5_000, 2_000]
    want = [expected(r, pa.struct(list(schema.arrow))) for r in originals(drift_file)]
    assert read_back(shards) == want
    assert read_back(shards)[-1]["meta"]["extra"] == {"seen": "once", "at": 11_999}
    assert all(pq.ParquetFile(s).schema_arrow.equals(pq.ParquetFile(shards[0]).schema_arrow) for s in shards)


def test_a_key_seen_once_in_the_last_line_is_kept(tmp_path: Path) -> None:
    records = [{"text": f"row {i}", "n": i} for i in range(3000)] + [{"text": "last", "n": 3000, "rare": {"x": [1.5]}}]
    path = write_lines(tmp_path / "rare.jsonl", records)
    schema, shards = to_parquet(path, tmp_path / "out")
    assert schema.arrow.field("rare").type == pa.struct([("x", pa.list_(pa.field("element", pa.float64())))])
    rows = read_back(shards)
    assert rows[-1] == {"text": "last", "n": 3000, "rare": {"x": [1.5]}}
    assert rows[0]["rare"] is None and len(rows) == 3001


def test_long_line_larger_than_a_parse_block(tmp_path: Path) -> None:
    big = "x" * (3 * 2**20)
    path = write_lines(tmp_path / "long.jsonl", [{"a": 1}, {"a": 2, "b": big}, {"a": 3}])
    schema, shards = to_parquet(path, tmp_path / "out")
    assert [r["b"] for r in read_back(shards)] == [None, big, None]


# ---------------------------------------------------------------- conflicts


def conflict_records() -> list[dict]:
    recs = []
    for i in range(3000):
        content = [{"type": "text", "text": f"part {i}"}, {"type": "image", "url": "u"}] if i % 700 == 650 else f"hello {i}"
        rec = {"id": f"rec-{i}" if i % 3 == 0 else i, "messages": [{"role": "user", "content": content}]}
        if i == 1234:
            rec["id"] = {"nested": [1, 2.5, None, "x"]}
        recs.append(rec)
    return recs


def test_conflicts_are_stored_as_json_text_and_warned(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", conflict_records())
    warned: list[str] = []
    schema = infer(path, warn=warned.append)
    assert schema.json_fields == ["id", "messages[].content"]
    assert warned == schema.warnings == [
        "c.jsonl:2: field 'id' is integer here but string in earlier records; stored as JSON text",
        "c.jsonl:651: field 'messages[].content' is array here but string in earlier records; stored as JSON text",
    ]
    shards = convert(path, tmp_path / "out", schema)
    pf = pq.ParquetFile(shards[0])
    meta = pf.metadata.metadata
    assert json.loads(meta[b"shardkit.json_fields"]) == ["id", "messages[].content"]
    assert json.loads(meta[b"shardkit.json_paths"]) == [["id"], ["messages", None, "content"]]
    assert meta[b"shardkit.version"] == b"0.1.0"
    assert pf.schema_arrow.field("id").metadata == {b"shardkit.encoding": b"json"}
    rows = pq.read_table(shards[0]).to_pylist()
    assert rows[0]["id"] == '"rec-0"' and rows[1]["id"] == "1"
    assert rows[650]["messages"][0]["content"] == '[{"type":"text","text":"part 650"},{"type":"image","url":"u"}]'


def test_json_text_fields_round_trip_exactly(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", conflict_records())
    schema, shards = to_parquet(path, tmp_path / "out", per_shard=1000)
    back = [orjson.loads(line) for s in shards for line in parquet_lines(s)]
    assert back == originals(path)


def test_conflict_error_names_file_line_field_and_both_types(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [{"m": [{"content": "a"}]}] * 5000 + [{"m": [{"content": ["a", "b"]}]}])
    with pytest.raises(DataError) as e:
        infer(path, ParquetOptions(on_conflict="error", parse_chunk_bytes=SMALL))
    assert str(e.value) == (
        "c.jsonl:5001: field 'm[].content' is array here but string in earlier records "
        '(use on_conflict="json-string" to store it as JSON text)'
    )


def test_conflict_inside_one_chunk_errors_at_its_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [{"a": 1}, {"a": 2}, {"a": True}])
    with pytest.raises(DataError, match=r"^c\.jsonl:3: field 'a' is boolean here but integer in earlier records"):
        infer(path, ParquetOptions(on_conflict="error"))


def test_json_field_key_spelled_with_escapes_is_still_encoded(tmp_path: Path) -> None:
    # Only string values under the escaped key: pyarrow takes them as they are, so just the
    # count of rewritten values can tell that "3" was not turned into JSON text.
    conflict = tmp_path / "conflict.jsonl"
    conflict.write_bytes(b'{"id":"a"}\n{"id":2}\n{"other":0}\n')
    schema = infer(conflict)
    assert schema.json_fields == ["id"]
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"\\u0069d":"3"}\n{"other":1}\n{"\\u0069d":"x\\"y"}\n')
    shards = convert(path, tmp_path / "out", schema)
    assert [orjson.loads(x) for x in parquet_lines(shards[0], drop_nulls=True)] == [
        {"id": "a"}, {"id": "3"}, {"other": 1}, {"id": 'x"y'}
    ]


def test_always_empty_object_is_stored_as_json_text(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "e.jsonl", [{"a": 1, "meta": {}}, {"a": 2, "meta": {}}])
    schema, shards = to_parquet(path, tmp_path / "out")
    assert schema.json_fields == ["meta"]
    assert schema.warnings == ["field 'meta' only ever holds empty objects; stored as JSON text"]
    assert [orjson.loads(x) for x in parquet_lines(shards[0])] == originals(path)


# ---------------------------------------------------------------- bad lines


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "x.jsonl:3: not a JSON object (got array)"),
        (b'"text"', "x.jsonl:3: not a JSON object (got string)"),
        (b'{"a": 1,', "x.jsonl:3: not valid JSON: "),
        (b'{"a": 1, "a": 2}', "x.jsonl:3: cannot convert to Parquet: Column(/a) was specified twice"),
    ],
)
def test_bad_line_is_a_data_error_with_file_and_line(tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n' + line + b'\n{"a": 4}\n')
    with pytest.raises(DataError) as e:
        infer(path)
    assert str(e.value).startswith(message)
    # the writer reports it the same way when fed a schema that skipped inference
    schema = InferredSchema(pa.schema([("a", pa.int64())]))
    with pytest.raises(DataError) as e2:
        convert(path, tmp_path / "out", schema)
    assert str(e2.value).startswith(message)


# ---------------------------------------------------------------- readers


def test_every_reader_sees_the_same_rows(tmp_path: Path, monkeypatch) -> None:
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "d.jsonl"
    drift.write_jsonl(path, 2_000, seed=5, conflicts=True)
    schema, shards = to_parquet(path, tmp_path / "out", per_shard=800)
    files = [str(s) for s in shards]
    reference = read_back(shards)
    assert len(reference) == 2_000

    assert pl.read_parquet(files).to_dicts() == reference

    rel = duckdb.sql(f"SELECT * FROM read_parquet({files!r})")
    assert [dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()] == reference

    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 2_000
    assert ds.to_list() == reference


# ---------------------------------------------------------------- row groups and sizes


def test_row_groups_stay_within_the_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    drift.write_jsonl(path, 6_000, seed=1)
    limit = 128 * 1024
    options = ParquetOptions(row_group_bytes=limit, parse_chunk_bytes=SMALL)
    schema, shards = to_parquet(path, tmp_path / "out", options)
    md = pq.ParquetFile(shards[0]).metadata
    sizes = [md.row_group(i).total_byte_size for i in range(md.num_row_groups)]
    assert md.num_row_groups >= 8
    assert max(sizes) <= limit
    assert min(sizes[:-1]) >= limit // 3  # full groups, not one per chunk
    assert md.num_rows == 6_000


def test_a_row_larger_than_the_limit_gets_its_own_group(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "b.jsonl", [{"t": "a"}, {"t": "b" * 50_000}, {"t": "c"}])
    options = ParquetOptions(row_group_bytes=10_000)
    schema, shards = to_parquet(path, tmp_path / "out", options)
    md = pq.ParquetFile(shards[0]).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [1, 1, 1]


def test_bytes_written_counts_what_reached_the_sink(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    data = drift.write_jsonl(path, 4_000, seed=2)
    schema = infer(path)
    options = ParquetOptions(row_group_bytes=64 * 1024, parse_chunk_bytes=SMALL)

    class Sink:  # row groups are written on another thread: count what arrives
        def __init__(self) -> None:
            self.file = open(tmp_path / "x.parquet", "wb")  # noqa: SIM115
            self.size = 0

        def write(self, b) -> None:
            self.file.write(b)
            self.size += len(b)

    sink = Sink()
    seen = []
    writer = ParquetShardWriter(sink, schema, options)
    for line_no, line in enumerate(data.splitlines(keepends=True), 1):
        writer.add_lines(line, 1, line_no, "d.jsonl")
        if line_no % 500 == 0:
            written, estimated = writer.bytes_written, writer.estimated_bytes
            assert written <= sink.size  # counted once the sink's write returned
            seen.append((written, estimated))
    writer.close()
    sink.file.close()
    size = os.path.getsize(tmp_path / "x.parquet")
    assert writer.bytes_written == sink.size == size and writer.records == 4_000
    written = [b for b, _ in seen]
    assert written == sorted(written) and written[-1] > 0
    assert all(b <= e for b, e in seen)
    assert writer.row_groups == pq.ParquetFile(tmp_path / "x.parquet").metadata.num_row_groups


def test_abort_leaves_the_sink_alone_afterwards(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    data = drift.write_jsonl(path, 2_000, seed=2)
    schema = infer(path)

    class Sink:
        def __init__(self) -> None:
            self.size = 0

        def write(self, b) -> None:
            self.size += len(b)

    sink = Sink()
    writer = ParquetShardWriter(sink, schema, ParquetOptions(row_group_bytes=32 * 1024, parse_chunk_bytes=16 * 1024))
    writer.add_lines(data, 2_000, 1, "d.jsonl")
    writer.abort()
    size = sink.size
    writer.abort()
    writer.close()
    assert sink.size == size


def test_error_at_close_then_abort(tmp_path: Path) -> None:
    schema = InferredSchema(pa.schema([("a", pa.int64())]))

    class Sink:
        def __init__(self) -> None:
            self.size = 0

        def write(self, b) -> None:
            self.size += len(b)

    sink = Sink()
    writer = ParquetShardWriter(sink, schema)
    writer.add_lines(b'{"a": 1}\n{"a": "x"}\n', 2, 10, "t.jsonl")
    with pytest.raises(DataError, match=r"^t\.jsonl:11: cannot convert to Parquet: field 'a'"):
        writer.close()
    size = sink.size
    writer.abort()
    del writer
    assert sink.size == size
    aborted = ParquetShardWriter(Sink(), schema)
    aborted.abort()
    with pytest.raises(ValueError, match="closed"):
        aborted.add_lines(b'{"a": 1}\n', 1, 1, "t.jsonl")


# ---------------------------------------------------------------- Parquet -> JSONL


def test_parquet_lines_gives_the_records_back_in_order(drift_file: Path, tmp_path: Path) -> None:
    schema, shards = to_parquet(drift_file, tmp_path / "out")
    lines = list(parquet_lines(shards[0], batch_rows=777))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    want = [expected(r, pa.struct(list(schema.arrow))) for r in originals(drift_file)]
    assert [orjson.loads(x) for x in lines] == want
    assert lines == list(parquet_lines(shards[0]))


def test_parquet_lines_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(parquet_lines(tmp_path / "missing.parquet"))
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a Parquet file"):
        list(parquet_lines(tmp_path / "x.parquet"))


# ---------------------------------------------------------------- schema as JSON, schema_from


def test_schema_survives_json_and_gives_identical_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    drift.write_jsonl(path, 3_000, seed=4, conflicts=True)
    schema = infer(path)
    restored = InferredSchema.from_json(json.loads(json.dumps(schema.to_json())))
    assert restored == schema and restored.json_fields == schema.json_fields == ["messages[].content", "id"]
    a = convert(path, tmp_path / "a", schema)
    b = convert(path, tmp_path / "b", restored)
    assert a[0].read_bytes() == b[0].read_bytes()


def test_from_json_rejects_what_is_not_a_schema() -> None:
    with pytest.raises(DataError, match="not a saved shardkit Parquet schema"):
        InferredSchema.from_json({"fields": []})


def test_schema_from_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    drift.write_jsonl(path, 1_000, seed=6, conflicts=True)
    schema, shards = to_parquet(path, tmp_path / "out")
    taken = schema_from_parquet(shards[0])
    assert taken == schema
    options = ParquetOptions(schema_from=str(shards[0]))
    more = write_lines(tmp_path / "more.jsonl", [{"n": 1, "id": [1, 2], "messages": [{"role": "user", "content": ["x"]}]}])
    again = convert(more, tmp_path / "more", taken, options)
    assert [orjson.loads(x) for x in parquet_lines(again[0], drop_nulls=True)] == originals(more)
    assert pq.ParquetFile(again[0]).schema_arrow.equals(pq.ParquetFile(shards[0]).schema_arrow)

    extra = write_lines(tmp_path / "extra.jsonl", [{"n": 1}, {"n": 2, "meta": {"source": "x", "oops": 1}}])
    with pytest.raises(DataError) as e:
        convert(extra, tmp_path / "extra", taken, options)
    assert str(e.value) == f"extra.jsonl:2: field 'meta.oops' is not in the schema (from {shards[0]})"

    wrong = write_lines(tmp_path / "wrong.jsonl", [{"n": 1}, {"n": "two"}])
    with pytest.raises(DataError, match=r"^wrong\.jsonl:2: cannot convert to Parquet: field 'n': string where the schema has number$"):
        convert(wrong, tmp_path / "wrong", taken, options)


def test_schema_from_keeps_narrower_types_of_other_writers(tmp_path: Path) -> None:
    src = tmp_path / "other.parquet"
    pq.write_table(pa.table({"n": pa.array([1], pa.int32()), "x": pa.array([0.5], pa.float32()), "t": pa.array(["a"]).dictionary_encode()}), src)
    taken = schema_from_parquet(src)
    assert taken.arrow == pa.schema([("n", pa.int32()), ("x", pa.float32()), ("t", pa.string())])
    assert InferredSchema.from_json(taken.to_json()) == taken
    with pytest.raises(InputError, match="no such file"):
        schema_from_parquet(tmp_path / "nope.parquet")


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("codec", ["zstd", "snappy", "gzip", "none"])
def test_each_compression_writes_a_readable_file(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "d.jsonl"
    drift.write_jsonl(path, 500, seed=7)
    schema, shards = to_parquet(path, tmp_path / "out", ParquetOptions(compression=codec))
    col = pq.ParquetFile(shards[0]).metadata.row_group(0).column(0)
    assert col.compression == {"none": "UNCOMPRESSED"}.get(codec, codec.upper())
    assert pq.read_table(shards[0]).num_rows == 500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression": "lz4"}, "--compression for Parquet must be one of zstd, snappy, gzip, none (got 'lz4')"),
        ({"on_conflict": "skip"}, "on_conflict must be one of json-string, error (got 'skip')"),
        ({"row_group_bytes": 0}, "row group size must be at least 1 byte (got 0)"),
        ({"compression": "snappy", "compression_level": 3}, "--compression snappy takes no compression level"),
    ],
)
def test_bad_options_are_usage_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError) as e:
        ParquetOptions(**kwargs)
    assert str(e.value) == message
