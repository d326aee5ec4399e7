"""Block and byte-range checking: the same report and rejects whatever the workers or cuts,
token limits with a real tokenizer, and `split --validate` accounting for every record."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import orjson
import pytest
from conftest import concat_shards, run_cli
from crashkit import final_files, run_with_fault
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tokens import build_word_tokenizer, word_count

from shardkit.core.blocks import BlockReader
from shardkit.core.errors import UsageError
from shardkit.pipeline.driver import split
from shardkit.pipeline.scan import validate_files
from shardkit.pipeline.shard import SplitOptions
from shardkit.records.check import Checker, CheckOptions, Checks, ranges
from shardkit.records.validate import Report, chatgate

GOOD = b'{"messages":[{"role":"user","content":"hi there"},{"role":"assistant","content":"hello"}]}'
WARN = b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"source":"x"}'
BAD_ROLE = b'{"messages":[{"role":"bot","content":"x"}]}'
BAD_JSON = b'{"messages": [{"role": "us'
NOT_UTF8 = b'{"text": "\xff\xfe"}'
KINDS_OF_LINE = {"good": GOOD, "warn": WARN, "role": BAD_ROLE, "json": BAD_JSON, "utf8": NOT_UTF8, "blank": b"", "space": b"  \r"}
INVALID = {"role", "json", "utf8"}


def mixed_lines(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    names = list(KINDS_OF_LINE)
    weights = [60, 10, 5, 5, 3, 4, 2]
    out = []
    for i in range(n):
        name = rng.choices(names, weights)[0]
        line = KINDS_OF_LINE[name]
        if name == "good":  # vary lengths so cuts land everywhere
            line = GOOD.replace(b"hi there", b"hi " + b"x" * rng.randint(0, 300) + str(i).encode())
        out.append((name, line))
    return out


def write_lines(path: Path, lines: list[tuple[str, bytes]], final_newline: bool = True) -> bytes:
    data = b"\n".join(line for _, line in lines) + (b"\n" if final_newline else b"")
    path.write_bytes(data)
    return data


def sequential_report(path: Path, **kw) -> dict:
    return validate_files([str(path)], kind="chat", jobs=1, **kw).to_dict()


# ---------------------------------------------------------------- byte ranges


@pytest.mark.parametrize(("piece", "n"), [(1, 40), (97, 300), (4096, 600), (1 << 20, 600)])
def test_ranges_cover_every_line_once_and_match_one_pass(tmp_path: Path, piece: int, n: int) -> None:
    lines = mixed_lines(n, seed=piece)
    path = tmp_path / "in.jsonl"
    data = write_lines(path, lines, final_newline=False)
    expected = Report(max_examples=5)
    bad_expected = []
    with Checks(CheckOptions(kind="chat"), 1) as one:
        with open(path, "rb") as f:
            for block, verdict in one.checked(BlockReader(f, 512), str(path)):
                expected.merge(verdict.report)
                bad_expected += [(b.line, block.offset + b.start, b.code) for b in verdict.bad]
    got = Report(max_examples=5)
    bad_got, raws = [], []
    with Checks(CheckOptions(kind="chat"), 2) as two:
        for part in two.checked_file(str(path), str(path), len(data), want_raw=True, piece=piece):
            got.merge(part.report, line_shift=part.line_shift)
            bad_got += [(b.line, b.start, b.code) for b in part.bad]
            raws += part.raws
    assert got.to_dict() == expected.to_dict()
    assert bad_got == bad_expected
    assert got.records + got.blank == len(lines)
    invalid_lines = [line for name, line in lines if name in INVALID]
    assert [r.rstrip(b"\n") for r in raws] == invalid_lines
    assert got.invalid == len(invalid_lines)


def test_ranges_split_the_file_without_gaps() -> None:
    cuts = ranges(10_000_000, 2, 3_000_000)
    assert cuts[0][0] == 0 and cuts[-1][1] == 10_000_000
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:], strict=False))
    assert ranges(0, 2) == []


def test_validate_with_workers_equals_one_process(tmp_path: Path) -> None:
    """The CLI path: --jobs 2 on a file large enough for byte ranges gives the same report
    and rejects file as --jobs 1."""
    rng = random.Random(3)
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        size = 0
        i = 0
        while size < 34 << 20:  # over POOL_MIN_BYTES
            name = "role" if i % 997 == 0 else ("blank" if i % 1499 == 0 else "good")
            line = KINDS_OF_LINE[name] if name != "good" else GOOD.replace(b"hi there", b"y" * rng.randint(100, 5000))
            f.write(line + b"\n")
            size += len(line) + 1
            i += 1
    r1 = run_cli("validate", path, "--kind", "chat", "--json", "-j", "1", "--rejects", tmp_path / "r1.jsonl")
    r2 = run_cli("validate", path, "--kind", "chat", "--json", "-j", "2", "--rejects", tmp_path / "r2.jsonl")
    assert r1.returncode == r2.returncode == 1, r2.stderr
    d1, d2 = orjson.loads(r1.stdout), orjson.loads(r2.stdout)
    d1.pop("rejects"), d2.pop("rejects")
    assert d1 == d2
    assert d1["records"]["invalid"] == len(range(0, i, 997))
    assert (tmp_path / "r1.jsonl").read_bytes() == (tmp_path / "r2.jsonl").read_bytes()


# ---------------------------------------------------------------- tokens


def test_max_tokens_flags_long_records(tmp_path: Path) -> None:
    tok = build_word_tokenizer(tmp_path / "tok" / "tokenizer.json")
    short = {"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "a dog"}]}
    long = {"messages": [{"role": "user", "content": "the cat " * 20}, {"role": "assistant", "content": "ok"}]}
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (short, long, short)))
    limit = 10
    n_long = word_count("the cat " * 20) + word_count("ok")
    assert word_count("the cat") + word_count("a dog") <= limit < n_long
    result = validate_files([str(path)], kind="chat", max_tokens=limit, tokenizer=tok.parent, rejects=tmp_path / "r.jsonl")
    d = result.to_dict()
    assert d["records"] == {"read": 3, "valid": 2, "invalid": 1, "blank": 0}
    issue = next(i for i in d["issues"] if i["code"] == "too_many_tokens")
    assert issue["examples"][0]["line"] == 2
    assert issue["examples"][0]["message"] == f"{n_long:,} tokens, over --max-tokens {limit:,}"
    rejected = orjson.loads((tmp_path / "r.jsonl").read_bytes())
    assert rejected["line"] == 2 and orjson.loads(rejected["raw"]) == long

    out = tmp_path / "out"
    r = run_cli("split", path, "-o", out, "-n", "10", "--validate", "chat", "--max-tokens", str(limit), "--tokenizer", tok, "--json")
    assert r.returncode == 0, r.stderr
    s = orjson.loads(r.stdout)
    assert s["counts"] == {"read": 3, "written": 2, "train": 2, "validation": 0, "rejected": 1, "duplicates": 0, "excluded": 0, "blank": 0}


def test_token_options_need_each_other(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs --tokenizer"):
        CheckOptions(kind="chat", max_tokens=5)
    with pytest.raises(UsageError, match="needs --max-tokens"):
        CheckOptions(kind="chat", tokenizer="x")
    r = run_cli("split", "x.jsonl", "-o", tmp_path / "o", "-n", "1", "--max-tokens", "5")
    assert r.returncode == 2 and b"--validate" in r.stderr


def test_validate_option_picks_kind_or_schema(tmp_path: Path) -> None:
    assert CheckOptions.from_spec("chat").kind == "chat"
    assert CheckOptions.from_spec("auto").kind == "auto"
    assert CheckOptions.from_spec("s.json").schema == "s.json"
    with pytest.raises(UsageError, match="did you mean 'chat'"):
        CheckOptions.from_spec("chats")


# ---------------------------------------------------------------- split --validate


_runs = itertools.count()


def check_split(tmp_path: Path, lines: list[tuple[str, bytes]], options: SplitOptions, jobs: int, tag: str):
    src = tmp_path / "in.jsonl"
    write_lines(src, lines)
    out = tmp_path / f"out-{tag}"
    result = split([src], out, options, jobs=jobs)
    c = result.counts
    valid = [line for name, line in lines if name in ("good", "warn")]
    invalid = [line for name, line in lines if name in INVALID]
    blank = [line for name, line in lines if name in ("blank", "space")]
    # every record accounted for, by category
    assert c["read"] == len(lines) == c["written"] + c["rejected"] + c["blank"]
    assert (c["written"], c["rejected"], c["blank"]) == (len(valid), len(invalid), len(blank))
    assert concat_shards(out) == b"".join(line + b"\n" for line in valid)
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()] if invalid else []
    assert [r.get("raw", "").encode() or None for r in rejects if "raw" in r] == [x for x in invalid if x != NOT_UTF8]
    assert len(rejects) == len(invalid)
    numbers = [i + 1 for i, (name, _) in enumerate(lines) if name in INVALID]
    assert [r["line"] for r in rejects] == numbers
    return final_files(out)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    max_records=st.one_of(st.none(), st.integers(1, 50)),
    max_bytes=st.one_of(st.none(), st.integers(50, 5000)),
    block=st.sampled_from([64, 700, 1 << 20]),
)
def test_split_validate_conserves_every_record(tmp_path: Path, seed, n, max_records, max_bytes, block) -> None:
    if max_records is None and max_bytes is None:
        max_records = 7
    lines = mixed_lines(n, seed)
    options = SplitOptions(max_records=max_records, max_bytes=max_bytes, block_size=block, check=CheckOptions(kind="chat"),
                           allow_empty=True)  # every record rejected is a case here
    check_split(tmp_path, lines, options, 1, str(next(_runs)))


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_split_validate_with_workers_writes_the_same_files(tmp_path: Path, monkeypatch, workers: str) -> None:
    """Chat blocks go to threads (the compiled gate releases the GIL); kinds checked in
    Python go to processes, here forced for chat too: both write what one process does."""
    lines = mixed_lines(3000, seed=11)
    options = SplitOptions(max_records=200, block_size=4096, check=CheckOptions(kind="chat"))
    one = check_split(tmp_path, lines, options, 1, "one")
    if workers == "processes":
        monkeypatch.setattr(Checker, "scans_without_gil", property(lambda self: False))
    with Checks(CheckOptions(kind="chat"), 2) as checks:
        assert checks.in_threads == (workers == "threads" and chatgate is not None)
    two = check_split(tmp_path, lines, options, 2, "two")
    assert one.keys() == two.keys()
    for name in one:
        if name != "manifest.json":
            assert one[name] == two[name], name
    m1, m2 = orjson.loads(one["manifest.json"]), orjson.loads(two["manifest.json"])
    m1.pop("created_at"), m2.pop("created_at")
    assert m1 == m2
    assert m1["params"]["validate"]["kind"] == "chat"


def test_kinds_checked_in_python_use_processes() -> None:
    for options in (CheckOptions(kind="preference"), CheckOptions(kind="kto")):
        with Checks(options, 2) as checks:
            assert not checks.in_threads
    with Checks(CheckOptions(kind="chat"), 1) as checks:
        assert not checks.in_threads  # one job: checked on the caller's thread


def test_split_validate_resumes_after_a_crash(tmp_path: Path) -> None:
    lines = mixed_lines(2000, seed=5)
    src = tmp_path / "in.jsonl"
    write_lines(src, lines)
    args = ["split", src, "-n", "150", "--validate", "chat"]
    ref = tmp_path / "ref"
    assert run_cli(*args, "-o", ref).returncode == 0
    out = tmp_path / "out"
    r = run_with_fault([*args, "-o", out], "after:shard_commit:4")
    assert r.returncode != 0
    r = run_with_fault([*args, "-o", out, "--resume"], "")
    assert r.returncode == 0, r.stderr
    got, want = final_files(out), final_files(ref)
    assert got.keys() == want.keys()
    for name in want:
        if name != "manifest.json":
            assert got[name] == want[name], name


def test_split_validate_schema(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_bytes(orjson.dumps({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "a"}\n{"text": 5}\n{"x": 1}\n{"text": "b"}\n')
    r = run_cli("split", src, "-o", tmp_path / "o", "-n", "10", "--validate", schema, "--json")
    assert r.returncode == 0, r.stderr
    s = orjson.loads(r.stdout)
    assert s["counts"] == {"read": 4, "written": 2, "train": 2, "validation": 0, "rejected": 2, "duplicates": 0, "excluded": 0, "blank": 0}
    rejects = [orjson.loads(x) for x in (tmp_path / "o" / "rejects.jsonl").read_bytes().splitlines()]
    assert [(x["line"], x["code"]) for x in rejects] == [(2, "schema"), (3, "schema")]
    assert rejects[0]["reason"] == "text: 5 is not of type 'string'"


def test_split_training_flags_and_overlap_via_cli(tmp_path: Path) -> None:
    """The CLI wiring of the pipeline and of `overlap` (the logic is tested in test_pipeline)."""
    lines = [GOOD.replace(b"hi there", b"hi %d" % i) for i in range(300)]
    src = tmp_path / "a.jsonl"
    src.write_bytes(b"\n".join(lines + lines[:50]) + b"\n")
    ev = tmp_path / "eval.jsonl"
    ev.write_bytes(b"\n".join(lines[:20]) + b"\n")
    args = ["split", src, "-n", "100", "--shuffle", "--seed", "3", "--dedup", "exact", "--holdout", "0.2",
            "--exclude", ev, "--json"]
    r1, r2 = run_cli(*args, "-o", tmp_path / "o1"), run_cli(*args, "-o", tmp_path / "o2")
    assert r1.returncode == r2.returncode == 0, r1.stderr
    s = orjson.loads(r1.stdout)
    c = s["counts"]
    assert (c["read"], c["duplicates"], c["excluded"], c["written"]) == (350, 30, 40, 280)
    assert {f["split"] for f in s["files"]} == {"train", "validation"}
    assert final_files(tmp_path / "o1").keys() == final_files(tmp_path / "o2").keys()
    for name, data in final_files(tmp_path / "o1").items():
        if name != "manifest.json":
            assert final_files(tmp_path / "o2")[name] == data
    assert run_cli("verify", tmp_path / "o1").returncode == 0
    r = run_cli("overlap", src, "--against", ev, "--json")
    assert r.returncode == 1 and orjson.loads(r.stdout)["overlapping_eval_records"] == 20
    assert run_cli("split", src, "-o", tmp_path / "o3", "-n", "5", "--seed", "1").returncode == 2


@pytest.mark.parametrize("examples", [0, 1, 5])
def test_check_lines_report_equals_checking_each_record(examples):
    """The fast paths of check_lines (the gate, the extra-keys gate, its counted-only tail
    past the examples) give exactly the report of checking and adding every record."""
    from shardkit.records.validate import Validator

    rng = random.Random(7)
    shapes = [
        {"meta": {"s": 1}},
        {"source": "web", "lang": "en"},
        {"lang": "en", "source": "web"},
        {},
        {"sourse": 1},
    ]
    lines = []
    for i in range(400):
        rec = {"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}]}
        rec.update(rng.choice(shapes))
        if i % 37 == 5:
            rec["messages"][1]["role"] = "bot"  # invalid, with the extra keys' warnings too
        if i % 53 == 7:
            lines.append(b"not json")
            continue
        lines.append(orjson.dumps(rec))
    data = b"\n".join(lines) + b"\n"
    checker = Checks(CheckOptions(kind="chat", examples=examples), 1).local
    verdict = checker.check_lines(data, 1, "f.jsonl")
    reference = Report(max_examples=examples)
    v = Validator("chat")
    for n, raw in enumerate(lines, start=1):
        reference.add("f.jsonl", n, v.check(raw))
    assert verdict.report.to_dict() == reference.to_dict()
    assert sorted(b.line for b in verdict.bad) == [n for n, raw in enumerate(lines, start=1) if not v.check(raw).ok]
