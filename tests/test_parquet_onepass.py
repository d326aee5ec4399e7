"""`split --format parquet` in one pass: the schema is a snapshot that grows, and the run
starts again when a record does not fit it. Whatever happens, the files are those of a
run that inferred the whole input first (the engine does; so does --dry-run)."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from crashkit import final_files, run_and_kill, run_with_fault, seeded_delays, timed

from shardkit.pipeline.driver import split
from shardkit.pipeline.engine import split_many
from shardkit.pipeline.parquet import ParquetOptions, SchemaBuilder
from shardkit.pipeline.shard import SplitOptions
from shardkit.store.manifest import verify

PAD = "x" * 900  # ~1 KB records: 12,000 of them are larger than the first 8 MiB guess


def late_drift(path, n=12_000, late=9_000):
    """Records whose schema grows after row `late`: an int becomes a float, a null field
    gets strings, a key appears, an always-empty object gets a key, a field conflicts."""
    lines = []
    for i in range(n):
        r = {
            "id": i,
            "score": i if i < late else i + 0.5,
            "tag": None if i < late + 500 else f"t{i}",
            "meta": {} if i < late + 1000 else {"k": i},
            "content": "plain" if i < late + 1500 else [{"type": "text", "text": "part"}],
            "messages": [{"role": "user", "content": PAD}],
        }
        if i == late + 2000:
            r["rare"] = True
        lines.append(orjson.dumps(r) + b"\n")
    path.write_bytes(b"".join(lines))
    return [orjson.loads(x) for x in lines]


def whole_input_schema(path):
    builder = SchemaBuilder(ParquetOptions())
    builder.add_block(path.read_bytes(), 1, str(path))
    return builder.result()


def data_files(out):
    return {k: v for k, v in final_files(out).items() if k != "manifest.json"}


def manifest(out):
    """The manifest without what differs between two folders: time and relative input paths."""
    m = orjson.loads((out / "manifest.json").read_bytes())
    del m["created_at"]
    for s in m["sources"]:
        s.pop("path")
    for f in m["files"]:
        f.pop("source")
    return m


@pytest.fixture(scope="module")
def drift_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("onepass")
    src = base / "in.jsonl"
    records = late_drift(src)
    return base, src, records


@pytest.mark.parametrize("per_shard", ["2000", "100000"])  # shards committed before the growth / none
def test_a_schema_that_grows_late_gives_the_whole_input_result(drift_file, per_shard, tmp_path):
    base, src, records = drift_file
    one = tmp_path / "one"
    r = run_cli("split", src, "-o", one, "--format", "parquet", "-n", per_shard)
    assert r.returncode == 0, r.stderr
    # the engine infers the whole input before writing anything
    ref = tmp_path / "ref"
    r = run_cli("split", src, "-o", ref, "--format", "parquet", "-n", per_shard, "--engine", "local", "-j", "1")
    assert r.returncode == 0, r.stderr
    assert data_files(one) == data_files(ref)
    assert manifest(one) == manifest(ref)
    m = manifest(one)
    assert "inference" not in m["parquet"] and "discard" not in str(m)
    assert m["parquet"]["json_fields"] == ["content"]
    assert m["counts"] == {"read": 12_000, "written": 12_000, "train": 12_000, "validation": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "blank": 0}
    schema = pq.read_schema(one / m["files"][0]["path"])
    assert schema.remove_metadata().equals(whole_input_schema(src).parquet_schema().remove_metadata())
    assert str(schema.field("score").type) == "double" and str(schema.field("meta").type) == "struct<k: int64>"
    assert "rare" in schema.names
    # one warning for the conflict; none about "only empty objects" (meta got a key later)
    err = r.stderr.decode()
    assert "only ever holds empty objects" not in err
    rows = [row for f in m["files"] for row in pq.read_table(one / f["path"]).to_pylist()]
    assert len(rows) == len(records)
    assert rows[9_100]["score"] == 9_100.5 and rows[0]["score"] == 0.0 and rows[9_600]["tag"] == "t9600"
    assert verify(one / "manifest.json").ok


def test_no_shard_of_the_first_schema_is_left(drift_file, tmp_path):
    _, src, _ = drift_file
    out = tmp_path / "o"
    r = run_cli("split", src, "-o", out, "--format", "parquet", "-n", "2000")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["SHA256SUMS", "manifest.json"] + [f"in-{i:05d}.parquet" for i in range(6)])
    for name in names[1:-1]:
        assert str(pq.read_schema(out / name).field("score").type) == "double"


def test_many_growths_in_small_chunks_end_in_one_inference_pass(tmp_path):
    # tiny blocks and chunks: the snapshot grows again and again, so the run gives up
    # starting again early and infers the rest first; the result is the same
    src = tmp_path / "in.jsonl"
    lines = [orjson.dumps({"k": i, f"key{i // 40}": i}) + b"\n" for i in range(2_000)]
    src.write_bytes(b"".join(lines))
    opts = dict(max_records=300, format="parquet", block_size=4096)
    small = ParquetOptions(parse_chunk_bytes=4096, row_group_bytes=16 * 1024)
    a = split([src], tmp_path / "a", SplitOptions(**opts, parquet=small))
    b = split_many([src], tmp_path / "b", SplitOptions(**opts, parquet=small), engine="local", jobs=1)
    assert data_files(tmp_path / "a") == data_files(tmp_path / "b")
    assert a.manifest["parquet"] == b.manifest["parquet"]
    assert len(pq.read_schema(tmp_path / "a" / "in-00000.parquet").names) == 1 + 50
    assert sum(f["records"] for f in a.manifest["files"]) == 2_000


def test_dry_run_infers_the_whole_input_and_writes_nothing(drift_file, tmp_path):
    _, src, _ = drift_file
    r = run_cli("split", src, "-o", tmp_path / "o", "--format", "parquet", "-n", "2000", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "o").exists()
    assert orjson.loads(r.stdout)["warnings"] == [
        f"{src}:10501: field 'content' is array here but string in earlier records; stored as JSON text"
    ]


# ---------------------------------------------------------------- killed while the schema grows


@pytest.fixture(scope="module")
def drift_run(drift_file):
    base, src, _ = drift_file
    args = ["split", src, "--format", "parquet", "-n", "2000"]
    ref = base / "ref"
    seconds = timed([*args, "-o", ref])
    return args, data_files(ref), manifest(ref), seconds


def resume_and_compare(out, args, files, man):
    r = run_with_fault([*args, "-o", out, "--resume"], "")
    assert r.returncode == 0, r.stderr
    assert data_files(out) == files
    assert manifest(out) == man
    assert verify(out / "manifest.json").ok


@pytest.mark.parametrize("fault", ["after:shard_commit:2", "after:schema_grew:1", "before:shard_commit:7", "after:shard_commit:5", "after:manifest_write:7"])
def test_killed_around_the_growth_resumes_exactly(drift_run, fault, tmp_path):
    args, files, man, _ = drift_run
    out = tmp_path / "out"
    r = run_with_fault([*args, "-o", out], fault)
    assert r.returncode == -9, r.stderr
    if fault.startswith("after:schema_grew"):
        # the manifest lists no shard and names the ones written with the first schema
        m = orjson.loads((out / "manifest.json").read_bytes())
        assert m["files"] == [] and m["resume"]["discard"]
        assert all((out / name).exists() for name in m["resume"]["discard"])
    resume_and_compare(out, args, files, man)


@pytest.mark.parametrize("trial", range(5))
def test_killed_at_random_moments_resumes_exactly(drift_run, trial, tmp_path):
    args, files, man, seconds = drift_run
    out = tmp_path / "out"
    run_and_kill([*args, "-o", out], seeded_delays(77, 5, 0.1, seconds * 1.1)[trial])
    if not (out / "manifest.json").exists():
        r = run_with_fault([*args, "-o", out, "--overwrite"], "")  # killed before the first manifest
        assert r.returncode == 0, r.stderr
        assert data_files(out) == files
        return
    resume_and_compare(out, args, files, man)
