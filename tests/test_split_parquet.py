"""`split --format parquet` end to end: real pyarrow readers, real processes, real kills."""

from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import make_chat_jsonl, run_cli
from crashkit import final_files, run_and_kill, run_with_fault, seeded_delays, timed

from shardkit.store.manifest import verify


def drifting(path, n=3000):
    """Records whose fields drift: null then string, int then float, a rare key, nested messages."""
    lines = []
    for i in range(n):
        r = {
            "id": i,
            "score": i if i < n // 2 else i + 0.5,
            "tag": None if i < n * 0.9 else f"t{i}",
            "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
        }
        if i % 1000 == 999:
            r["rare"] = {"k": i}
        lines.append(orjson.dumps(r) + b"\n")
    path.write_bytes(b"".join(lines))
    return [orjson.loads(x) for x in lines]


def read_rows(out):
    m = orjson.loads((out / "manifest.json").read_bytes())
    rows = []
    for f in m["files"]:
        rows += pq.read_table(out / f["path"]).to_pylist()
    return m, rows


def same(original, row):
    """A row equals the record it came from, modulo absent keys read back as null."""
    for k, v in row.items():
        if k not in original:
            assert v is None, (k, v)
        elif isinstance(v, dict) and isinstance(original[k], dict):
            same(original[k], v)
        else:
            assert v == original[k], (k, v, original[k])


def test_drifting_schema_converts_losslessly(tmp_path):
    records = drifting(tmp_path / "in.jsonl")
    out = tmp_path / "out"
    r = run_cli("split", tmp_path / "in.jsonl", "-o", out, "--format", "parquet", "-n", "1000", "--json")
    assert r.returncode == 0, r.stderr
    m, rows = read_rows(out)
    assert [f["records"] for f in m["files"]] == [1000, 1000, 1000]
    assert all(f["format"] == "parquet" and f["compression"] == "zstd" for f in m["files"])
    assert len(rows) == len(records)
    for orig, row in zip(records, rows, strict=True):
        same(orig, row)
    assert verify(out / "manifest.json").ok
    assert m["parquet"]["json_fields"] == []
    schema = pq.read_schema(out / m["files"][0]["path"])
    assert str(schema.field("score").type) == "double" and str(schema.field("tag").type) == "string"
    assert "rare" in schema.names


def test_parquet_back_to_jsonl_and_conflicts_as_json_text(tmp_path):
    src = tmp_path / "in.jsonl"
    recs = [
        {"messages": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}, {"role": "assistant", "content": "y"}]},
    ]
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    r = run_cli("split", src, "-o", tmp_path / "pq", "--format", "parquet", "-n", "10")
    assert r.returncode == 0 and b"stored as JSON text" in r.stderr
    m = orjson.loads((tmp_path / "pq" / "manifest.json").read_bytes())
    assert m["parquet"]["json_fields"] == ["messages[].content"]
    r = run_cli("split", tmp_path / "pq" / m["files"][0]["path"], "-o", tmp_path / "back", "-n", "10")
    assert r.returncode == 0, r.stderr
    back = [orjson.loads(x) for x in (tmp_path / "back" / "in-00000-00000.jsonl").read_bytes().splitlines()]
    assert back == recs
    r = run_cli("split", src, "-o", tmp_path / "err", "--format", "parquet", "-n", "10", "--on-conflict", "error")
    assert r.returncode == 1 and b"in.jsonl:2" in r.stderr and b"content" in r.stderr


def test_max_bytes_and_row_groups(tmp_path):
    src = tmp_path / "in.jsonl"
    make_chat_jsonl(src, 4000, seed=3, max_len=2000)
    out = tmp_path / "out"
    r = run_cli("split", src, "-o", out, "--format", "parquet", "--max-bytes", "1MB", "--row-group-bytes", "256KiB")
    assert r.returncode == 0, r.stderr
    m, rows = read_rows(out)
    assert len(rows) == 4000 and len(m["files"]) > 2
    for f in m["files"]:
        meta = pq.ParquetFile(out / f["path"]).metadata
        assert meta.num_rows == f["records"]
        assert f["bytes"] == (out / f["path"]).stat().st_size
        # a shard rolls once its size reaches the limit: over by at most one piece
        assert f["bytes"] <= 1_000_000 * 1.5, f
        assert all(meta.row_group(i).total_byte_size <= 2 * 256 * 1024 for i in range(meta.num_row_groups))


