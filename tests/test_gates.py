"""Runs that must not be published as complete: an empty input, or one whose records are all
set aside, exits 1 with "no records" unless --allow-empty (issue 17.10), on every path."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import run_cli

BAD = b'{"messages":[{"role":"bot","content":"x"}]}\n'
DRIVERS = {
    "streaming": [],
    "engine": ["--engine", "local", "-j", "2"],
    "records": ["--shuffle"],
    "parquet": ["--format", "parquet", "--holdout", "0.5"],
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("data", [b"", b"\n\n", BAD * 3], ids=["empty", "blank", "all-rejected"])
def test_a_run_that_writes_no_record_exits_1_and_stays_incomplete(tmp_path: Path, driver: str, data: bytes):
    src = tmp_path / "in.jsonl"
    src.write_bytes(data)
    out = tmp_path / "out"
    r = run_cli("split", src, "-o", out, "-n", "10", "--validate", "chat", *DRIVERS[driver])
    assert r.returncode == 1, r.stderr
    assert b"no records written" in r.stderr and b"--allow-empty" in r.stderr
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["complete"] is False and "no records written" in m["failed"]
    assert m["files"] == []
    if data == BAD * 3:  # what was set aside is kept and listed, never lost
        assert m["counts"]["rejected"] == 3
        assert (out / m["rejects"]["path"]).read_bytes().count(b"\n") == 3
    # a rerun must choose: --overwrite replaces it, --allow-empty accepts it
    ok = run_cli("split", src, "-o", out, "-n", "10", "--validate", "chat", *DRIVERS[driver], "--overwrite",
                 "--allow-empty")
    assert ok.returncode == 0, ok.stderr
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["complete"] is True and "failed" not in m
    assert run_cli("verify", out).returncode == 0


def test_one_empty_input_among_others_is_fine(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "good.jsonl").write_bytes(b'{"text":"a"}\n')
    for extra in ([], ["--engine", "local", "-j", "2"]):
        out = tmp_path / f"out{len(extra)}"
        r = run_cli("split", tmp_path / "empty.jsonl", tmp_path / "good.jsonl", "-o", out, "-n", "10", *extra)
        assert r.returncode == 0, r.stderr
        assert orjson.loads((out / "manifest.json").read_bytes())["counts"]["written"] == 1


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--rejects", "in-00001.jsonl"], "in-00001.jsonl"),  # the 2nd shard's name
        (["--rejects", "SHA256SUMS"], "SHA256SUMS"),
        (["--rejects", "in-00001.jsonl", "--engine", "local"], "in-00001.jsonl"),
        (["--rejects", "part-validation-00000.jsonl", "--shuffle", "--holdout", "0.3"], "part-validation-00000.jsonl"),
        (["--rejects", "x-7.parquet", "--name", "x-{index}.parquet", "--format", "parquet", "--dedup", "exact"], "x-7.parquet"),
    ],
)
def test_a_rejects_name_a_shard_could_take_is_refused_before_anything_is_written(tmp_path: Path, args, name):
    """Issue 17.4: it failed only at the end, leaving partial output --resume could not continue."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b'{"text":"%d"}\n' % i for i in range(40)) + BAD)
    out = tmp_path / "out"
    r = run_cli("split", src, "-o", out, "-n", "5", "--validate", "text", *args)
    assert r.returncode == 2, r.stderr
    assert name.encode() in r.stderr and b"choose another name" in r.stderr
    assert not out.exists()


