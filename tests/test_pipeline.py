"""The training-ready pipeline: shuffle, holdout, dedup, exclude, --to chat; conservation; crash safety."""

from __future__ import annotations

import base64
import fcntl
import gzip
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, expected_records, make_chat_jsonl
from crashkit import final_files, seeded_delays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardkit.core.errors import ConflictError, DataError, UsageError
from shardkit.pipeline import transform as pl
from shardkit.pipeline.overlap import find_overlap, record_hash
from shardkit.pipeline.run import run_pipeline
from shardkit.pipeline.shard import SplitOptions
from shardkit.pipeline.transform import TEMP_DIR, PipelineOptions, holdout_split
from shardkit.records.check import CheckOptions
from shardkit.records.validate import Validator
from shardkit.store.manifest import verify


def _load_mixed():
    spec = importlib.util.spec_from_file_location("shardkit_fixture_mixed", ROOT / "fixtures" / "mixed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mixed = _load_mixed()
REAL_TRAIN = ROOT.parent / "shared" / "realdata" / "train.jsonl"


def options(split: dict | None = None, **kw) -> PipelineOptions:
    return PipelineOptions(split=SplitOptions(**(split or {"max_records": 100})), **kw)


def run(inputs, out, split: dict | None = None, *, resume=False, overwrite=False, dry_run=False, **kw):
    return run_pipeline([Path(p) for p in inputs], out, options(split, **kw), resume=resume,
                        overwrite=overwrite, dry_run=dry_run)


def manifest_of(out: Path) -> dict:
    return orjson.loads((out / "manifest.json").read_bytes())


def shard_lines(out: Path, split: str | None = None) -> list[bytes]:
    m = manifest_of(out)
    return [line for f in m["files"] if split in (None, f["split"])
            for line in nonblank((out / f["path"]).read_bytes())]


def side(out: Path, name: str) -> list[dict]:
    path = out / name
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def side_raw(entry: dict) -> bytes:
    body = entry["raw"].encode() if "raw" in entry else base64.b64decode(entry["raw_b64"])
    return body + b"\n"


def nonblank(data: bytes) -> list[bytes]:
    """The records (non-blank lines) as the shards must hold them; split on \\n only (CR stays)."""
    return [line + b"\n" for line in expected_records(data).split(b"\n")[:-1]]


def without_time(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created_at"}


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipe")
    a, b = base / "a.jsonl", base / "b.jsonl"
    make_chat_jsonl(a, 600, seed=1, max_len=600)
    make_chat_jsonl(b, 400, seed=2, max_len=600)
    return base, a, b


# ---------------------------------------------------------------- shuffle


SHUFFLE = {"shuffle": True, "shuffle_memory": 64 * 1024}


def test_same_seed_gives_byte_identical_output(two_inputs, tmp_path):
    _, a, b = two_inputs
    for name in ("one", "two"):
        run([a, b], tmp_path / name, {"max_records": 150}, seed=7, holdout=0.2, dedup="exact", **SHUFFLE)
    one, two = final_files(tmp_path / "one"), final_files(tmp_path / "two")
    assert sorted(one) == sorted(two)
    for name in one:
        if name == "manifest.json":
            assert without_time(orjson.loads(one[name])) == without_time(orjson.loads(two[name]))
        else:
            assert one[name] == two[name], name
    assert manifest_of(tmp_path / "one")["shuffle"]["seed"] == 7
    assert verify(tmp_path / "one" / "manifest.json").ok
    assert not (tmp_path / "one" / TEMP_DIR).exists()


def test_another_seed_gives_another_order_of_the_same_records(two_inputs, tmp_path):
    _, a, b = two_inputs
    run([a, b], tmp_path / "s1", seed=1, **SHUFFLE)
    run([a, b], tmp_path / "s2", seed=2, **SHUFFLE)
    inputs = nonblank(a.read_bytes()) + nonblank(b.read_bytes())
    one, two = shard_lines(tmp_path / "s1"), shard_lines(tmp_path / "s2")
    assert one != two and one != inputs
    assert Counter(one) == Counter(two) == Counter(inputs)  # byte-exact records, nothing lost or added
    names = [f["path"] for f in manifest_of(tmp_path / "s1")["files"]]
    assert names == [f"part-{i:05d}.jsonl" for i in range(10)]


def test_shuffle_mixes_inputs_across_the_whole_output(two_inputs, tmp_path):
    _, a, b = two_inputs
    run([a, b], tmp_path / "o", seed=3, **SHUFFLE)
    from_b = set(nonblank(b.read_bytes()))
    lines = shard_lines(tmp_path / "o")
    first_half = sum(line in from_b for line in lines[: len(lines) // 2])
    assert 160 <= first_half <= 240  # 400 of 1000 records come from b: about 200 in each half
    position = {line: i for i, line in enumerate(lines)}
    moved = [abs(position[line] - i) for i, line in enumerate(nonblank(a.read_bytes()))]
    assert sum(d < 20 for d in moved) < 60  # few records stay near where they were


def test_buckets_larger_than_memory_are_rescattered_and_memory_is_bounded(tmp_path, monkeypatch):
    # very compressible .gz: the 4x planning guess is far too low, buckets overflow
    src = tmp_path / "big.jsonl.gz"
    lines = [orjson.dumps({"messages": [{"role": "user", "content": f"{i} " + "x" * 900},
                                        {"role": "assistant", "content": "ok"}]}) + b"\n" for i in range(2000)]
    src.write_bytes(gzip.compress(b"".join(lines)))
    memory = 128 * 1024
    loaded = []
    real_load = pl._FileBucket.load

    def spy(self):
        loaded.append(self.bytes + pl.RECORD_OVERHEAD * self.records)
        return real_load(self)

    monkeypatch.setattr(pl._FileBucket, "load", spy)
    run([src], tmp_path / "o", {"max_records": 500}, shuffle=True, seed=1, shuffle_memory=memory)
    m = manifest_of(tmp_path / "o")
    assert m["shuffle"]["rescattered"] > 0
    assert loaded and max(loaded) <= memory
    assert Counter(shard_lines(tmp_path / "o")) == Counter(lines)
    plan = run([src], tmp_path / "dry", {"max_records": 500}, dry_run=True, shuffle=True, seed=1, shuffle_memory=memory)
    assert [(f["path"], f["records"], f["bytes"]) for f in plan.manifest["files"]] == \
        [(f["path"], f["records"], f["bytes"]) for f in m["files"]]
    assert not (tmp_path / "dry").exists()


def test_dry_run_plans_exactly_what_a_run_writes_and_writes_nothing(two_inputs, tmp_path):
    _, a, b = two_inputs
    kw = dict(seed=4, holdout=0.3, dedup="exact", **SHUFFLE)
    plan = run([a, b], tmp_path / "o", {"max_bytes": 50_000}, dry_run=True, **kw)
    assert not (tmp_path / "o").exists()
    real = run([a, b], tmp_path / "o", {"max_bytes": 50_000}, **kw)
    keep = ("path", "records", "bytes", "split")
    assert [{k: f[k] for k in keep} for f in plan.manifest["files"]] == [{k: f[k] for k in keep} for f in real.manifest["files"]]
    assert plan.manifest["counts"] == real.manifest["counts"]
    assert all(f["bytes"] <= 50_000 for f in real.manifest["files"])


def test_num_shards_is_balanced_with_shuffle_and_refused_without(two_inputs, tmp_path):
    _, a, b = two_inputs
    r = run([a, b], tmp_path / "o", {"num_shards": 3}, seed=1, **SHUFFLE)
    assert [f["records"] for f in r.manifest["files"]] == [334, 333, 333]
    with pytest.raises(UsageError, match="--num-shards .* needs --shuffle"):
        options({"num_shards": 3}, dedup="exact")


def test_stdin_can_be_shuffled(tmp_path, monkeypatch):
    data = b"".join(b'{"text": "%d"}\n' % i for i in range(300))

    class Stdin:
        buffer = io.BufferedReader(io.BytesIO(data))

    monkeypatch.setattr(sys, "stdin", Stdin)
    r = run_pipeline(["-"], tmp_path / "o", options(shuffle=True, seed=2))
    assert Counter(shard_lines(tmp_path / "o")) == Counter(nonblank(data))
    assert r.manifest["sources"][0]["path"] == "-"


def test_oversize_error_in_a_shuffle_leaves_no_temp_files(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "a"}\n' * 50 + b'{"text": "' + b"z" * 5000 + b'"}\n')
    with pytest.raises(DataError, match=r"in.jsonl:51: record is 5013 bytes, larger than --max-bytes 1000"):
        run([src], tmp_path / "o", {"max_bytes": 1000, "oversize": "error"}, shuffle=True)
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- holdout


def split_sets(out: Path) -> tuple[set[bytes], set[bytes]]:
    return set(shard_lines(out, "train")), set(shard_lines(out, "validation"))


@pytest.fixture(scope="module")
def mixed_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    t1 = mixed.write_mixed(base / "one.jsonl", base / "eval.jsonl", records=400, seed=3)
    mixed.write_mixed(base / "two.jsonl", records=300, seed=4)
    return base, t1


@pytest.mark.parametrize("shuffle", [False, True])
def test_holdout_membership_is_unchanged_when_a_file_is_added_or_inputs_reordered(mixed_pair, tmp_path, shuffle):
    base, _ = mixed_pair
    one, two = base / "one.jsonl", base / "two.jsonl"
    run([one], tmp_path / "alone", holdout=0.2, shuffle=shuffle, holdout_key="record")
    run([two, one], tmp_path / "more", holdout=0.2, shuffle=shuffle, holdout_key="record")
    train_a, val_a = split_sets(tmp_path / "alone")
    train_b, val_b = split_sets(tmp_path / "more")
    from_one = set(nonblank(one.read_bytes()))
    assert val_b & from_one == val_a and train_b & from_one == train_a
    assert 0.13 < len(val_a) / len(from_one) < 0.27
    for line in val_a:  # the documented rule, recomputed
        assert holdout_split(record_hash(orjson.loads(line)), 0.2) == "validation"
    run([one], tmp_path / "seed9", holdout=0.2, holdout_seed=9, holdout_key="record")
    assert split_sets(tmp_path / "seed9")[1] != val_a


def test_holdout_keeps_each_prompt_in_one_split_by_default(tmp_path):
    """Issue 17.8: hashing whole records put prompts with several answers in both splits."""
    from shardkit.pipeline.overlap import key_function

    src = tmp_path / "chat.jsonl"
    lines = []
    for i in range(600):  # 150 prompts, 4 answers each; some as alpaca, converted by --to chat
        q, a = f"question {i % 150}?", f"answer {i}"
        rec = ({"instruction": q, "input": "", "output": a} if i % 3 == 0 else
               {"messages": [{"role": "system", "content": f"sys {i % 7}"}, {"role": "user", "content": q},
                             {"role": "assistant", "content": a}]})
        lines.append(orjson.dumps(rec))
    src.write_bytes(b"\n".join(lines) + b"\n")
    prompt = key_function("first-user")

    def overlap(out: Path) -> int:
        sets = {"train": set(), "validation": set()}
        for f in manifest_of(out)["files"]:
            for line in nonblank((out / f["path"]).read_bytes()):
                sets[f["split"]].add(prompt(orjson.loads(line)))
        return len(sets["train"] & sets["validation"])

    old = run([src], tmp_path / "record", holdout=0.2, holdout_key="record", to="chat")
    assert old.manifest["holdout"]["prompt_overlap"] == overlap(tmp_path / "record") > 0
    assert any("also occur in train" in w for w in old.warnings)
    new = run([src], tmp_path / "default", holdout=0.2, to="chat")
    assert new.manifest["holdout"] == {"key": "first-user", "fraction": 0.2, "seed": 0, "prompt_overlap": 0}
    assert new.manifest["params"]["holdout_key"] == "first-user"
    assert overlap(tmp_path / "default") == 0 and new.counts["validation"] > 0
    assert not any("also occur in train" in w for w in new.warnings)


def test_holdout_names_and_split_field(mixed_pair, tmp_path):
    base, _ = mixed_pair
    r = run([base / "one.jsonl", base / "two.jsonl"], tmp_path / "o", {"max_records": 200}, holdout=0.25)
    names = {(f["path"], f["split"]) for f in r.manifest["files"]}
    assert ("one-train-00000.jsonl", "train") in names and ("one-validation-00000.jsonl", "validation") in names
    assert ("two-train-00000.jsonl", "train") in names
    assert r.counts["written"] == r.counts["train"] + r.counts["validation"]
    s = run([base / "one.jsonl"], tmp_path / "s", holdout=0.25, shuffle=True)
    assert {f["path"] for f in s.manifest["files"]} >= {"part-train-00000.jsonl", "part-validation-00000.jsonl"}
    n = run([base / "one.jsonl"], tmp_path / "n", holdout=0.25, shuffle=True, name="{split}/{index}.jsonl".replace("/", "_"))
    assert {f["path"] for f in n.manifest["files"]} >= {"train_0.jsonl", "validation_0.jsonl"}
    assert n.manifest["params"]["name"] == "{split}_{index}.jsonl"


def test_holdout_key_keeps_groups_together_and_rejects_records_without_it(tmp_path):
    src = tmp_path / "g.jsonl"
    rows = [{"group": i % 40, "text": f"r{i}"} for i in range(800)] + [{"text": "no group"}]
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    r = run([src], tmp_path / "o", holdout=0.3, holdout_key="group")
    groups = {s: {orjson.loads(x)["group"] for x in shard_lines(tmp_path / "o", s)} for s in ("train", "validation")}
    assert groups["train"] and groups["validation"] and not groups["train"] & groups["validation"]
    assert r.counts["rejected"] == 1
    [rejected] = side(tmp_path / "o", "rejects.jsonl")
    assert rejected["code"] == "holdout_key" and rejected["line"] == 801
    assert rejected["reason"] == "no 'group' field to route --holdout by (--holdout-key group)"


# ---------------------------------------------------------------- dedup and exclude


def test_dedup_finds_the_known_duplicates_and_names_the_first_copy(mixed_pair, tmp_path):
    base, truth = mixed_pair
    src = base / "one.jsonl"
    r = run([src], tmp_path / "o", dedup="exact")
    assert r.counts["duplicates"] == truth["duplicates"]
    assert r.counts["written"] == truth["distinct"]
    lines = src.read_bytes().splitlines()
    for entry in side(tmp_path / "o", "duplicates.jsonl"):
        file, first = entry["duplicate_of"].rsplit(":", 1)
        assert file == str(src) and int(first) < entry["line"]
        assert record_hash(orjson.loads(lines[int(first) - 1])) == record_hash(orjson.loads(lines[entry["line"] - 1]))
        assert side_raw(entry) == lines[entry["line"] - 1] + b"\n"  # original bytes
    written = [record_hash(orjson.loads(x)) for x in shard_lines(tmp_path / "o")]
    assert len(set(written)) == len(written)


def test_dedup_works_across_inputs(two_inputs, tmp_path):
    _, a, _ = two_inputs
    copy = tmp_path / "copy.jsonl"  # the same file twice is refused (test_shard): a copy of it
    copy.write_bytes(a.read_bytes())
    r = run([a, copy], tmp_path / "o", dedup="exact")
    assert r.counts == {"read": 1200, "written": 600, "train": 600, "validation": 0, "rejected": 0,
                        "duplicates": 600, "excluded": 0, "blank": 0}
    first = side(tmp_path / "o", "duplicates.jsonl")[0]
    assert first["line"] == 1 and first["duplicate_of"] == f"{a}:1" and first["code"] == "duplicate"


def test_real_data_has_437_exact_duplicates(tmp_path):
    if not REAL_TRAIN.exists():
        pytest.skip(f"{REAL_TRAIN} not present (shared real-data folder; never copied into the repo)")
    r = run([REAL_TRAIN], tmp_path / "o", {"max_records": 500}, dedup="exact", shuffle=True, seed=1)
    assert r.counts["duplicates"] == 437
    assert r.counts["written"] == 1800 - 437
    assert r.manifest["duplicates"]["records"] == 437


def test_exclude_drops_eval_records_from_the_output(mixed_pair, tmp_path):
    base, truth = mixed_pair
    train, ev = base / "one.jsonl", base / "eval.jsonl"
    expected = find_overlap([train], [ev]).matching_train_records
    assert expected >= truth["eval_exact"]
    r = run([train], tmp_path / "o", exclude=[ev], dedup="exact")
    assert r.counts["excluded"] == expected
    entries = side(tmp_path / "o", "excluded.jsonl")
    assert len(entries) == expected and all(e["matches"].startswith(f"{ev}:") for e in entries)
    leftover = find_overlap([*(tmp_path / "o").glob("one-*.jsonl")], [ev])
    assert leftover.ok
    assert r.manifest["exclude"]["key"] == "record" and r.manifest["exclude"]["sources"][0]["records"] == truth["eval_records"]
    assert r.manifest["params"]["exclude"] == [os.path.relpath(ev, tmp_path / "o")]
    assert r.manifest["exclude"]["sources"][0]["path"] == os.path.relpath(ev, tmp_path / "o")
    by_question = run([train], tmp_path / "q", exclude=[ev], exclude_key="first-user")
    assert by_question.counts["excluded"] == find_overlap([train], [ev], key="first-user").matching_train_records


# ---------------------------------------------------------------- --to chat, validation


def test_to_chat_converts_everything_it_can_and_rejects_the_rest(mixed_pair, tmp_path):
    base, truth = mixed_pair
    src = tmp_path / "in.jsonl"
    src.write_bytes((base / "one.jsonl").read_bytes() + b'{"text": "prose"}\nnot json\n')
    r = run([src], tmp_path / "o", to="chat")
    assert r.counts["written"] == truth["lines"] and r.counts["rejected"] == 2
    chat = Validator("chat")
    out = shard_lines(tmp_path / "o")
    assert all(chat.check(line).ok for line in out)
    originals = nonblank(src.read_bytes())
    chat_lines = Counter(x for x in originals if x.startswith(b'{"messages"'))
    assert Counter(x for x in out if x in chat_lines) == chat_lines  # chat records kept byte-exact
    codes = [(e["code"], e["line"]) for e in side(tmp_path / "o", "rejects.jsonl")]
    assert codes == [("convert", truth["lines"] + 1), ("invalid_json", truth["lines"] + 2)]
    assert r.manifest["roles"]["sharegpt"]["gpt"] == "assistant"
    deduped = run([src], tmp_path / "d", to="chat", dedup="exact")  # alpaca and its chat twin are one record now
    assert deduped.counts["duplicates"] >= truth["duplicates"]


def test_validation_rejects_invalid_records_before_the_other_steps(tmp_path):
    src = tmp_path / "in.jsonl"
    good = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    src.write_bytes(good + b'{"messages": [{"role": "bot", "content": "x"}]}\n' + good + b"\n")
    r = run([src], tmp_path / "o", {"max_records": 10, "check": CheckOptions(kind="chat")}, dedup="exact", shuffle=True)
    assert r.counts == {"read": 4, "written": 1, "train": 1, "validation": 0, "rejected": 1, "duplicates": 1,
                        "excluded": 0, "blank": 1}
    [bad] = side(tmp_path / "o", "rejects.jsonl")
    assert bad["line"] == 2 and bad["code"] == "unknown_role"
    assert r.validation.invalid == 1


# ---------------------------------------------------------------- options, OUT rules


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"holdout": 1.0}, "--holdout must be a fraction between 0 and 1"),
        ({"holdout_key": "id"}, "--holdout-key needs --holdout"),
        ({"dedup": "fuzzy"}, "--dedup must be one of exact"),
        ({"to": "sharegpt"}, "--to must be one of chat"),
        ({"shuffle_memory": 1000}, "--shuffle-memory must be at least"),
        ({"holdout": 0.1, "split": {"max_records": 5, "name": "x-{index}.jsonl"}}, "must contain {split} with --holdout"),
        ({"name": "x-{split}.jsonl"}, "must contain {index}"),
        ({"name": "x-{index}-{nope}.jsonl"}, "KeyError: 'nope' (fields: {stem}, {split}, {index})"),
        ({"duplicates": "rejects.jsonl"}, "need different names"),
    ],
)
def test_bad_options_are_usage_errors(kw, message):
    split = kw.pop("split", None)
    with pytest.raises(UsageError, match=re.escape(message)):
        options(split, **kw)