def test_validate_and_parquet_reject_invalid_records(tmp_path):
    src = tmp_path / "in.jsonl"
    good = b'{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}\n'
    src.write_bytes(good + b'{"messages": 5}\n' + b"not json\n" + good)
    r = run_cli("split", src, "-o", tmp_path / "o", "--format", "parquet", "-n", "10", "--validate", "chat", "--json")
    assert r.returncode == 0, r.stderr
    s = orjson.loads(r.stdout)
    assert s["counts"] == {"read": 4, "written": 2, "train": 2, "validation": 0, "rejected": 2, "duplicates": 0, "excluded": 0, "blank": 0}
    assert pq.read_table(tmp_path / "o" / "in-00000.parquet").num_rows == 2


def test_stdin_needs_schema_from(tmp_path):
    r = run_cli("split", "-", "-o", tmp_path / "o", "--format", "parquet", "-n", "10", input=b'{"a": 1}\n')
    assert r.returncode == 2 and b"--schema-from" in r.stderr
    r = run_cli("split", "x.jsonl", "-o", tmp_path / "o", "-n", "1", "--row-group-bytes", "1MB")
    assert r.returncode == 2


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pqcrash")
    src = base / "in.jsonl"
    make_chat_jsonl(src, 3000, seed=9, max_len=1500)
    args = ["split", src, "--format", "parquet", "-n", "400"]
    ref = base / "ref"
    seconds = timed([*args, "-o", ref])
    return base, args, final_files(ref), seconds


def check_resumed(out, args, reference):
    for name, content in final_files(out).items():
        if name not in ("manifest.json", "SHA256SUMS"):
            assert content == reference[name], f"{name} partial or different after the kill"
    r = run_with_fault([*args, "-o", out, "--resume"], "")
    assert r.returncode == 0, r.stderr
    got = final_files(out)
    assert got.keys() == reference.keys()
    for name in reference:
        if name != "manifest.json":
            assert got[name] == reference[name], name  # byte-identical Parquet
    assert verify(out / "manifest.json").ok


@pytest.mark.parametrize("fault", ["after:shard_commit:2", "before:shard_commit:3", "after:manifest_write:1", "after:shard_write:5"])
def test_parquet_killed_at_fault_points_resumes_exactly(parquet_run, fault, tmp_path):
    _, args, reference, _ = parquet_run
    out = tmp_path / "out"
    r = run_with_fault([*args, "-o", out], fault)
    assert r.returncode == -9, r.stderr
    check_resumed(out, args, reference)


@pytest.mark.parametrize("trial", range(6))
def test_parquet_kill9_at_random_moments(parquet_run, trial, tmp_path):
    _, args, reference, seconds = parquet_run
    out = tmp_path / "out"
    run_and_kill([*args, "-o", out], seeded_delays(404, 6, 0.1, seconds * 1.1)[trial])
    check_resumed(out, args, reference)


def test_a_jsonl_file_that_begins_like_parquet_is_split_as_lines(tmp_path):
    # found by the property test: b"PAR1" in a .jsonl file was taken for Parquet
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"PAR1\n{}\n")
    r = run_cli("split", src, "-o", tmp_path / "o", "-n", "10")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "in-00000.jsonl").read_bytes() == b"PAR1\n{}\n"


# Lines pyarrow's reader would store wrong: each is refused with its file:line, before a
# shard with it is published (the run can be fixed and started again).
@pytest.mark.parametrize(
    ("lines", "where", "says"),
    [
        # bytes that are not UTF-8: pyarrow copies them into the strings; no reader reads them back
        ([b'{"text":"a"}', b'{"text":"a\xff\xfeb"}'], b"in.jsonl:2:", b"invalid UTF-8 at byte column 11 (byte 0xff)"),
        ([b'{"text":"ok"}'] * 300 + [b'{"text":"\xed\xa0\x80"}'], b"in.jsonl:301:", b"invalid UTF-8"),
        # a lone CR: pyarrow reads two rows from one line
        ([b'{"a":1}', b'{"a":1}\r{"a":2}', b'{"a":3}'], b"in.jsonl:2:", b"not valid JSON"),
        # only empty objects: no column to hold a row
        ([b"{}", b"{}"], b"in.jsonl:1:", b"no keys"),
    ],
)
def test_lines_parquet_cannot_hold_are_refused_by_line(tmp_path, lines, where, says):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    r = run_cli("split", src, "-o", tmp_path / "out", "-n", "1000", "--format", "parquet")
    assert r.returncode == 1, r.stderr
    assert where in r.stderr and says in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_crlf_lines_and_empty_objects_beside_keys_convert(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"a":1}\r\n{}\r\n{"a":3,"t":"\xc3\xa9\xf0\x9f\x98\x80"}\r\n')
    r = run_cli("split", src, "-o", tmp_path / "out", "-n", "1000", "--format", "parquet")
    assert r.returncode == 0, r.stderr
    assert read_rows(tmp_path / "out")[1] == [{"a": 1, "t": None}, {"a": None, "t": None}, {"a": 3, "t": "é😀"}]
    assert verify(tmp_path / "out").ok


