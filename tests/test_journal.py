"""The queue journal: one line per append, transactions, torn lines, rotation, many processes."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest

from shardkit.core.errors import InputError
from shardkit.queue.journal import BadLine, Journal, read_entries_from

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ROTATED = re.compile(r"journal-\d{8}T\d{6}(-\d+)?\.jsonl\.gz")


def lines_of(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def run_py(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60, **kw)


# ---------------------------------------------------------------- appending


def test_append_writes_one_json_line_per_call(tmp_path):
    j = Journal.for_root(tmp_path)
    first = j.append("claim", id="abc", name="a.jsonl", from_="normal", to="processing", worker="gpu0", reason=None)
    j.append("complete", id="abc", records=10, sha256="f" * 64, path=tmp_path / "x")

    assert j.path == tmp_path / ".shardkit" / "journal.jsonl"
    raw = j.path.read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n")
    entries = lines_of(j.path)
    assert list(entries[0]) == ["ts", "op", "id", "name", "from", "to", "worker"]  # None left out
    assert entries[0] == first
    assert TS.fullmatch(entries[0]["ts"])
    assert entries[1]["op"] == "complete" and entries[1]["records"] == 10
    assert entries[1]["path"] == str(tmp_path / "x")
    assert list(j.iter_entries()) == entries


def test_reserved_and_bad_fields_are_refused(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(ValueError, match="reserved"):
        j.append("claim", ts="now")
    with pytest.raises(ValueError, match="reserved"):
        j.append("claim", tx="x")
    with pytest.raises(TypeError):
        j.append("claim", thing=object())
    with pytest.raises(ValueError, match="non-empty"):
        j.append("")
    assert not j.path.exists() or j.path.read_bytes() == b""


def test_journal_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        j = Journal(tmp_path / "journal.jsonl")
        j.append("init")
    finally:
        os.umask(old)
    assert j.path.stat().st_mode & 0o777 == 0o640


def test_a_write_cut_short_leaves_no_half_line(tmp_path):
    """RLIMIT_FSIZE makes the write stop half way (EFBIG): the journal is truncated back."""
    path = tmp_path / "journal.jsonl"
    Journal(path).append("first")
    size = path.stat().st_size
    code = (
        "import resource, signal, sys\n"
        "from shardkit.queue.journal import Journal\n"
        "from shardkit.core.errors import InputError\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 100}, {size + 100}))\n"
        "try:\n"
        "    Journal(sys.argv[1]).append('big', blob='x' * 5000)\n"
        "except InputError as e:\n"
        "    print('refused:', e)\n"
    )
    r = run_py(code, str(path))
    assert b"refused:" in r.stdout, r.stderr
    assert path.stat().st_size == size
    assert [e["op"] for e in Journal(path).iter_entries()] == ["first"]


def test_a_journal_in_an_unwritable_place_raises_input_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError):
        Journal(blocker / "journal.jsonl").append("x")


# ---------------------------------------------------------------- transactions


def test_transaction_writes_intent_steps_and_commit(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    with j.transaction("split", id="p1", name="big.jsonl", children=2) as tx:
        tx.step("publish", name="big-00000.jsonl", to="normal")
        tx.step("publish", name="big-00001.jsonl", to="normal")
    entries = lines_of(j.path)
    assert [(e["op"], e["phase"]) for e in entries] == [
        ("split", "intent"), ("publish", "step"), ("publish", "step"), ("split", "commit"),
    ]
    assert {e["tx"] for e in entries} == {tx.id}
    assert entries[0]["name"] == "big.jsonl" and entries[0]["children"] == 2
    assert entries[-1]["steps"] == 2
    assert j.open_intents() == []


def test_transaction_aborts_on_exception_and_reraises(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with j.transaction("retry", names=["a", "b"]) as tx:
            tx.step("move", name="a")
            raise RuntimeError("disk on fire")
    last = lines_of(j.path)[-1]
    assert last["phase"] == "abort" and last["tx"] == tx.id
    assert last["error"] == "RuntimeError: disk on fire" and last["steps"] == 1
    assert j.open_intents() == []


def test_a_killed_process_leaves_an_open_intent_with_its_steps(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    with j.transaction("prune"):
        pass
    code = (
        "import os, signal, sys\n"
        "from shardkit.queue.journal import Journal\n"
        "j = Journal(sys.argv[1])\n"
        "with j.transaction('split', name='big.jsonl') as tx:\n"
        "    tx.step('publish', name='big-00000.jsonl')\n"
        "    print(tx.id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = run_py(code, str(path))
    assert r.returncode == -signal.SIGKILL
    [intent] = j.open_intents()
    assert intent.tx == r.stdout.decode().strip()
    assert intent.op == "split" and intent.intent["name"] == "big.jsonl"
    assert [s["name"] for s in intent.steps] == ["big-00000.jsonl"]
    # doctor closes it once it has finished or undone the work
    closed = j.resolve(intent, "commit", recovered=True)
    assert (closed["op"], closed["phase"], closed["tx"], closed["recovered"]) == ("split", "commit", intent.tx, True)
    assert j.open_intents() == []
    with pytest.raises(ValueError, match="commit or abort"):
        j.resolve(intent, "step")


def test_begin_stays_open_through_an_exception_until_commit_or_abort(tmp_path):
    """begin(): for work rolled forward after any failure, so an exception does not abort it."""
    j = Journal(tmp_path / "journal.jsonl")
    tx = j.begin("ingest-split", id="p1", work=".shardkit/tmp/w1")
    try:
        tx.step(op="publish", name="a-00000.jsonl")
        raise OSError("disk full")
    except OSError:
        pass
    [intent] = j.open_intents()
    assert intent.tx == tx.id and intent.intent["work"] == ".shardkit/tmp/w1"
    assert [s["op"] for s in intent.steps] == ["publish"]
    tx.step("publish", name="a-00001.jsonl")
    assert tx.commit(children=2)["steps"] == 2
    assert j.open_intents() == []
    other = j.begin("retry")
    assert [i.tx for i in j.open_intents()] == [other.id]
    assert other.abort(reason="nothing to retry")["phase"] == "abort"
    assert j.open_intents() == []


# ---------------------------------------------------------------- torn and bad lines


def test_torn_last_line_is_skipped_reported_and_not_glued_to_the_next(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.append("a")
    with open(j.path, "ab") as f:
        f.write(b'{"ts":"2026-01-01T00:00:00.000Z","op":"cl')  # a crash mid-write
    bad: list[BadLine] = []
    assert [e["op"] for e in j.iter_entries(bad.append)] == ["a"]
    assert len(bad) == 1 and "torn" in bad[0].reason and bad[0].line == 2
    assert [e["op"] for e in j.tail(5, on_bad=lambda b: None)] == ["a"]

    j.append("b")
    bad.clear()
    assert [e["op"] for e in j.iter_entries(bad.append)] == ["a", "b"]
    assert len(bad) == 1 and bad[0].line == 2 and "not JSON" in bad[0].reason


def test_garbage_lines_are_reported_with_their_line_number(tmp_path, caplog):
    j = Journal(tmp_path / "journal.jsonl")
    j.append("a")
    with open(j.path, "ab") as f:
        f.write(b"not json\n[1, 2]\n\n")
    j.append("b")
    bad: list[BadLine] = []
    assert [e["op"] for e in j.iter_entries(bad.append)] == ["a", "b"]
    assert [(b.line, b.offset is not None) for b in bad] == [(2, True), (3, True)]
    assert "not a journal entry" in bad[1].reason
    assert str(bad[0]).startswith(f"{j.path}:2: not JSON")
    with caplog.at_level("WARNING"):
        list(j.iter_entries())  # default: a logged warning, never an exception
    assert "not JSON" in caplog.text


def test_reading_a_missing_journal_gives_nothing(tmp_path):
    j = Journal(tmp_path / "nowhere" / "journal.jsonl")
    assert list(j.iter_entries()) == [] and j.tail(3) == [] and j.open_intents() == []
    assert j.disk_usage() == 0


# ---------------------------------------------------------------- rotation


def test_rotation_past_max_bytes_gzips_and_keeps_everything_in_order(tmp_path):
    j = Journal(tmp_path / "journal.jsonl", max_bytes=1000)
    for i in range(100):
        j.append("put", i=i, pad="x" * 20)
    rotated = j.rotated_files()
    assert len(rotated) >= 5
    assert all(ROTATED.fullmatch(p.name) for p in rotated)
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in rotated] + ["journal.jsonl", "journal.jsonl.lock"])
    for p in [*rotated, j.path]:
        size = len(gzip.decompress(p.read_bytes())) if p.suffix == ".gz" else p.stat().st_size
        assert 0 < size <= 1000
    assert [e["i"] for e in j.iter_entries()] == list(range(100))
    assert [e["i"] for e in j.tail(30)] == list(range(70, 100))  # spans rotated files
    assert [e["i"] for e in j.tail(1000)] == list(range(100))
    assert j.tail(0) == []
    assert [e["i"] for e in read_entries_from(rotated[0])] == [e["i"] for e in j.iter_entries()][: len(list(read_entries_from(rotated[0])))]
    assert j.disk_usage() == sum(p.stat().st_size for p in [*rotated, j.path])


def test_rotation_never_replaces_and_sorts_after_existing_files(tmp_path):
    """A rotated file from the future (clock went back) is kept; the new one sorts after it."""
    j = Journal(tmp_path / "journal.jsonl")
    future = tmp_path / "journal-29991231T235959.jsonl.gz"
    future.write_bytes(gzip.compress(b'{"ts":"2999-12-31T23:59:59.000Z","op":"future"}\n'))
    before = future.read_bytes()
    j.append("now")
    new = j.rotate()
    assert new == tmp_path / "journal-29991231T235959-1.jsonl.gz"
    assert future.read_bytes() == before
    assert [e["op"] for e in j.iter_entries()] == ["future", "now"]
    assert j.rotate() is None  # nothing to rotate: the current file is gone or empty
    j.append("later")
    assert [e["op"] for e in j.iter_entries()] == ["future", "now", "later"]


def test_rotation_finishes_what_a_crash_left(tmp_path):
    """A plain rotated file (killed before gzip), a twin already gzipped, a temp: all cleaned up."""
    j = Journal(tmp_path / "journal.jsonl")
    plain = tmp_path / "journal-20200101T000000.jsonl"
    plain.write_bytes(b'{"ts":"2020-01-01T00:00:00.000Z","op":"old"}\n')
    twin = tmp_path / "journal-20200102T000000.jsonl"
    twin.write_bytes(b'{"ts":"2020-01-02T00:00:00.000Z","op":"twin"}\n')
    (tmp_path / (twin.name + ".gz")).write_bytes(gzip.compress(twin.read_bytes()))
    temp = tmp_path / ".shardkit-tmp-999999-0-journal-20200101T000000.jsonl.gz"
    temp.write_bytes(b"half a gzip")
    other_temp = tmp_path / ".shardkit-tmp-999999-0-items.json"
    other_temp.write_bytes(b"{}")  # not the journal's: left alone
    j.append("new")

    assert [e["op"] for e in j.iter_entries()] == ["old", "twin", "new"]  # the twin once
    j.rotate()
    names = sorted(os.listdir(tmp_path))
    assert plain.name not in names and twin.name not in names and temp.name not in names
    assert other_temp.name in names
    assert [e["op"] for e in j.iter_entries()] == ["old", "twin", "new"]
    assert all(p.suffix == ".gz" for p in j.rotated_files())


def test_threads_sharing_one_journal_do_not_interleave(tmp_path):
    j = Journal(tmp_path / "journal.jsonl", max_bytes=4096, fsync=False)

    def work(t: int) -> None:
        for i in range(150):
            j.append("put", t=t, i=i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad: list[BadLine] = []
    seen = Counter((e["t"], e["i"]) for e in j.iter_entries(bad.append))
    assert not bad
    assert seen == Counter({(t, i): 1 for t in range(6) for i in range(150)})


WRITER = """
import sys, time
from pathlib import Path
from shardkit.queue.journal import Journal
path, worker, n, max_bytes, pad, go = sys.argv[1:]
j = Journal(path, max_bytes=int(max_bytes), fsync=True)
while not Path(go).exists():
    time.sleep(0.001)
