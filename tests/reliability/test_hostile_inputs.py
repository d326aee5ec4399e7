"""Hostile inputs: hypothesis-generated files and a fixed corpus.

Properties (library, in process, hypothesis): for any bytes, `validate` and `split` (with
and without `--validate`) raise nothing but a ShardkitError, and conserve records:
read = valid + invalid, read + blank = physical lines; the shards plus the rejects hold
every non-blank line exactly once, in order, byte for byte. The size parser and the shard
name template raise nothing but UsageError, and a template that passes never yields a name
that leaves OUT, is hidden, holds a control character or is too long for the filesystem.

The fixed corpus goes through the real CLI: exit 0 or 1, never a traceback.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import orjson
import pytest
import torture as T
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from shardkit.core.errors import ShardkitError, UsageError
from shardkit.core.io import parse_size
from shardkit.pipeline.driver import split
from shardkit.pipeline.scan import validate_files
from shardkit.pipeline.shard import SplitOptions, shard_name
from shardkit.records.check import CheckOptions
from shardkit.store.manifest import verify

_SETTINGS = settings(max_examples=T.FUZZ_EXAMPLES, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def FUZZ(test):  # noqa: N802 - reads like the settings decorator it wraps
    """SHARDKIT_FUZZ_EXAMPLES examples, reproducible from SHARDKIT_SEED (vary it to explore)."""
    return seed(T.SEED)(_SETTINGS(test))

# ---------------------------------------------------------------- generated JSONL

valid = st.integers(0, 10**6).map(lambda i: T.chat_record("h", i))
fragments = st.one_of(
    valid,
    valid.flatmap(lambda r: st.integers(1, max(1, len(r) - 1)).map(lambda k: r[:k])),  # truncated
    st.binary(max_size=200),  # random bytes (may hold \n: several lines)
    st.sampled_from([
        b"", b"   ", b"\t", b"\r", b"\x0b\x0c", b"\x00", b"\xef\xbb\xbf", b"\xef\xbb\xbf" + T.chat_record("bom", 0),
        b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
        b'{"messages": [{"role": "user", "content": NaN}]}', b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": 1e999}',
        b'{"messages": [], "messages": [{"role": "user", "content": "dup"}]}',
        b'{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}',
        b"[" * 3000 + b"]" * 3000, b'{"a":' * 2000 + b"1" + b"}" * 2000, b"[" * 100_000,
        b"null", b"[]", b"{}", b'"str"', b"123", b"true",
        b'{"text": "' + b"\\u0000" * 10 + b'"}', b'{"text": "\\ud800"}',
    ]),
    st.integers(10_000, 300_000).map(lambda n: b'{"text": "' + b"x" * n + b'"}'),  # long lines
)


@st.composite
def jsonl_files(draw) -> bytes:
    parts = draw(st.lists(fragments, max_size=25))
    sep = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = sep.join(parts)
    if draw(st.booleans()):
        data += b"\n"
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data  # a BOM at the very start
    return data


def physical(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


class Scratch:
    def __enter__(self) -> Path:
        self.d = Path(tempfile.mkdtemp(prefix="shardkit-fuzz-"))
        return self.d

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.d, ignore_errors=True)


@FUZZ
@given(jsonl_files(), st.sampled_from(["auto", "chat", "text"]))
def test_validate_conserves_records(data, kind):
    with Scratch() as d:
        src = d / "in.jsonl"
        src.write_bytes(data)
        try:
            result = validate_files([str(src)], kind=kind, max_errors=10**9, rejects=d / "bad.jsonl", jobs=1)
        except ShardkitError:
            return  # a documented refusal (exit code attached): fine, never a crash
        rec = result.report.to_dict()["records"]
        lines = physical(data)
        nonblank = [x for x in lines if x.strip()]
        assert rec["read"] == rec["valid"] + rec["invalid"] == len(nonblank), rec
        assert rec["blank"] == len(lines) - len(nonblank), rec
        bad = (d / "bad.jsonl").read_bytes().splitlines() if (d / "bad.jsonl").exists() else []
        assert len(bad) == rec["invalid"]
        for line in bad:
            e = orjson.loads(line)
            assert T.reject_raw(e) == lines[e["line"] - 1], e["line"]


@FUZZ
@given(jsonl_files(), st.integers(1, 7), st.sampled_from([None, 300, 5000]), st.sampled_from(["own-shard", "reject"]),
       st.sampled_from([None, "auto", "chat"]))
def test_split_conserves_records(data, max_records, max_bytes, oversize, check):
    with Scratch() as d:
        src = d / "in.jsonl"
        src.write_bytes(data)
        options = SplitOptions(max_records=max_records, max_bytes=max_bytes, oversize=oversize,
                               check=CheckOptions(kind=check) if check else None)
        try:
            result = split([str(src)], d / "out", options, jobs=1)
        except ShardkitError:
            return
        c = result.counts
        assert c["read"] == c["written"] + c["rejected"] + c["blank"], c
        lines = physical(data)
        expected = [(n, x) for n, x in enumerate(lines, 1) if x.strip()]
        rejects = {}
        m = result.manifest
        if m.get("rejects"):
            for line in (d / "out" / m["rejects"]["path"]).read_bytes().splitlines():
                e = orjson.loads(line)
                rejects[e["line"]] = T.reject_raw(e)
        # records end at b"\n" only (bytes.splitlines would also cut at a lone b"\r")
        shard_lines = [x + b"\n" for f in m["files"] for x in physical((d / "out" / f["path"]).read_bytes())]
        kept = [x + b"\n" for n, x in expected if n not in rejects]
        assert shard_lines == kept, "shards are not the non-rejected lines, in order, byte for byte"
        assert all(rejects[n] == lines[n - 1] for n in rejects)
        assert set(rejects) <= {n for n, _ in expected}
        assert c["written"] == len(kept) and c["rejected"] == len(rejects)
        if check is None and oversize == "own-shard":
            assert not rejects
        assert verify(d / "out" / "manifest.json").ok


# ---------------------------------------------------------------- sizes and name templates


@FUZZ
@given(st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*[0-9]{1,400}(\.[0-9]{0,30})?\s*(|b|k|m|g|t|kb|mb|gb|tb|kib|mib|gib|tib|K|M|G|T|MiB|GB)\s*", fullmatch=True),
    st.integers(-(10**30), 10**30),
))
@example("9" * 400)  # a float overflow: inf bytes
@example("1" * 310 + "T")
@example("0.0000001k")
def test_parse_size_only_raises_usage_error(text):
    try:
        n = parse_size(text)
    except UsageError:
        return
    assert isinstance(n, int) and n > 0, (text, n)


template_piece = st.one_of(
    st.sampled_from(["{stem}", "{index}", "{index:05d}", "{index:x}", "{index:c}", "{index:0300d}", "{index[0]}",
                     "{index.real}", "{index.imag.x}", "{stem.upper}", "{stem[0]}", "{stem[99]}", "{0}", "{}", "{",
                     "}", "{{", "}}", "{index!r}", "{index!z}", "{index:>{stem}}", "{index:,}", "{index:/>3}",
                     "{index:.>4}", "/", "..", ".", "\\", "\x00", "\n", "\x1b", "-", ".jsonl", "é", "😀", " "]),
    st.text(max_size=5),
)
templates = st.lists(template_piece, min_size=1, max_size=6).map("".join)


@FUZZ
@given(templates, st.integers(0, 10**6), st.sampled_from(["x", "data", "a" * 40, "in.put"]))
@example("{index[0]}", 0, "x")
@example("{index.imag.x}{index}", 0, "x")
@example("{stem.upper}{index}", 0, "x")
@example("{index:0300d}", 0, "x")
def test_name_template_only_raises_usage_error_and_stays_in_out(template, index, stem):
    try:
        SplitOptions(max_records=1, name=template)
        name = shard_name(template, stem, index)
    except UsageError:
        return
    assert "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith("."), name
    assert not any(ord(ch) < 32 or ch == "\x7f" for ch in name), repr(name)
    assert len(name.encode("utf-8", "surrogateescape")) <= 255, f"{template!r} gives a {len(name.encode())}-byte name"


# ---------------------------------------------------------------- fixed corpus through the CLI

CORPUS = {
    "bom_first_line.jsonl": b"\xef\xbb\xbf" + T.chat_record("bom", 1) + b"\n" + T.chat_record("bom", 2) + b"\n",
    "crlf.jsonl": b"\r\n".join(T.chat_record("crlf", i) for i in range(5)) + b"\r\n",
    "mixed_endings.jsonl": T.chat_record("m", 1) + b"\r\n" + T.chat_record("m", 2) + b"\n\r\n" + T.chat_record("m", 3),
    "duplicate_keys.jsonl": b'{"messages": [{"role": "user", "content": "a"}], "messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}\n',
    "nan_everywhere.jsonl": b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "w": NaN}\n{"w": Infinity}\n{"w": -Infinity}\n{"w": 1e400}\n',
    "deep_100k.jsonl": T.chat_record("d", 0) + b"\n" + b"[" * 100_000 + b"]" * 100_000 + b"\n" + T.chat_record("d", 2) + b"\n",
    "huge_line_20mb.jsonl": T.chat_record("h", 0) + b"\n" + b'{"text": "' + b"z" * 20_000_000 + b'"}\n' + T.chat_record("h", 2) + b"\n",
    "invalid_utf8.jsonl": b'{"text": "\xff\xfe\xfd"}\n{"text": "\xed\xa0\x80"}\n{"text": "ok"}\n',
    "nul_bytes.jsonl": b"\x00" * 50 + b"\n" + T.chat_record("n", 1) + b"\n\x00\n",
    "truncated.jsonl": T.chat_record("t", 0) + b"\n" + T.chat_record("t", 1)[:17],
    "random_bytes.jsonl": bytes(range(256)) * 64,
    "only_whitespace.jsonl": b"\n \n\t\n\r\n\x0b\n\x0c\n",
    "lone_cr.jsonl": T.chat_record("cr", 0) + b"\r" + T.chat_record("cr", 1) + b"\n",
}


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    d = tmp_path_factory.mktemp("corpus")
    cmds = {}
    for name, data in CORPUS.items():
        (d / name).write_bytes(data)
        cmds[(name, "validate")] = ["validate", d / name, "--json", "--rejects", d / f"{name}.bad"]
        # --allow-empty: an input with no record left is refused otherwise (exit 1, tests/test_gates.py);
        # here every input must be read and accounted for, whatever it holds
        cmds[(name, "split")] = ["split", d / name, "-o", d / f"{name}.out", "--max-records", "2", "--json", "--allow-empty"]
        cmds[(name, "split-validate")] = ["split", d / name, "-o", d / f"{name}.vout", "--max-records", "2", "--validate", "auto", "--json", "--allow-empty"]
    with ThreadPoolExecutor(T.JOBS) as pool:
        results = dict(zip(cmds, pool.map(T.run, cmds.values()), strict=True))
    return d, results


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.parametrize("command", ["validate", "split", "split-validate"])
def test_corpus_through_the_cli(corpus_runs, name, command):
    d, results = corpus_runs
    r = results[(name, command)]
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err[-2000:]
    assert r.returncode in ((0, 1) if command == "validate" else (0,)), r.describe()
    lines = physical(CORPUS[name])
    nonblank = [x for x in lines if x.strip()]
    doc = orjson.loads(r.stdout)
    if command == "validate":
        rec = doc["records"]
        assert rec["read"] == rec["valid"] + rec["invalid"] == len(nonblank), rec
        return
    c = doc["counts"]
    assert c["read"] == c["written"] + c["rejected"] + c["blank"] == len(lines), c
    out = d / f"{name}.{'out' if command == 'split' else 'vout'}"
    assert verify(out / "manifest.json").ok