def test_out_rules_resume_overwrite_and_lock(two_inputs, tmp_path):
    _, a, _ = two_inputs
    a2 = tmp_path / "a2.jsonl"  # a copy: the same file twice is refused
    a2.write_bytes(a.read_bytes())
    out = tmp_path / "o"
    run([a, a2], out, dedup="exact", shuffle=True)
    assert (out / "duplicates.jsonl").exists()
    with pytest.raises(ConflictError, match="already holds a complete shardkit run"):
        run([a, a2], out, dedup="exact", shuffle=True)
    assert run([a, a2], out, dedup="exact", shuffle=True, resume=True).already_complete
    with pytest.raises(ConflictError, match=r"options differ from the interrupted run \(seed\)"):
        run([a, a2], out, dedup="exact", shuffle=True, seed=5, resume=True)
    (out / "notes.txt").write_text("mine")  # not listed: --overwrite leaves it alone
    r = run([a], out, holdout=0.5, overwrite=True)  # the listed duplicates.jsonl goes, no conflict
    listed = {f["path"] for f in r.manifest["files"]}
    assert {"a-train-00000.jsonl", "a-validation-00000.jsonl"} <= listed
    assert sorted(p.name for p in out.iterdir()) == sorted({"manifest.json", "SHA256SUMS", "notes.txt"} | listed)
    busy = tmp_path / "busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConflictError, match="another shardkit run is writing here"):
            run([a], busy, shuffle=True)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- conservation (property)