for i in range(int(n)):
    j.append("put", worker=worker, i=i, pad="x" * int(pad))
"""


def start_writers(tmp_path: Path, path: Path, *, workers: int, n: int, max_bytes: int, pad: int) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{w}", str(n), str(max_bytes), str(pad), str(go)])
        for w in range(workers)
    ]
    go.touch()
    return procs


def check_prefixes(entries: list[dict], workers: int) -> None:
    """Each writer appends in order, so any consistent view holds a prefix of each one's lines."""
    for w in range(workers):
        seq = [e["i"] for e in entries if e["worker"] == f"w{w}"]
        assert seq == list(range(len(seq))), f"w{w}: gap, duplicate or disorder"


def test_concurrent_processes_lose_no_line_across_rotations(tmp_path):
    path = tmp_path / "j" / "journal.jsonl"
    procs = start_writers(tmp_path, path, workers=4, n=500, max_bytes=600, pad=0)
    j = Journal(path)
    bad: list[BadLine] = []
    reads = 0
    while any(p.poll() is None for p in procs):  # readers during rotations see consistent snapshots
        check_prefixes(list(j.iter_entries(bad.append)), 4)
        reads += 1
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    entries = list(j.iter_entries(bad.append))
    assert not bad, bad[:3]
    assert reads > 0
    seen = Counter((e["worker"], e["i"]) for e in entries)
    assert seen == Counter({(f"w{w}", i): 1 for w in range(4) for i in range(500)})  # each exactly once
    check_prefixes(entries, 4)  # and in the order each process wrote them, across files
    rotated = j.rotated_files()
    assert len(rotated) > 100
    assert all(ROTATED.fullmatch(p.name) for p in rotated)
    leftovers = [n for n in os.listdir(path.parent) if n.startswith(".") or (n.endswith(".jsonl") and n != "journal.jsonl")]
    assert not leftovers


def test_concurrent_lines_bigger_than_pipe_buf_stay_whole(tmp_path):
    path = tmp_path / "journal.jsonl"
    assert [p.wait(timeout=120) for p in start_writers(tmp_path, path, workers=4, n=60, max_bytes=200_000, pad=20_000)] == [0] * 4
    bad: list[BadLine] = []
    entries = list(Journal(path).iter_entries(bad.append))
    assert not bad and len(entries) == 240
    assert all(len(e["pad"]) == 20_000 for e in entries)