def test_parquet_shards_are_read_as_records_by_validate_stats_and_overlap(tmp_path):
    """Every command that reads records reads a Parquet file's rows, not its bytes as text
    (which gave '0 records' and '0 overlaps' with exit 0: a leak check that passed)."""
    src = tmp_path / "train.jsonl"
    make_chat_jsonl(src, 40, seed=3, max_len=200)
    lines = src.read_bytes().splitlines(keepends=True)
    lines[6] = b'{"messages":[{"role":"bot","content":"x"}]}\n'
    src.write_bytes(b"".join(lines))
    r = run_cli("split", src, "-o", tmp_path / "pq", "-n", "1000", "--format", "parquet")
    assert r.returncode == 0, r.stderr
    shard = tmp_path / "pq" / "train-00000.parquet"

    r = run_cli("validate", shard, "--kind", "chat", "--json")
    assert r.returncode == 1, r.stderr
    report = orjson.loads(r.stdout)
    assert report["records"]["read"] == 40 and report["records"]["invalid"] == 1, report
    assert f"{shard}:7".encode() in r.stdout

    r = run_cli("stats", shard, "--json")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["inputs"][0]["records"] == 40

    r = run_cli("overlap", shard, "--against", src, "--json")
    assert r.returncode == 1, r.stderr
    assert orjson.loads(r.stdout)["overlapping_eval_records"] == 40
    r = run_cli("overlap", src, "--against", shard, "--json")
    assert r.returncode == 1 and orjson.loads(r.stdout)["overlapping_eval_records"] == 40


@pytest.mark.parametrize("limit", ["20KB", "100KB"])
def test_a_small_max_bytes_is_not_overshot(tmp_path, limit):
    """Shards were checked against --max-bytes every 1 MiB of input: -b 20KB wrote one
    174 KiB shard. The size is now checked at least four times per shard."""
    src = tmp_path / "in.jsonl"
    make_chat_jsonl(src, 1500, seed=2, max_len=400)
    r = run_cli("split", src, "-o", tmp_path / "o", "--format", "parquet", "-b", limit, "--json")
    assert r.returncode == 0, r.stderr
    files = orjson.loads(r.stdout)["files"]
    cap = int(limit.removesuffix("KB")) * 1000
    assert len(files) > 1 and all(f["bytes"] <= cap for f in files), [f["bytes"] for f in files]
    assert sum(pq.read_metadata(tmp_path / "o" / f["path"]).num_rows for f in files) == 1500


def test_stdin_parquet_with_record_options_is_refused_before_out_is_touched(tmp_path):
    """It left an interrupted manifest behind (exit 2), and the same command then said
    'use --resume', which stdin cannot."""
    src = tmp_path / "in.jsonl"
    make_chat_jsonl(src, 20, seed=1, max_len=50)
    out = tmp_path / "o"
    for _ in range(2):
        r = run_cli("split", "-", "-o", out, "-n", "10", "--format", "parquet", "--shuffle", input=src.read_bytes())
        assert r.returncode == 2 and b"give a file, not stdin" in r.stderr, r.stderr
        assert not out.exists()


def test_parquet_input_with_richer_types_or_repeated_names(tmp_path):
    """Found by the hostile-input hunt: time-zone or ns timestamps and durations were an
    internal error; two columns of one name lost the first with exit 0."""
    import datetime

    import pyarrow as pa

    rich = tmp_path / "rich.parquet"
    pq.write_table(pa.table({
        "t": pa.array([datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)], pa.timestamp("ns", tz="UTC")),
        "d": pa.array([datetime.timedelta(days=1, seconds=3, microseconds=123456)], pa.duration("us")),
    }), rich)
    r = run_cli("head", rich)
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout) == {"t": "2024-01-01T00:00:00+00:00", "d": "P1DT3.123456S"}
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), dup)
    for args in (["head", dup], ["split", dup, "-o", tmp_path / "o", "-n", "5"]):
        r = run_cli(*args)
        assert r.returncode == 1 and b"'text' repeat" in r.stderr, r.stderr
