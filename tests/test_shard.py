import gzip
import os
import shutil
import subprocess

import orjson
import pytest
from conftest import FIXTURES, concat_shards, expected_records, make_chat_jsonl, run_cli
from crashkit import final_files, run_with_fault
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shardkit import ConflictError, DataError, SplitOptions, UsageError, split
from shardkit.pipeline.shard import input_stems


def manifest_of(out):
    return orjson.loads((out / "manifest.json").read_bytes())


def assert_accounted(m):
    c = m["counts"]
    assert c["read"] == c["written"] + c["rejected"] + c["blank"]
    assert c["written"] == m["totals"]["records"] == sum(f["records"] for f in m["files"])


# ---------------------------------------------------------------- byte-exact concatenation


@pytest.mark.parametrize("codec", ["plain", "gzip", "zstd", "stdin"])
def test_cli_concatenation_is_byte_identical(tmp_path, chat_file, codec):
    src, data = chat_file
    if codec == "gzip":
        subprocess.run(["gzip", "-k", str(src)], check=True)
        src = src.with_name(src.name + ".gz")
    elif codec == "zstd":
        subprocess.run(["zstd", "-q", str(src), "-o", f"{src}.zst"], check=True)
        src = src.with_name(src.name + ".zst")
    out = tmp_path / "out"
    if codec == "stdin":
        r = run_cli("split", "-", "-o", out, "--max-records", "37", input=data)
    else:
        r = run_cli("split", src, "-o", out, "--max-records", "37")
    assert r.returncode == 0, r.stderr
    assert concat_shards(out) == data
    m = manifest_of(out)
    assert m["complete"] is True
    assert [f["records"] for f in m["files"]] == [37] * 10 + [30]
    stem = "stdin" if codec == "stdin" else "chat"
    assert [f["path"] for f in m["files"]] == [f"{stem}-{i:05d}.jsonl" for i in range(11)]
    assert m["files"][1]["first_line"] == 38 and m["files"][1]["last_line"] == 74
    raw = data if codec == "stdin" else src.read_bytes()
    assert m["sources"][0]["bytes"] == len(raw)
    import hashlib

    assert m["sources"][0]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert_accounted(m)
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out)
    assert check.returncode == 0


@pytest.mark.parametrize("name", ["crlf.jsonl", "no_final_newline.jsonl", "blank_lines.jsonl", "unicode.jsonl", "chat_small.jsonl"])
def test_fixtures_concatenate_to_nonblank_lines(tmp_path, name):
    data = (FIXTURES / name).read_bytes()
    result = split([FIXTURES / name], tmp_path / "o", SplitOptions(max_records=2))
    assert concat_shards(tmp_path / "o") == expected_records(data)
    assert_accounted(result.manifest)
    if name == "crlf.jsonl":
        assert b"\r\n" in concat_shards(tmp_path / "o")
    if name == "no_final_newline.jsonl":
        assert any("no newline at end of file" in w for w in result.warnings)
    if name == "blank_lines.jsonl":
        assert result.counts["blank"] == data.count(b"\n") + (not data.endswith(b"\n")) - len(expected_records(data).splitlines())
        assert result.counts["blank"] > 0


def test_gzip_multimember_and_blank_lines(tmp_path):
    part1 = b'{"a":1}\n\n'
    part2 = b'  \n{"b":2}\n'
    src = tmp_path / "m.jsonl.gz"
    src.write_bytes(gzip.compress(part1) + gzip.compress(part2))
    result = split([src], tmp_path / "o", SplitOptions(max_records=1))
    assert concat_shards(tmp_path / "o") == b'{"a":1}\n{"b":2}\n'
    assert result.counts == {"read": 4, "written": 2, "train": 2, "validation": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "blank": 2}


# ---------------------------------------------------------------- sizing


