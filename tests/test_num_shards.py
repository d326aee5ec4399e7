"""--num-shards N over several inputs means N shards in total (issue 18.8): balanced by
record count over the inputs taken together, in order; shards may span inputs (named
part-NNNNN); one input keeps {stem}-NNNNN. Crash-safe like every split."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import run_cli
from crashkit import final_files, run_with_fault


def _inputs(tmp_path: Path, sizes=(10, 5, 7)) -> list[Path]:
    paths, k = [], 0
    for j, n in enumerate(sizes):
        p = tmp_path / f"in{j}.jsonl"
        p.write_bytes(b"".join(orjson.dumps({"text": "x" * (1 + i % 5), "i": k + i}) + b"\n" for i in range(n)))
        paths.append(p)
        k += n
    return paths


def _records(out: Path) -> tuple[list[int], list[dict]]:
    m = orjson.loads((out / "manifest.json").read_bytes())
    if m["params"]["format"] == "parquet":
        import pyarrow.parquet as pq

        return [r["i"] for f in m["files"] for r in pq.read_table(out / f["path"]).to_pylist()], m
    data = b"".join((out / f["path"]).read_bytes() for f in m["files"])
    return [orjson.loads(x)["i"] for x in data.splitlines()], m


@pytest.mark.parametrize("extra", [[], ["--engine", "local", "-j", "2"], ["--validate", "auto"], ["--format", "parquet"]])
def test_n_shards_in_total_over_the_inputs_taken_together(tmp_path: Path, extra):
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    r = run_cli("split", *inputs, "-o", out, "--num-shards", "4", *extra)
    assert r.returncode == 0, r.stderr
    got, m = _records(out)
    assert got == list(range(22))  # every record, in input order
    ext = "parquet" if "parquet" in extra else "jsonl"
    assert [f["path"] for f in m["files"]] == [f"part-{i:05d}.{ext}" for i in range(4)]
    assert [f["records"] for f in m["files"]] == [6, 6, 5, 5]  # balanced: 22 = 6 + 6 + 5 + 5
    spans = [f for f in m["files"] if "last_source" in f]
    assert spans and all(f["source"] != f["last_source"] for f in spans)
    assert m["counts"]["read"] == m["counts"]["written"] == 22
    assert run_cli("verify", out).returncode == 0


def test_engine_and_inline_write_the_same_bytes(tmp_path: Path):
    inputs = _inputs(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("split", *inputs, "-o", a, "--num-shards", "3").returncode == 0
    assert run_cli("split", *inputs, "-o", b, "--num-shards", "3", "--engine", "local").returncode == 0
    fa, fb = final_files(a), final_files(b)
    ma, mb = orjson.loads(fa.pop("manifest.json")), orjson.loads(fb.pop("manifest.json"))
    assert fa == fb and {**ma, "created_at": 0} == {**mb, "created_at": 0}


def test_one_input_keeps_its_stem(tmp_path: Path):
    [src] = _inputs(tmp_path, sizes=(9,))
    out = tmp_path / "out"
    assert run_cli("split", src, "-o", out, "--num-shards", "2").returncode == 0
    _, m = _records(out)
    assert [f["path"] for f in m["files"]] == ["in0-00000.jsonl", "in0-00001.jsonl"]


def test_fewer_records_than_shards_warns_once(tmp_path: Path):
    inputs = _inputs(tmp_path, sizes=(1, 1))
    r = run_cli("split", *inputs, "-o", tmp_path / "out", "--num-shards", "5")
    assert r.returncode == 0 and b"only 2 record(s) in all inputs; writing 2 shard(s) instead of 5" in r.stderr


@pytest.mark.parametrize("fault", ["after:shard_commit:1", "after:shard_commit:2", "after:input_done:1",
                                   "after:input_done:2", "after:manifest_write:3"])
def test_killed_and_resumed_gives_the_same_files(tmp_path: Path, fault):
    inputs = _inputs(tmp_path)
    ref = tmp_path / "ref"
    assert run_cli("split", *inputs, "-o", ref, "--num-shards", "4").returncode == 0
    out = tmp_path / "out"
    killed = run_with_fault(["split", *inputs, "-o", out, "--num-shards", "4"], fault)
    assert killed.returncode != 0
    r = run_cli("split", *inputs, "-o", out, "--num-shards", "4", "--resume")
    assert r.returncode == 0, r.stderr
    fr, fo = final_files(ref), final_files(out)
    mr, mo = orjson.loads(fr.pop("manifest.json")), orjson.loads(fo.pop("manifest.json"))
    assert fr == fo and {**mr, "created_at": 0} == {**mo, "created_at": 0}


def test_a_shard_spanning_two_inputs_is_shown_with_both(tmp_path: Path):
    """The summary printed 'lines 2251-375' for a shard from day1:2251 to day2:375."""
    days = []
    for d in range(3):
        p = tmp_path / f"day{d + 1}.jsonl"
        p.write_bytes(b"".join(b'{"text": "d%d r%d"}\n' % (d, i) for i in range(3000)))
        days.append(p)
    r = run_cli("split", *days, "-o", tmp_path / "o", "--num-shards", "8")
    assert r.returncode == 0, r.stderr
    assert b"day1.jsonl:2251 to day2.jsonl:375" in r.stdout, r.stdout
    entry = orjson.loads((tmp_path / "o" / "manifest.json").read_bytes())["files"][2]
    assert (entry["first_line"], entry["last_line"], entry["last_source"].endswith("day2.jsonl")) == (2251, 375, True)