def test_split_streams_a_json_array_one_compact_record_a_line(tmp_path: Path):
    """Issue 17.6: split of an alpaca .json array was refused (validate and stats read it)."""
    import json

    records = [{"instruction": f"q {i} é", "input": "", "output": f"a\\n{i}", "n": 1.50, "big": 12345678901234567890}
               for i in range(30)]
    text = json.dumps(records, indent=2, ensure_ascii=False)
    text = text.replace('"n": 1.5', '"n": 1.50')  # a number written its own way stays as written
    src = tmp_path / "alpaca.json"
    src.write_text(text)
    for extra in ([], ["--engine", "local"], ["--shuffle"]):
        out = tmp_path / f"out{len(extra)}"
        r = run_cli("split", src, "-o", out, "-n", "7", "--validate", "alpaca", *extra)
        assert r.returncode == 0, r.stderr
        m = orjson.loads((out / "manifest.json").read_bytes())
        assert m["sources"][0]["container"] == "json-array"
        lines = [line for f in m["files"] for line in (out / f["path"]).read_bytes().splitlines()]
        assert len(lines) == 30 and all(b"\n" not in x and b"  " not in x for x in lines)
        assert b'"n":1.50' in lines[0] and b'"big":12345678901234567890' in lines[0]  # numbers unchanged
        assert "é" in lines[0].decode()  # strings unchanged
        if not extra:
            assert [json.loads(x) for x in lines] == json.loads(text)
            starts = [i + 1 for i, line in enumerate(text.split("\n")) if line == "  {"]
            assert [f["first_line"] for f in m["files"]] == starts[::7]  # where each item starts
    assert run_cli("verify", tmp_path / "out0").returncode == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_rejects_path_outside_out(tmp_path: Path, driver: str):
    """Issue 17.5: `split --rejects PATH` anywhere (a bare name still means inside OUT); the
    manifest records where they went; not in SHA256SUMS; must not exist yet (exit 4);
    --overwrite never deletes it."""
    import subprocess

    src = tmp_path / "in.jsonl"
    good = b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a %d"}]}\n'
    src.write_bytes(b"".join(good.replace(b"%d", str(i).encode()) for i in range(30)) + BAD * 4)
    aside = tmp_path / "aside"
    aside.mkdir()
    rej = aside / "bad.jsonl"
    out = tmp_path / "out"
    args = ["split", src, "-o", out, "-n", "10", "--validate", "chat", *DRIVERS[driver]]
    r = run_cli(*args, "--rejects", rej)
    assert r.returncode == 0, r.stderr
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["rejects"]["path"] == str(rej) and m["rejects"]["records"] == 4
    assert rej.read_bytes().count(b"\n") == 4 and not (out / "bad.jsonl").exists()
    assert b"bad.jsonl" not in (out / "SHA256SUMS").read_bytes()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
    assert run_cli("verify", out).returncode == 0
    again = run_cli(*args, "--rejects", rej, "--overwrite")
    assert again.returncode == 4 and b"already exists" in again.stderr  # never replaced
    assert rej.read_bytes().count(b"\n") == 4
    moved = aside / "bad2.jsonl"
    again = run_cli(*args, "--rejects", moved, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert rej.exists() and moved.exists()  # the old run's rejects outside OUT were not deleted
    r = run_cli(*args[:3], tmp_path / "out2", *args[4:], "--rejects", tmp_path / "nope" / "x.jsonl")
    assert r.returncode == 3 and b"no such folder" in r.stderr


# ---------------------------------------------------------------- quality gates (issue 18.1)

GOOD = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'


def _mixed(tmp_path: Path, good: int, bad: int) -> Path:
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(GOOD * good + BAD * bad)
    return src


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("gate", [["--max-errors", "3"], ["--max-reject-ratio", "0.25"]], ids=["errors", "ratio"])
def test_split_over_a_quality_gate_exits_1_and_never_publishes_a_complete_manifest(tmp_path: Path, driver, gate):
    src = _mixed(tmp_path, good=6, bad=4)  # 4 rejected of 10: over 3 errors and over 25%
    out = tmp_path / "out"
    r = run_cli("split", src, "-o", out, "-n", "3", "--validate", "chat", *gate, *DRIVERS[driver])
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert len([x for x in err.splitlines() if x.startswith("shardkit: error:")]) == 1 and "Traceback" not in err
    want = "more than --max-errors 3" if gate[0] == "--max-errors" else "4 of 10 record(s) rejected (40.0%), more than --max-reject-ratio 0.25"
    assert want in err
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["complete"] is False and want in m["failed"]
    assert "resume" not in m  # nothing to continue: fix the data, then --overwrite
    c = m["counts"]  # every record still accounted for, every reject kept to look at
    assert (c["read"], c["written"], c["rejected"]) == (10, 6, 4)
    assert (out / m["rejects"]["path"]).read_bytes().count(b"\n") == 4


@pytest.mark.parametrize("gate", [["--max-errors", "4"], ["--max-reject-ratio", "0.4"]], ids=["errors", "ratio"])
def test_split_at_the_gate_passes(tmp_path: Path, gate):
    src = _mixed(tmp_path, good=6, bad=4)
    r = run_cli("split", src, "-o", tmp_path / "out", "-n", "3", "--validate", "chat", *gate)
    assert r.returncode == 0, r.stderr
    assert orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())["complete"] is True