@pytest.mark.parametrize("limit", [300, 4096, 10_000, 65_536])
def test_max_bytes_never_exceeded(tmp_path, limit):
    src = tmp_path / "in.jsonl"
    data = make_chat_jsonl(src, 300, seed=limit, max_len=200)
    result = split([src], tmp_path / "o", SplitOptions(max_bytes=limit))
    out = tmp_path / "o"
    for f in result.manifest["files"]:
        size = (out / f["path"]).stat().st_size
        assert size == f["bytes"]
        assert f["bytes"] <= limit or f["records"] == 1  # a lone oversize record: own shard
    assert concat_shards(out) == data
    # greedy: no shard could have taken the next record
    files = result.manifest["files"]
    lines = data.splitlines(keepends=True)
    for f in files[:-1]:
        assert f["bytes"] + len(lines[f["last_line"]]) > limit


def test_max_records_and_bytes_combined(tmp_path, chat_file):
    src, data = chat_file
    result = split([src], tmp_path / "o", SplitOptions(max_records=50, max_bytes=200_000))
    for f in result.manifest["files"]:
        assert f["records"] <= 50 and f["bytes"] <= 200_000
    assert concat_shards(tmp_path / "o") == data


@pytest.mark.parametrize("n", [1, 3, 7, 400])
def test_num_shards_balanced(tmp_path, chat_file, n):
    src, data = chat_file
    result = split([src], tmp_path / "o", SplitOptions(num_shards=n))
    counts = [f["records"] for f in result.manifest["files"]]
    assert len(counts) == n and sum(counts) == 400 and max(counts) - min(counts) <= 1
    assert concat_shards(tmp_path / "o") == data


def test_num_shards_more_than_records_warns(tmp_path):
    src = tmp_path / "few.jsonl"
    src.write_bytes(b'{"a":1}\n{"a":2}\n')
    result = split([src], tmp_path / "o", SplitOptions(num_shards=5))
    assert len(result.manifest["files"]) == 2
    assert any("only 2 record(s)" in w for w in result.warnings)


def test_num_shards_refuses_stdin(tmp_path):
    r = run_cli("split", "-", "-o", tmp_path / "o", "--num-shards", "2", input=b'{"a":1}\n')
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "shardkit: error: --num-shards needs an input that can be read twice (a file, not stdin)"


def _oversize_input(tmp_path):
    src = tmp_path / "big.jsonl"
    data = b'{"a":1}\n' + b'{"big":"' + b"x" * 500 + b'"}\n' + b'{"b":2}\n'
    src.write_bytes(data)
    return src, data


def test_oversize_own_shard(tmp_path):
    src, data = _oversize_input(tmp_path)
    result = split([src], tmp_path / "o", SplitOptions(max_bytes=100))
    assert [f["records"] for f in result.manifest["files"]] == [1, 1, 1]
    assert result.manifest["files"][1]["bytes"] > 100
    assert any("big.jsonl:2: record is 511 bytes, larger than --max-bytes 100" in w for w in result.warnings)
    assert concat_shards(tmp_path / "o") == data


def test_oversize_reject_keeps_original_bytes(tmp_path):
    src, data = _oversize_input(tmp_path)
    result = split([src], tmp_path / "o", SplitOptions(max_bytes=100, oversize="reject"))
    out = tmp_path / "o"
    assert concat_shards(out) == b'{"a":1}\n{"b":2}\n'
    assert result.counts == {"read": 3, "written": 2, "train": 2, "validation": 0, "rejected": 1, "duplicates": 0, "excluded": 0, "blank": 0}
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]
    assert rejects == [
        {"source": str(src), "line": 2, "offset": 8, "code": "oversize",
         "reason": "record is 511 bytes, larger than --max-bytes 100", "raw": data.splitlines()[1].decode()}
    ]
    assert result.manifest["rejects"]["records"] == 1
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0


