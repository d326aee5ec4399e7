"""`shardkit head` and `shardkit sample` (issue 18.5): every input split reads, bounded
memory, deterministic samples, uniform over records."""

from __future__ import annotations

import collections
import gzip
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from shardkit.core.errors import UsageError
from shardkit.pipeline.peek import head, sample

RECORDS = [{"i": i, "text": f"é {i}"} for i in range(200)]


def _jsonl(records) -> bytes:
    out = []
    for k, r in enumerate(records):
        out.append(orjson.dumps(r) + b"\n")
        if k % 9 == 0:
            out.append(b"\n")  # blank lines are not records
    return b"".join(out)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    data = _jsonl(RECORDS)
    files = {
        "plain": tmp_path / "a.jsonl",
        "gzip": tmp_path / "a.jsonl.gz",
        "zstd": tmp_path / "a.jsonl.zst",
        "array": tmp_path / "a.json",
        "parquet": tmp_path / "a.parquet",
    }
    files["plain"].write_bytes(data)
    files["gzip"].write_bytes(gzip.compress(data))
    with pa.CompressedOutputStream(str(files["zstd"]), "zstd") as f:
        f.write(data)
    files["array"].write_bytes(b"[\n" + b",\n".join(orjson.dumps(r, option=orjson.OPT_INDENT_2) for r in RECORDS) + b"\n]\n")
    pq.write_table(pa.Table.from_pylist(RECORDS), files["parquet"])
    return files


@pytest.mark.parametrize("fmt", ["plain", "gzip", "zstd", "array", "parquet"])
def test_head_reads_every_input_split_reads(inputs, fmt):
    got = head([inputs[fmt]], 5)
    assert [orjson.loads(p.raw) for p in got] == RECORDS[:5]
    r = run_cli("head", inputs[fmt], "-n", "3")
    assert r.returncode == 0, r.stderr
    assert [orjson.loads(x) for x in r.stdout.splitlines()] == RECORDS[:3]


def test_head_gives_exact_bytes_and_lines(inputs):
    got = head([inputs["plain"]], 3)
    lines = inputs["plain"].read_bytes().split(b"\n")
    for p in got:
        assert lines[p.line - 1] == p.raw  # the line number names the record in the file
    assert [p.line for p in got] == [1, 3, 4]  # a blank line after the first record


def test_head_pretty_and_several_inputs(inputs, tmp_path):
    r = run_cli("head", inputs["plain"], inputs["gzip"], "-n", "2", "--pretty")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count('"i": 0') == 1 and "\n  " in r.stdout.decode()
    assert head([inputs["plain"], inputs["gzip"]], 201)[-1].source.endswith("a.jsonl.gz")


@pytest.mark.parametrize("fmt", ["plain", "zstd", "array", "parquet"])
def test_sample_is_deterministic_and_in_input_order(inputs, fmt):
    a = sample([inputs[fmt]], 20, seed=7)
    b = sample([inputs[fmt]], 20, seed=7)
    c = sample([inputs[fmt]], 20, seed=8)
    assert a == b and a != c and len(a) == 20
    idx = [orjson.loads(p.raw)["i"] for p in a]
    assert idx == sorted(idx) and len(set(idx)) == 20
    r1 = run_cli("sample", inputs[fmt], "-n", "20", "--seed", "7")
    r2 = run_cli("sample", inputs[fmt], "-n", "20", "--seed", "7")
    assert r1.returncode == 0 and r1.stdout == r2.stdout
    assert [orjson.loads(x)["i"] for x in r1.stdout.splitlines()] == idx


def test_sample_is_uniform_over_records_across_inputs(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_jsonl(RECORDS[:50]))
    b.write_bytes(_jsonl(RECORDS[50:]))
    counts = collections.Counter()
    trials = 2000
    for seed in range(trials):
        for p in sample([a, b], 10, seed=seed):
            counts[orjson.loads(p.raw)["i"]] += 1
    expected = trials * 10 / 200  # 100 per record
    assert set(counts) == set(range(200))
    quarters = [sum(counts[i] for i in range(q * 50, (q + 1) * 50)) for q in range(4)]
    for q in quarters:  # each quarter: 5000 expected; a biased sampler misses by far more than 5%
        assert abs(q - 50 * expected) < 0.05 * 50 * expected, quarters
    assert max(counts.values()) < 2 * expected and min(counts.values()) > expected / 2


def test_sample_smaller_input_than_n_gives_everything(inputs):
    got = sample([inputs["plain"]], 1000, seed=1)
    assert [orjson.loads(p.raw) for p in got] == RECORDS


def test_bad_n_and_missing_input_are_clear_errors(inputs, tmp_path):
    with pytest.raises(UsageError):
        sample([inputs["plain"]], 0)
    r = run_cli("sample", inputs["plain"], "-n", "0")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    r = run_cli("head", tmp_path / "missing.jsonl")
    assert r.returncode == 3 and b"missing.jsonl" in r.stderr and b"Traceback" not in r.stderr


def test_head_stops_reading_early(tmp_path: Path):
    """head -n 1 on a file whose tail is not JSON Lines at all: never read that far."""
    src = tmp_path / "big.jsonl"
    src.write_bytes(b'{"a":1}\n' + b"x" * (64 << 20))  # one 64 MiB line after the first record
    r = run_cli("head", src, "-n", "1")
    assert r.returncode == 0 and r.stdout == b'{"a":1}\n'


def test_a_broken_json_array_names_its_file(tmp_path: Path):
    """head said 'unterminated array: ...' without the file (validate names it)."""
    bad = tmp_path / "cut.json"
    bad.write_bytes(b'[{"text": "a"}, {"text": "b"')
    for args in (["head", bad], ["sample", bad, "-n", "1"]):
        r = run_cli(*args)
        assert r.returncode == 1 and r.stderr.startswith(f"shardkit: error: {bad}: unterminated array".encode()), r.stderr
