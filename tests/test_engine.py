"""--engine local|ray: one task per input, merged into exactly the single-process run's files.

Ray runs for real: a local runtime with 2 CPUs started by this module (ray.init), and once
through the CLI as a user would start it."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import orjson
import pytest
from conftest import make_chat_jsonl, run_cli

from shardkit.check import CheckOptions
from shardkit.engine import PARTS_DIR, split_many
from shardkit.shard import SplitOptions, split


def _inputs(tmp_path: Path) -> list[Path]:
    """Four inputs: plain, gzip, one with blank and invalid lines, two with the same stem."""
    d = tmp_path / "in"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    p1 = d / "a" / "chat.jsonl"
    make_chat_jsonl(p1, 700, seed=1, max_len=400)
    p2 = d / "b" / "chat.jsonl.gz"
    p2.write_bytes(gzip.compress(make_chat_jsonl(d / "tmp.jsonl", 333, seed=2, max_len=400)))
    (d / "tmp.jsonl").unlink()
    p3 = d / "mixed.jsonl"
    data = make_chat_jsonl(p3, 410, seed=3, max_len=300)
    lines = data.splitlines(keepends=True)
    lines[5:5] = [b"\n", b'{"prompt": 1}\n', b"not json\n", b"   \n"]
    p3.write_bytes(b"".join(lines))
    p4 = d / "small.jsonl"
    make_chat_jsonl(p4, 3, seed=4)
    return [p1, p2, p3, p4]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _same_run(a: Path, b: Path) -> None:
    """Every file byte for byte; the manifest too, except its created_at line."""
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        if name == "manifest.json":
            strip = re.compile(rb'"created_at": "[^"]*"')
            assert strip.sub(b"", fa[name]) == strip.sub(b"", fb[name])
        else:
            assert fa[name] == fb[name], name
    assert not (b / PARTS_DIR).exists()


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="the ray extra (make test installs it)")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


OPTS = dict(max_records=128, check=CheckOptions.from_spec("chat"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_engines_write_the_single_process_files(tmp_path: Path, ray_runtime, fmt: str):
    inputs = _inputs(tmp_path)
    options = SplitOptions(**OPTS, format=fmt)
    one = split(inputs, tmp_path / "one", options)
    assert one.counts["rejected"] == 2 and one.counts["blank"] == 2
    local = split_many(inputs, tmp_path / "local", options, engine="local", jobs=2)
    ray_ = split_many(inputs, tmp_path / "ray", options, engine="ray", jobs=2)
    _same_run(tmp_path / "one", tmp_path / "local")
    _same_run(tmp_path / "local", tmp_path / "ray")
    for r in (local, ray_):
        assert r.counts == one.counts
        assert r.validation.to_dict() == one.validation.to_dict()
    m = orjson.loads((tmp_path / "ray" / "manifest.json").read_bytes())
    names = [f["path"] for f in m["files"]]
    assert names[0].startswith("chat-") and any(n.startswith("chat_2-") for n in names)
    assert m["counts"]["read"] == m["counts"]["written"] + m["counts"]["rejected"] + m["counts"]["blank"]
    assert run_cli("verify", tmp_path / "ray").returncode == 0


def test_a_killed_worker_resumes_to_the_same_files(tmp_path: Path):
    inputs = _inputs(tmp_path)
    args = ["split", *inputs, "-o", tmp_path / "out", "-n", "64", "--validate", "chat"]
    r = run_cli(*args, "--engine", "local", "-j", "2", env={"SHARDKIT_FAULT": "after:shard_commit:3"})
    assert r.returncode == 3, r.stderr
    assert b"worker process died" in r.stderr and b"Traceback" not in r.stderr
    assert (tmp_path / "out" / PARTS_DIR).is_dir() and not (tmp_path / "out" / "manifest.json").exists()
    again = run_cli(*args, "--engine", "local", "-j", "2")
    assert again.returncode == 4 and b"--resume" in again.stderr
    ok = run_cli(*args, "--engine", "local", "-j", "2", "--resume")
    assert ok.returncode == 0, ok.stderr
    assert run_cli(*args[:-4], "-o", tmp_path / "one", "-n", "64", "--validate", "chat").returncode == 0
    _same_run(tmp_path / "one", tmp_path / "out")


@pytest.mark.parametrize("fault", ["after:merge_move:3", "before:merge_manifest:1", "after:merge_manifest:1"])
def test_a_merge_killed_anywhere_finishes_on_resume(tmp_path: Path, fault: str):
    inputs = _inputs(tmp_path)
    args = ["split", *inputs, "-o", tmp_path / "out", "-n", "64", "--validate", "chat", "--engine", "local", "-j", "2"]
    r = run_cli(*args, env={"SHARDKIT_FAULT": fault})
    assert r.returncode == -9, r.stderr
    ok = run_cli(*args, "--resume")
    assert ok.returncode == 0, ok.stderr
    assert run_cli("split", *inputs, "-o", tmp_path / "one", "-n", "64", "--validate", "chat").returncode == 0
    _same_run(tmp_path / "one", tmp_path / "out")


def test_overwrite_of_an_interrupted_engine_run_starts_clean(tmp_path: Path):
    inputs = _inputs(tmp_path)
    args = ["split", *inputs, "-o", tmp_path / "out", "-n", "64", "--engine", "local", "-j", "2"]
    assert run_cli(*args, env={"SHARDKIT_FAULT": "after:merge_move:5"}).returncode == -9
    ok = run_cli(*args[:-6], "-o", tmp_path / "out", "-n", "100", "--engine", "local", "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert run_cli("split", *inputs, "-o", tmp_path / "one", "-n", "100").returncode == 0
    _same_run(tmp_path / "one", tmp_path / "out")


def test_engine_refuses_stdin_and_cross_input_options(tmp_path: Path):
    p = tmp_path / "x.jsonl"
    make_chat_jsonl(p, 5)
    r = run_cli("split", "-", "-o", tmp_path / "o", "-n", "2", "--engine", "local", input=p.read_bytes())
    assert r.returncode == 2 and b"stdin" in r.stderr
    r = run_cli("split", p, "-o", tmp_path / "o", "-n", "2", "--engine", "local", "--shuffle")
    assert r.returncode == 2 and b"--engine" in r.stderr
    r = run_cli("split", p, "-o", tmp_path / "o", "-n", "2", "--engine", "spark")
    assert r.returncode == 2 and b"local, ray" in r.stderr


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_validate_engine_gives_the_same_report_and_rejects(tmp_path: Path, engine: str):
    if engine == "ray":
        pytest.importorskip("ray")
    inputs = _inputs(tmp_path)
    base = ["validate", *inputs, "--kind", "chat", "--json"]
    one = run_cli(*base, "--rejects", tmp_path / "one.jsonl")
    many = run_cli(*base, "--rejects", tmp_path / "many.jsonl", "--engine", engine, "-j", "2")
    assert one.returncode == many.returncode == 1, many.stderr
    a, b = orjson.loads(one.stdout), orjson.loads(many.stdout)
    assert a.pop("rejects").endswith("one.jsonl") and b.pop("rejects").endswith("many.jsonl")
    assert a == b
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "many.jsonl").read_bytes()
    assert len((tmp_path / "many.jsonl").read_bytes().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shardkit")]


def test_stats_engine_gives_the_same_report(tmp_path: Path):
    inputs = _inputs(tmp_path)
    dup = tmp_path / "in" / "dup.jsonl"
    dup.write_bytes((tmp_path / "in" / "small.jsonl").read_bytes())  # duplicates across files
    one = run_cli("stats", *inputs, dup, "--json")
    many = run_cli("stats", *inputs, dup, "--json", "--engine", "local", "-j", "2")
    assert one.returncode == many.returncode == 0, many.stderr
    a, b = orjson.loads(one.stdout), orjson.loads(many.stdout)
    assert a == b
    assert a["total"]["files"] == 5 and [i["path"] for i in b["inputs"]] == [str(p) for p in [*inputs, dup]]
    assert a["total"]["duplicates"]["records"] >= 3  # small.jsonl and dup.jsonl: seen across tasks