def test_oversize_error(tmp_path):
    src, _ = _oversize_input(tmp_path)
    r = run_cli("split", src, "-o", tmp_path / "o", "--max-bytes", "100B", "--oversize", "error")
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"shardkit: error: {src}:2: record is 511 bytes, larger than --max-bytes 100 "
        "(use --oversize own-shard or --oversize reject)"
    )
    m = manifest_of(tmp_path / "o")  # the shard before the bad record was committed; the run is marked unfinished
    assert m["complete"] is False and [f["path"] for f in m["files"]] == ["big-00000.jsonl"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["SHA256SUMS", "big-00000.jsonl", "manifest.json"]


# ---------------------------------------------------------------- several inputs, names


def test_several_inputs_each_split_on_its_own(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d1 = make_chat_jsonl(tmp_path / "a" / "data.jsonl", 5, seed=1, max_len=20)
    d2 = make_chat_jsonl(tmp_path / "b" / "data.jsonl", 3, seed=2, max_len=20)
    result = split([tmp_path / "a" / "data.jsonl", tmp_path / "b" / "data.jsonl"], tmp_path / "o", SplitOptions(max_records=2))
    names = [f["path"] for f in result.manifest["files"]]
    assert names == ["data-00000.jsonl", "data-00001.jsonl", "data-00002.jsonl", "data_2-00000.jsonl", "data_2-00001.jsonl"]
    assert concat_shards(tmp_path / "o") == d1 + d2
    assert [s["records"] for s in result.manifest["sources"]] == [5, 3]


def test_input_stems():
    assert input_stems(["x/big.jsonl.gz", "y/big.jsonl", "-", "a.b.zst", "c.json"]) == ["big", "big_2", "stdin", "a.b", "c"]


@pytest.mark.parametrize(
    "template,message",
    [
        ("../{stem}-{index}.jsonl", "must be a plain name inside the output folder"),
        ("{stem}.jsonl", "must contain {index}"),
        ("{nope}-{index}.jsonl", "KeyError"),
        (".{index}.jsonl", "must be a plain name inside the output folder"),
    ],
)
def test_bad_name_templates(template, message):
    with pytest.raises(UsageError, match=message.replace("{", r"\{").replace("}", r"\}")):
        SplitOptions(max_records=1, name=template)


def test_custom_name(tmp_path, chat_file):
    src, _ = chat_file
    result = split([src], tmp_path / "o", SplitOptions(num_shards=2, name="train-{index:03d}.jsonl"))
    assert [f["path"] for f in result.manifest["files"]] == ["train-000.jsonl", "train-001.jsonl"]


# ---------------------------------------------------------------- existing OUT, resume, overwrite


def test_existing_out_is_refused_then_overwritten_exactly(tmp_path, chat_file):
    src, data = chat_file
    out = tmp_path / "o"
    split([src], out, SplitOptions(max_records=100))
    (out / "notes.txt").write_text("mine")
    r = run_cli("split", src, "-o", out, "--max-records", "300")
    assert r.returncode == 4
    assert "use --resume to continue it, or --overwrite to replace the files it lists" in r.stderr.decode()
    result = split([src], out, SplitOptions(max_records=300), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "chat-00000.jsonl", "chat-00001.jsonl", "manifest.json", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert concat_shards(out) == data and len(result.manifest["files"]) == 2


def test_foreign_nonempty_out_is_refused(tmp_path, chat_file):
    src, _ = chat_file
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.jsonl").write_bytes(b"{}\n")
    with pytest.raises(ConflictError, match="not empty and holds no shardkit manifest"):
        split([src], out, SplitOptions(max_records=10), overwrite=True)
    assert (out / "precious.jsonl").read_bytes() == b"{}\n"


@pytest.mark.parametrize("resume", [False, True])
def test_run_killed_before_its_first_manifest_can_be_rerun(tmp_path, chat_file, resume):
    """The first write of a run is an empty SHA256SUMS, then the manifest: a kill between the
    two leaves only the empty sums file, which a rerun (or --resume) takes over."""
    src, data = chat_file
    out = tmp_path / "o"
    out.mkdir()
    (out / "SHA256SUMS").write_bytes(b"")
    split([src], out, SplitOptions(max_records=100), resume=resume)
    assert concat_shards(out) == data
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "SHA256SUMS").write_bytes(b"abc  x\n")  # not ours: refused
    with pytest.raises(ConflictError, match="not empty"):
        split([src], tmp_path / "p", SplitOptions(max_records=100), resume=resume)


def test_resume_of_complete_run_is_a_no_op_and_other_options_refused(tmp_path, chat_file):
    src, _ = chat_file
    out = tmp_path / "o"
    split([src], out, SplitOptions(max_records=100))
    before = (out / "manifest.json").read_bytes()
    again = split([src], out, SplitOptions(max_records=100), resume=True)
    assert again.already_complete and (out / "manifest.json").read_bytes() == before
    with pytest.raises(ConflictError, match=r"options differ from the interrupted run \(max_records\)"):
        split([src], out, SplitOptions(max_records=99), resume=True)


def test_resume_on_missing_out_just_runs(tmp_path, chat_file):
    src, data = chat_file
    split([src], tmp_path / "new", SplitOptions(max_records=100), resume=True)
    assert concat_shards(tmp_path / "new") == data


def test_two_runs_are_identical_but_for_timestamps(tmp_path, chat_file):
    src, _ = chat_file
    for d in ("r1", "r2"):
        split([src], tmp_path / d, SplitOptions(max_records=64, max_bytes=100_000))
    m1, m2 = manifest_of(tmp_path / "r1"), manifest_of(tmp_path / "r2")
    m1.pop("created_at"), m2.pop("created_at")
    assert m1 == m2
    for f in m1["files"]:
        assert (tmp_path / "r1" / f["path"]).read_bytes() == (tmp_path / "r2" / f["path"]).read_bytes()
    assert (tmp_path / "r1" / "SHA256SUMS").read_bytes() == (tmp_path / "r2" / "SHA256SUMS").read_bytes()


def test_dry_run_writes_nothing(tmp_path, chat_file):
    src, _ = chat_file
    out = tmp_path / "o"
    result = split([src], out, SplitOptions(max_records=150), dry_run=True)
    assert not out.exists()
    assert [f["records"] for f in result.manifest["files"]] == [150, 150, 100]
    r = run_cli("split", src, "-o", out, "-n", "150", "--dry-run")
    assert r.returncode == 0 and b"would write 3 shard(s), 400 records" in r.stdout
    assert not out.exists()


def test_json_output_is_one_document(tmp_path, chat_file):
    src, _ = chat_file
    r = run_cli("split", src, "-o", tmp_path / "o", "-n", "150", "--json")
    assert r.returncode == 0 and r.stderr == b""
    doc = orjson.loads(r.stdout)
    assert doc["counts"] == {"read": 400, "written": 400, "train": 400, "validation": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "blank": 0}
    assert doc["totals"]["files"] == 3 and doc["complete"] is True


def test_output_modes_follow_umask(tmp_path, chat_file):
    src, _ = chat_file
    old = os.umask(0o022)
    try:
        split([src], tmp_path / "o", SplitOptions(max_records=200))
    finally:
        os.umask(old)
    for p in (tmp_path / "o").iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p


# ---------------------------------------------------------------- property test


record = st.binary(min_size=0, max_size=60).map(lambda b: b.replace(b"\n", b" "))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.one_of(record, st.sampled_from([b"", b"  ", b"\r"])), max_size=60),
    max_records=st.one_of(st.none(), st.integers(1, 10)),
    max_bytes=st.one_of(st.none(), st.integers(1, 200)),
    final_newline=st.booleans(),
    block_size=st.integers(1, 128),
)
def test_property_concatenation_and_accounting(tmp_path_factory, lines, max_records, max_bytes, final_newline, block_size):
    if max_records is None and max_bytes is None:
        max_records = 3
    tmp = tmp_path_factory.mktemp("prop")
    src = tmp / "in.jsonl"
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    assume(not data.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")))  # gzip/zstd magic: read as compressed
    src.write_bytes(data)
    result = split([src], tmp / "o", SplitOptions(max_records=max_records, max_bytes=max_bytes, block_size=block_size,
                                                  allow_empty=True))  # an empty input is a case here
    out = tmp / "o"
    assert concat_shards(out) == expected_records(data)
    m = result.manifest
    assert_accounted(m)
    physical = len(data.split(b"\n")) - (1 if data.endswith(b"\n") or not data else 0)
    assert m["counts"]["read"] == physical
    for f in m["files"]:
        assert f["records"] >= 1
        if max_records:
            assert f["records"] <= max_records
        if max_bytes and f["records"] > 1:
            assert f["bytes"] <= max_bytes
    shutil.rmtree(tmp)


def test_library_errors_have_exit_codes(tmp_path):
    with pytest.raises(DataError) as e:
        src = tmp_path / "x.jsonl"
        src.write_bytes(b"x" * 100 + b"\n")
        split([src], tmp_path / "o", SplitOptions(max_bytes=10, oversize="error"))
    assert e.value.exit_code == 1


def test_resume_refuses_an_input_edited_since_the_interrupted_run(tmp_path):
    """An edit that keeps the size (a letter's case) used to resume into shards that no
    longer matched the input, with exit 0 and `verify` OK. The checkpoint now keeps each
    input's size and modification time; a touched input is refused, an untouched one resumes."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b'{"text": "record %d SUPER"}\n' % i for i in range(400)))
    out = tmp_path / "out"
    args = ["split", src, "-o", out, "-n", "50"]
    r = run_with_fault(args, "after:shard_commit:2")
    assert r.returncode != 0
    shards_before = final_files(out)

    data = src.read_bytes()
    src.write_bytes(data.replace(b"record 3 SUPER", b"record 3 super"))  # inside a committed shard, same size
    r = run_cli(*args, "--resume")
    assert r.returncode == 4, r.stderr
    assert b"in.jsonl: changed since the interrupted run" in r.stderr and b"--overwrite" in r.stderr
    assert final_files(out) == shards_before  # nothing touched

    src.write_bytes(data)  # the same bytes again, but a new modification time: still refused
    os.utime(src, ns=(1, 1))
    assert run_cli(*args, "--resume").returncode == 4

    r = run_cli(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert concat_shards(out) == data


def test_resume_of_an_untouched_input_still_works(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b'{"text": "record %d"}\n' % i for i in range(400)))
    out = tmp_path / "out"
    args = ["split", src, "-o", out, "-n", "50"]
    assert run_with_fault(args, "after:shard_commit:2").returncode != 0
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert concat_shards(out) == src.read_bytes()


def test_cut_options_that_contradict_or_repeat_are_refused_up_front(tmp_path):
    """Found by the hostile-input hunt: each of these ran and wrote something else than asked."""
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'{"text": "a"}\n' * 10)
    sub = tmp_path / "sub"
    sub.mkdir()
    b = sub / "b.jsonl"
    b.write_bytes(b'{"text": "b"}\n' * 10)
    cases = [
        # --num-shards 2 with -b 1KB wrote 1066 shards
        (["split", a, "-o", tmp_path / "o1", "--num-shards", "2", "-b", "1KB"], b"--num-shards makes exactly N shards"),
        (["split", a, "-o", tmp_path / "o2", "--num-shards", "2", "-n", "3"], b"--num-shards makes exactly N shards"),
        # the same file twice wrote every record twice
        (["split", a, tmp_path / "." / "a.jsonl", "-o", tmp_path / "o3", "-n", "5"], b"given twice"),
        # names without {stem}: the second input failed after the first one's shards were written
        (["split", a, b, "-o", tmp_path / "o4", "-n", "5", "--name", "{index:05d}.jsonl"], b"put {stem} in it"),
    ]
    for args, says in cases:
        r = run_cli(*args)
        assert r.returncode == 2 and says in r.stderr, (args, r.stderr)
        assert not args[args.index("-o") + 1].exists()  # nothing written


def test_dry_run_says_rejects_would_be_written(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"messages": 1}\n' + b'{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}\n')
    r = run_cli("split", src, "-o", tmp_path / "o", "-n", "5", "--validate", "chat", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert b"1 invalid record(s) would go to rejects.jsonl" in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [["split", "-o", "{out}", "-n", "5", "--dedup", "exact"],
                                  ["split", "-o", "{out}", "-n", "5", "--format", "parquet"],
                                  ["head", "--pretty"]])
def test_a_record_nested_too_deep_to_re_encode_is_a_data_error(tmp_path, args):
    """300 levels: orjson writes at most 254 and Python walks about 1000 frames. It was
    'internal error: TypeError: Recursion limit reached ... please report it'."""
    src = tmp_path / "deep.jsonl"
    src.write_text('{"text": "a", "x": ' + "[" * 300 + "]" * 300 + "}\n")
    r = run_cli(*[a.format(out=tmp_path / "o") for a in args[:1]], src, *[a.format(out=tmp_path / "o") for a in args[1:]])
    assert r.returncode == 1, r.stderr
    assert b"nested too deeply" in r.stderr and b"internal error" not in r.stderr