RECORD_LINES = [
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages":[{"content":"q","role":"user"},{"content":"a","role":"assistant"}]}',  # same once normalised
    b'{"instruction": "q", "input": "", "output": "a", "k": 1}',
    b'{"prompt": "q", "completion": "a"}',
    b'{"prompt": "q", "completion": "a"}\r',
    b'{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}], "k": 2}',
    b'{"text": "plain", "k": 3}',
    b'{"text": "' + b"long " * 120 + b'"}',
    b"not json",
    b"[1, 2]",
    b'{"bad": "\xff"}',
    b"",
    b"   ",
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    picks=st.lists(st.tuples(st.integers(0, len(RECORD_LINES) - 1), st.integers(0, 3)), max_size=40),
    final_newline=st.booleans(),
    flags=st.fixed_dictionaries({
        "shuffle": st.booleans(),
        "dedup": st.sampled_from([None, "exact"]),
        "holdout": st.sampled_from([None, 0.4]),
        "holdout_key": st.sampled_from([None, "k"]),
        "to": st.sampled_from([None, "chat"]),
        "exclude": st.booleans(),
        "validate": st.booleans(),
        "max_bytes": st.sampled_from([None, 300]),
        "oversize": st.sampled_from(["own-shard", "reject"]),
    }),
)
def test_conservation_every_record_is_accounted_for(tmp_path, picks, final_newline, flags):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    lines = [RECORD_LINES[i] + (b' ' * pad if RECORD_LINES[i].strip() else b"") for i, pad in picks]
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    src = work / "in.jsonl"
    src.write_bytes(data)
    ev = work / "eval.jsonl"
    ev.write_bytes(RECORD_LINES[3] + b"\n" + RECORD_LINES[6] + b"\n")
    holdout_key = flags["holdout_key"] if flags["holdout"] else None
    split = {"max_records": 3, "max_bytes": flags["max_bytes"], "oversize": flags["oversize"],
             "check": CheckOptions(kind="auto") if flags["validate"] else None,
             "allow_empty": True}  # every record set aside is a case here
    out = work / "out"
    r = run([src], out, split, shuffle=flags["shuffle"], dedup=flags["dedup"], holdout=flags["holdout"],
            holdout_key=holdout_key, to=flags["to"], exclude=[ev] if flags["exclude"] else [])
    c = r.counts
    physical = data.split(b"\n")
    if physical and physical[-1] == b"":
        physical.pop()
    blank = sum(not x.strip() for x in physical)
    written = shard_lines(out)
    sides = {name: side(out, f"{name}.jsonl") for name in ("rejects", "duplicates", "excluded")}
    assert c["read"] == len(physical) and c["blank"] == blank
    assert c["written"] == len(written) == c["train"] + c["validation"]
    assert (c["rejected"], c["duplicates"], c["excluded"]) == tuple(len(v) for v in sides.values())
    assert c["read"] == c["written"] + c["rejected"] + c["duplicates"] + c["excluded"] + c["blank"]
    kept_aside = [side_raw(e) for v in sides.values() for e in v]
    if flags["to"] is None:  # byte-exact: the output and the side files hold exactly the input's records
        assert Counter(written + kept_aside) == Counter(nonblank(data))
    else:
        assert len(written) + len(kept_aside) == len(nonblank(data))
    if flags["max_bytes"]:
        assert all(f["bytes"] <= 300 or f["records"] == 1 for f in r.manifest["files"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- crash safety (real processes)


SCRIPT = """
import json, sys
from shardkit.core.errors import Interrupted
from shardkit.pipeline.run import run_pipeline
from shardkit.pipeline.transform import PipelineOptions
from shardkit.pipeline.shard import SplitOptions
a = json.loads(sys.argv[1])
options = PipelineOptions(split=SplitOptions(**a["split"]), **a["options"])
try:
    run_pipeline(a["inputs"], a["out"], options, resume=a["resume"], overwrite=a["overwrite"])
except Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
"""
CRASH_SPLIT = {"max_records": 150, "max_bytes": 120_000}
CRASH_OPTIONS = {"shuffle": True, "seed": 11, "shuffle_memory": 256 * 1024, "holdout": 0.1, "dedup": "exact"}


def pipeline_argv(inputs, out, *, resume=False, overwrite=False) -> list[str]:
    args = {"inputs": [str(p) for p in inputs], "out": str(out), "split": CRASH_SPLIT, "options": CRASH_OPTIONS,
            "resume": resume, "overwrite": overwrite}
    return [sys.executable, "-c", SCRIPT, json.dumps(args)]


def run_script(inputs, out, fault: str = "", **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHARDKIT_FAULT": fault}
    return subprocess.run(pipeline_argv(inputs, out, **kw), capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def crash_workload(tmp_path_factory):
    base = tmp_path_factory.mktemp("crash")
    a, b = base / "a.jsonl", base / "b.jsonl"
    data = make_chat_jsonl(a, 900, seed=7, max_len=1500)
    a.write_bytes(data + b"\n" + b"".join(data.splitlines(keepends=True)[:100]))  # a blank line, 100 duplicates
    make_chat_jsonl(b, 300, seed=8, max_len=1500)
    ref = base / "ref"
    t = time.monotonic()
    r = run_script([a, b], ref)
    assert r.returncode == 0, r.stderr
    reference = final_files(ref)
    m = orjson.loads(reference["manifest.json"])
    assert m["counts"]["duplicates"] == 100 and m["shuffle"]["buckets"] > 10 and len(m["files"]) > 8
    return base, [a, b], reference, time.monotonic() - t


def check_after_crash(out: Path, reference: dict) -> None:
    """What a reader sees after a kill: whole files only, each identical to the uninterrupted run's."""
    for name, content in final_files(out).items():
        if name in ("manifest.json", "SHA256SUMS"):
            continue
        assert name in reference, f"unexpected file {name}"
        assert content == reference[name], f"{name} is partial or different"
    if (out / "manifest.json").exists():
        m = manifest_of(out)  # parses: never half-written
        ref_files = orjson.loads(reference["manifest.json"])["files"]
        assert m["files"] == (ref_files if m["complete"] else ref_files[: len(m["files"])])


def rerun_and_compare(inputs, out, reference, **kw) -> None:
    r = run_script(inputs, out, **kw)
    assert r.returncode == 0, r.stderr
    seen = final_files(out)
    assert sorted(seen) == sorted(reference)
    for name, content in reference.items():
        if name == "manifest.json":
            assert without_time(orjson.loads(seen[name])) == without_time(orjson.loads(content))
        else:
            assert seen[name] == content, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp buckets or partial files left"
    assert verify(out / "manifest.json").ok


FAULTS = [
    "after:bucket_write:5",
    "after:scatter_done:1",
    "after:bucket_shuffled:4",
    "before:shard_commit:2",
    "after:shard_commit:3",
    "after:manifest_write:5",
    "after:sides_published:1",
]


@pytest.mark.parametrize("fault", FAULTS)
def test_sigkill_during_a_shuffle_then_resume_gives_the_uninterrupted_output(crash_workload, fault):
    base, inputs, reference, _ = crash_workload
    out = base / f"fault-{fault.replace(':', '-')}"
    r = run_script(inputs, out, fault)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert b"injected fault at " + fault.encode() in r.stderr
    check_after_crash(out, reference)
    refused = run_script(inputs, out)
    assert refused.returncode != 0 and b"use --resume" in refused.stderr
    rerun_and_compare(inputs, out, reference, resume=True)


@pytest.mark.parametrize("second", ["after:resume_cleaned:1", "after:bucket_write:2", "before:shard_commit:1"])
def test_a_recovery_killed_too_still_recovers(crash_workload, second):
    """Found by `make torture`: killed just after a shard was committed (not yet listed),
    then the --resume killed before it wrote its first manifest. The resume used to delete
    the old manifest first, leaving a shard and no manifest: a folder no rerun may touch."""
    base, inputs, reference, _ = crash_workload
    out = base / f"twice-{second.replace(':', '-')}"
    r = run_script(inputs, out, "after:shard_commit:3")
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = run_script(inputs, out, second, resume=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "manifest.json").exists()
    check_after_crash(out, reference)
    rerun_and_compare(inputs, out, reference, resume=True)


def test_sigkill_at_a_random_moment_then_overwrite_gives_the_uninterrupted_output(crash_workload):
    base, inputs, reference, seconds = crash_workload
    for k, delay in enumerate(seeded_delays(2027, 2, 0.2, 0.8 * seconds)):
        out = base / f"kill-{k}"
        proc = subprocess.Popen(pipeline_argv(inputs, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.kill()
        proc.communicate(timeout=60)
        check_after_crash(out, reference)
        rerun_and_compare(inputs, out, reference, overwrite=k == 0, resume=k == 1)


def test_ctrl_c_during_the_shuffle_cleans_up_and_exits_130(crash_workload):
    base, inputs, reference, _ = crash_workload
    out = base / "sigint"
    proc = subprocess.Popen(pipeline_argv(inputs, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((out / TEMP_DIR).glob("*")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"interrupted; no partial file was left under a final name" in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    check_after_crash(out, reference)
    rerun_and_compare(inputs, out, reference, resume=True)


def test_to_chat_with_validate_chat_checks_the_records_written(tmp_path):
    """--to chat --validate chat rejected every alpaca record (found by tests/test_matrix.py):
    the input was checked as chat before it was converted. Now each record is checked as its
    own kind as read, and as chat once converted."""
    src = tmp_path / "mixed.jsonl"
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    rows += [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}] * 5
    rows += [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}] * 5
    rows += [{"messages": [{"role": "bot", "content": "x"}]}]  # invalid as read
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    r = run([src], tmp_path / "o", {"max_records": 100, "check": CheckOptions(kind="chat")}, to="chat", dedup=None)
    assert r.counts["written"] == 30 and r.counts["rejected"] == 1
    assert r.manifest["params"]["validate"]["kind"] == "chat"  # as the user said
    from shardkit.records.validate import Validator

    v = Validator("chat")
    assert all(v.check(line).ok for line in shard_lines(tmp_path / "o"))