def test_split_gates_come_from_the_environment(tmp_path: Path):
    src = _mixed(tmp_path, good=6, bad=4)
    r = run_cli("split", src, "-o", tmp_path / "out", "-n", "3", "--validate", "chat",
                env={"SHARDKIT_MAX_REJECT_RATIO": "0.1"})
    assert r.returncode == 1 and b"more than --max-reject-ratio 0.1" in r.stderr


@pytest.mark.parametrize("bad,args,code", [
    (1, [], 1),                                   # default: no invalid record allowed
    (4, ["--max-errors", "4"], 0),
    (4, ["--max-reject-ratio", "0.5"], 0),       # the ratio alone: no count limit
    (4, ["--max-reject-ratio", "0.3"], 1),
    (4, ["--max-reject-ratio", "0.5", "--max-errors", "2"], 1),
])
def test_validate_gates(tmp_path: Path, bad, args, code):
    src = _mixed(tmp_path, good=6, bad=bad)
    r = run_cli("validate", src, "--kind", "chat", *args)
    assert r.returncode == code, (r.stdout, r.stderr)
    if code:
        assert b"failed the quality gate" in r.stdout
    j = run_cli("validate", src, "--kind", "chat", "--json", *args)
    doc = orjson.loads(j.stdout)
    assert j.returncode == code and doc["ok"] is (code == 0) and (doc["failed"] is None) is (code == 0)


def test_ingest_quarantines_a_mostly_bad_drop_even_when_stripping(tmp_path: Path):
    from shardkit.queue.ingest import ingest
    from shardkit.queue.state import Queue

    root = tmp_path / "q"
    Queue(root, create=True)
    (root / "shardkit.toml").write_text('kind = "chat"\non_invalid = "strip"\n')
    q = Queue(root)
    assert q.settings.max_reject_ratio == 0.5  # the default
    for name, data in (("mostly-bad.jsonl", GOOD * 2 + BAD * 3), ("some-bad.jsonl", GOOD * 3 + BAD * 2)):
        (q.dir("inbox") / name).write_bytes(data)
        import os
        import time

        os.utime(q.dir("inbox") / name, (time.time() - 3600,) * 2)
    result = {r.name: r for r in ingest(q).routed}
    assert result["mostly-bad.jsonl"].to == "quarantine"
    assert "3 of 5 record(s) invalid (60.0%), more than max_reject_ratio 0.5" in result["mostly-bad.jsonl"].reason
    report = orjson.loads((q.dir("quarantine") / "mostly-bad.jsonl.report.json").read_bytes())
    assert "max_reject_ratio" in report["reason"]
    assert result["some-bad.jsonl"].to == "split"  # 40%: stripped, the good records go on
    # the flag beats the file: a stricter ratio quarantines the next such drop
    (q.dir("inbox") / "again.jsonl").write_bytes(GOOD * 3 + BAD * 2)
    os.utime(q.dir("inbox") / "again.jsonl", (time.time() - 3600,) * 2)
    r = run_cli("queue", "ingest", "--root", root, "--max-reject-ratio", "0.3", "--json")
    assert r.returncode == 0, r.stderr
    routed = orjson.loads(r.stdout)["routed"]
    assert [x["to"] for x in routed] == ["quarantine"]
