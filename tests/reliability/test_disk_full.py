"""Disk full: each writer runs under a real write limit and must fail cleanly.

The child gets RLIMIT_FSIZE (with SIGXFSZ ignored, so a write past the limit fails with
EFBIG instead of killing the process) — the same failure path as ENOSPC for the code that
writes: os.write raises OSError. Expected: exit 3, one `shardkit: error:` line naming the
file, no partial file under a final name, the input untouched; and, once the limit is gone,
the documented way to continue (`--resume`, or `doctor --repair` + rerun) finishes the job
with every record exactly once.

A small loop-mounted filesystem would give a true ENOSPC but needs mount privileges; see
docs/RELIABILITY.md.
"""

from __future__ import annotations

import collections
import resource
import signal

import orjson
import pytest
import torture as T

from shardkit.queue.doctor import doctor
from shardkit.queue.state import PRIORITIES, Queue
from shardkit.store.manifest import verify


def limited(nbytes: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return pre


def assert_clean_failure(r: T.Run, name_in_message: str) -> None:
    assert r.returncode == 3, r.describe()
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardkit: error: "), r.err
    assert name_in_message in lines[0], f"the message does not name {name_in_message}: {lines[0]}"
    assert any(w in lines[0] for w in ("EFBIG", "too large", "no space", "No space")), lines[0]
    assert "Traceback" not in r.err and "internal error" not in r.err


def finals(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diskfull-in")
    lines = T.varied_chat_lines("df", 240, seed=T.SEED + 11, max_len=1200)
    lines[100:100] = [T.chat_record("oversize", 0, size=45_000), T.chat_record("oversize", 1, size=45_000)]
    lines[50:50] = list(T.INVALID_CHAT)
    (d / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "tiny.jsonl").write_bytes(b"".join(T.chat_record("tiny", i) + b"\n" for i in range(200)))
    return d / "in.jsonl"


SPLIT_CASES = {
    # what hits the limit: a shard / the rejects file / manifest.json (many tiny shards)
    "shard": (["--max-records", "200"], 60_000),
    "rejects": (["--max-records", "20", "--max-bytes", "30KB", "--oversize", "reject"], 40_000),
    "manifest": (["--max-records", "5"], 5_000),  # on tiny.jsonl
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split_disk_full_then_resume(inputs, tmp_path, case):
    """After the failure OUT holds only whole files the manifest lists (README: "you never
    see a shard the manifest does not list"); `--resume` with room finishes the run."""
    extra, limit = SPLIT_CASES[case]
    if case == "manifest":
        inputs = inputs.with_name("tiny.jsonl")
    before = T.sha256(inputs)
    out = tmp_path / "out"
    args = ["split", inputs, "-o", out, *extra]
    r = T.run(args, preexec=limited(limit))
    assert_clean_failure(r, str(out))
    problems = []
    if T.sha256(inputs) != before:
        problems.append("input changed")
    temps = [n for n in T.hidden_leftovers(out) if not n.startswith(".shardkit-partial-")]
    if temps:
        problems.append(f"temp files left: {temps}")
    m = orjson.loads((out / "manifest.json").read_bytes())
    if m["complete"]:
        problems.append("manifest says complete after a failed run")
    listed = {f["path"] for f in m["files"]}
    unlisted = sorted(set(finals(out)) - {"manifest.json", "SHA256SUMS"} - listed)
    if unlisted:
        problems.append(f"after exit 3, shard(s) under a final name that manifest.json does not list: {unlisted}")
    problems += [f"{f['path']} is partial" for f in m["files"] if T.sha256(out / f["path"]) != f["sha256"]]
    T.ok(T.run([*args, "--resume"]))
    ref = tmp_path / "ref"
    T.ok(T.run(["split", inputs, "-o", ref, *extra]))
    got, want = finals(out), finals(ref)
    assert sorted(got) == sorted(want)
    assert all(got[n] == want[n] for n in want if n != "manifest.json")
    assert verify(out / "manifest.json").ok
    assert not T.hidden_leftovers(out)
    assert not problems, problems


def test_split_validate_disk_full(inputs, tmp_path):
    out = tmp_path / "out"
    r = T.run(["split", inputs, "-o", out, "--max-records", "500", "--validate", "chat", "--jobs", "1"], preexec=limited(50_000))
    assert_clean_failure(r, str(out))
    assert not [n for n in T.hidden_leftovers(out) if n.startswith(".shardkit-tmp-")]


def test_validate_rejects_disk_full(inputs, tmp_path):
    before = T.sha256(inputs)
    big_bad = tmp_path / "bad-in.jsonl"
    big_bad.write_bytes(b"\n".join([b'{"messages": "x' + b"y" * 3000 + b'"}'] * 40) + b"\n")
    rej = tmp_path / "rejects" / "bad.jsonl"
    rej.parent.mkdir()
    r = T.run(["validate", inputs, big_bad, "--kind", "chat", "--rejects", rej, "--jobs", "1"], preexec=limited(20_000))
    assert_clean_failure(r, str(rej))
    assert not rej.exists(), "a partial rejects file under its final name"
    assert not list(rej.parent.iterdir()), f"left behind: {sorted(p.name for p in rej.parent.iterdir())}"
    assert T.sha256(inputs) == before


def make_queue(root, drops: dict[str, int]) -> collections.Counter:
    Queue(root, create=True)
    (root / "shardkit.toml").write_text('settle = "0s"\nmax_records = 100\nkind = "chat"\n')
    records = collections.Counter()
    for name, n in drops.items():
        lines = [T.chat_record(name, i, size=300) + b"\n" for i in range(n)]
        (root / "inbox" / name).write_bytes(b"".join(lines))
        records.update(lines)
    return records


def pending(root) -> collections.Counter:
    got = collections.Counter()
    for prio in PRIORITIES:
        for p in (root / "queue" / prio).iterdir():
            if not p.name.startswith("."):
                got.update(T.records_of(p))
    return got


def test_ingest_disk_full_while_splitting(tmp_path):
    """A drop over max_records is split into shards in .shardkit/tmp first: the limit hits a
    shard. The drop stays in the inbox, whole; nothing half-published; a later ingest
    (with room) takes every record exactly once."""
    root = tmp_path / "q"
    records = make_queue(root, {"big.jsonl": 350, "small.jsonl": 20})
    big = (root / "inbox" / "big.jsonl").read_bytes()
    r = T.run(["queue", "ingest", "--root", root], preexec=limited(20_000))
    assert_clean_failure(r, "big")
    assert (root / "inbox" / "big.jsonl").read_bytes() == big
    assert not [p for p in pending(root) if b"big.jsonl" in p], "a shard of big.jsonl was published"
    assert not list((root / ".shardkit" / "tmp").iterdir()), "split work left in .shardkit/tmp"
    assert not Queue(root).journal.open_intents()
    T.ok(T.run(["queue", "doctor", "--root", root, "--repair"]), (0, 1))
    T.ok(T.run(["queue", "ingest", "--root", root]))
    assert pending(root) == records
    assert doctor(Queue(root)).ok


def test_ingest_disk_full_on_the_journal(tmp_path):
    """The journal cannot grow: the move it would record must not be lost or doubled.
    After `doctor --repair` the queue is consistent and every record is pending once."""
    root = tmp_path / "q"
    records = make_queue(root, {"a.jsonl": 30, "b.jsonl": 40})
    journal = root / ".shardkit" / "journal.jsonl"
    journal.write_bytes(b'{"ts":"2026-01-01T00:00:00.000Z","op":"filler"}\n' * 600)
    r = T.run(["queue", "ingest", "--root", root], preexec=limited(journal.stat().st_size))
    assert_clean_failure(r, "journal.jsonl")
    for name in ("a.jsonl", "b.jsonl"):
        places = [p for p in [root / "inbox" / name, *(root / "queue" / s / name for s in PRIORITIES)] if p.exists()]
        assert len(places) == 1, f"{name} is in {places}"
    T.ok(T.run(["queue", "doctor", "--root", root, "--repair"]), (0, 1))
    T.ok(T.run(["queue", "ingest", "--root", root]))
    assert pending(root) == records
    rep = doctor(Queue(root))
    assert rep.ok, [f.message for f in rep.problems]


def test_manifest_disk_full_on_shards_folder(inputs, tmp_path):
    out = tmp_path / "out"
    T.ok(T.run(["split", inputs.with_name("tiny.jsonl"), "-o", out, "--max-records", "5"]))
    (out / "manifest.json").unlink()
    (out / "SHA256SUMS").unlink()
    data = finals(out)
    r = T.run(["manifest", out], preexec=limited(5_000))
    assert_clean_failure(r, str(out))
    assert finals(out).keys() - {"SHA256SUMS"} == data.keys(), "a partial manifest.json"
    assert {n: finals(out)[n] for n in data} == data, "shards changed"
    assert not T.hidden_leftovers(out)
    if (out / "SHA256SUMS").exists():
        assert not T.sums_problems(out)
    T.ok(T.run(["manifest", out]))
    assert verify(out / "manifest.json").ok


def test_manifest_disk_full_on_queue_root(tmp_path):
    root = tmp_path / "q"
    make_queue(root, {f"d{k}.jsonl": 5 for k in range(60)})
    T.ok(T.run(["queue", "ingest", "--root", root]))
    before = {p: p.read_bytes() for p in (root / "queue" / "normal").iterdir()}
    r = T.run(["manifest", root], preexec=limited(10_000))
    assert_clean_failure(r, str(root))
    assert not (root / "manifest.json").exists(), "a partial queue manifest"
    assert {p: p.read_bytes() for p in (root / "queue" / "normal").iterdir()} == before
    assert not T.hidden_leftovers(root) and not T.hidden_leftovers(root / ".shardkit" / "cache")
    T.ok(T.run(["manifest", root]))
    assert verify(root / "manifest.json").ok


def test_a_disk_full_split_that_wrote_no_shard_leaves_no_empty_sums(inputs, tmp_path):
    """Issue 24.7: the sums go first and were left empty when the first manifest could not be
    written; `sha256sum -c` fails on an empty file."""
    for extra in ([], ["--shuffle"]):
        out = tmp_path / f"out{len(extra)}"
        r = T.run(["split", inputs, "-o", out, "--max-records", "200", *extra], preexec=limited(300))
        assert_clean_failure(r, str(out))
        assert not (out / "SHA256SUMS").exists(), "an empty SHA256SUMS was left"
        assert not (out / "manifest.json").exists()
        T.ok(T.run(["split", inputs, "-o", out, "--max-records", "200", *extra]))  # a rerun takes the folder
