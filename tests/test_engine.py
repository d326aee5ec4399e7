"""--engine local|ray: one task per input, merged into exactly the single-process run's files.

Ray runs for real: a local runtime with 2 CPUs started by this module (ray.init), and once
through the CLI as a user would start it."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import orjson
import pytest
from conftest import make_chat_jsonl, run_cli

from shardkit.pipeline.driver import split
from shardkit.pipeline.engine import PARTS_DIR, split_many
from shardkit.pipeline.shard import SplitOptions
from shardkit.records.check import CheckOptions


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
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
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


def test_engine_refuses_stdin_and_takes_cross_input_options(tmp_path: Path):
    p = tmp_path / "x.jsonl"
    make_chat_jsonl(p, 5)
    for extra in ([], ["--shuffle"]):
        r = run_cli("split", "-", "-o", tmp_path / "o", "-n", "2", "--engine", "local", *extra, input=p.read_bytes())
        assert r.returncode == 2 and b"stdin" in r.stderr
        assert not (tmp_path / "o").exists()
    # options that work across inputs compose with an engine (tests/test_matrix.py checks every cell)
    r = run_cli("split", p, "-o", tmp_path / "o", "-n", "2", "--engine", "local", "--shuffle")
    assert r.returncode == 0, r.stderr
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


# ---- found in review: each of these once lost data or told a wrong story


@pytest.mark.parametrize("engine", [None, "local"])
def test_overwrite_never_deletes_an_input_of_the_run(tmp_path: Path, engine):
    src = tmp_path / "a.jsonl"
    make_chat_jsonl(src, 30, seed=5)
    assert run_cli("split", src, "-o", tmp_path / "o", "-n", "100").returncode == 0
    shard = tmp_path / "o" / "a-00000.jsonl"
    before = shard.read_bytes()
    extra = ["--engine", engine] if engine else []
    r = run_cli("split", shard, "-o", tmp_path / "o", "-n", "10", "--overwrite", *extra)
    assert r.returncode == 4 and b"would delete" in r.stderr, r.stderr
    assert shard.read_bytes() == before and (tmp_path / "o" / "manifest.json").exists()


def test_engine_refuses_two_inputs_with_one_shard_name_before_moving_anything(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    make_chat_jsonl(a, 5, seed=1)
    make_chat_jsonl(b, 5, seed=2)
    # refused before anything is made: the same file twice, or names without {stem}
    for files, says in (([a, a], b"given twice"), ([a, b], b"the same shard names (x-0.jsonl); put {stem} in it")):
        for engine in (["--engine", "local"], []):
            out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
            r = run_cli("split", *files, "-o", out, "-n", "2", "--name", "x-{index}.jsonl", *engine)
            assert r.returncode == 2 and says in r.stderr, r.stderr
            assert not out.exists()


def test_engine_resume_checks_inputs_and_options(tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    make_chat_jsonl(a, 20, seed=1)
    make_chat_jsonl(b, 20, seed=2)
    out = tmp_path / "o"
    assert run_cli("split", a, b, "-o", out, "-n", "5", "--engine", "local").returncode == 0
    r = run_cli("split", a, "-o", out, "-n", "7", "--engine", "local", "--resume")
    assert r.returncode == 4 and b"options differ" in r.stderr
    r = run_cli("split", a, "-o", out, "-n", "5", "--engine", "local", "--resume")
    assert r.returncode == 4 and b"inputs differ" in r.stderr
    # interrupted mid-merge, then resumed with fewer inputs: refused, nothing left unlisted
    out2 = tmp_path / "o2"
    assert run_cli("split", a, b, "-o", out2, "-n", "5", "--engine", "local",
                   env={"SHARDKIT_FAULT": "after:merge_move:5"}).returncode == -9
    r = run_cli("split", a, "-o", out2, "-n", "5", "--engine", "local", "--resume")
    assert r.returncode == 4 and b"inputs differ" in r.stderr
    assert run_cli("split", a, b, "-o", out2, "-n", "5", "--engine", "local", "--resume").returncode == 0
    assert run_cli("verify", out2, "--json").returncode == 0
    assert orjson.loads(run_cli("verify", out2, "--json").stdout)["not_in_manifest"] == []


def test_a_plain_run_does_not_ignore_an_interrupted_engine_run(tmp_path: Path):
    inputs = _inputs(tmp_path)
    out = tmp_path / "o"
    assert run_cli("split", *inputs, "-o", out, "-n", "64", "--engine", "local", "-j", "2",
                   env={"SHARDKIT_FAULT": "before:merge_manifest:1"}).returncode == -9
    r = run_cli("split", *inputs, "-o", out, "-n", "64")
    assert r.returncode == 4 and b"--engine" in r.stderr
    ok = run_cli("split", *inputs, "-o", out, "-n", "64", "--overwrite")
    assert ok.returncode == 0, ok.stderr
    assert not (out / PARTS_DIR).exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert run_cli("split", *inputs, "-o", tmp_path / "one", "-n", "64").returncode == 0
    _same_run(tmp_path / "one", out)


def test_reserved_rejects_name_is_refused_before_any_write(tmp_path: Path):
    src = tmp_path / "a.jsonl"
    make_chat_jsonl(src, 5)
    for extra in ([], ["--engine", "local"]):
        r = run_cli("split", src, "-o", tmp_path / "o", "-n", "2", "--rejects", "manifest.json", *extra)
        assert r.returncode == 2 and not (tmp_path / "o").exists(), r.stderr


def test_ray_driver_settings_last_only_for_init_and_never_override_the_user(monkeypatch):
    from shardkit.pipeline.engine import _driver_env

    monkeypatch.delenv("SHARDKIT_TEST_A", raising=False)
    monkeypatch.setenv("SHARDKIT_TEST_B", "user")
    with _driver_env({"SHARDKIT_TEST_A": "0", "SHARDKIT_TEST_B": "0"}):
        assert os.environ["SHARDKIT_TEST_A"] == "0"
        assert os.environ["SHARDKIT_TEST_B"] == "user"
    assert "SHARDKIT_TEST_A" not in os.environ
    assert os.environ["SHARDKIT_TEST_B"] == "user"


def test_this_sessions_record_stages_write_the_same_files_on_ray(tmp_path: Path, ray_runtime):
    """--near-dedup, --decontaminate and --tokenize --pack are record stages: on ray the
    plan runs as one task and writes exactly the inline run's files (issues 21, 23)."""
    pytest.importorskip("datasketch")
    pytest.importorskip("tokenizers")
    from chatmodel import make_model

    from shardkit.pipeline.transform import PipelineOptions

    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 300, seed=11, max_len=300)
    lines = data.splitlines(keepends=True)
    src.write_bytes(b"".join(lines) + b"".join(lines[:20]))  # copies for near-dedup to find
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_bytes(b"".join(lines[100:110]))
    model = make_model(tmp_path / "model")
    plans = {
        "filters": PipelineOptions(split=SplitOptions(max_records=80), near_dedup=0.8, decontaminate=(str(eval_file),)),
        "tokens": PipelineOptions(split=SplitOptions(max_records=20, format="parquet", parquet=_parquet()),
                                  tokenize=str(model), seq_len=4096, overflow="truncate", pack=True),
    }
    for name, plan in plans.items():
        inline = split([str(src)], tmp_path / f"{name}-inline", plan)
        on_ray = split([str(src)], tmp_path / f"{name}-ray", plan, engine="ray", jobs=2)
        assert inline.manifest["counts"] == on_ray.manifest["counts"]
        _same_run(tmp_path / f"{name}-inline", tmp_path / f"{name}-ray")
    from shardkit.records.ngrams import record_words

    long_enough = sum(1 for line in lines[100:110] if len(record_words(orjson.loads(line))) >= 13)
    m = orjson.loads((tmp_path / "filters-ray" / "manifest.json").read_bytes())
    assert m["counts"]["duplicates"] >= 20  # the 20 copies (exact, so near too)
    assert m["counts"]["excluded"] >= long_enough > 0  # each eval record long enough to have a 13-gram


def _parquet():
    from shardkit.pipeline.parquet import ParquetOptions

    return ParquetOptions()
