"""What a hostile hunt on the queue found (2026-12-07), each planted as it was found: a file
that trains twice or never completes, a kill doctor could not finish, drops that stopped
ingest, and wrong counts. Real files, real processes; each test fails without its fix."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from conftest import run_cli
from test_queue import drop, make_queue, states

from shardkit.core.errors import ConflictError
from shardkit.queue.doctor import doctor
from shardkit.queue.ingest import ingest
from shardkit.queue.state import Queue
from shardkit.store.manifest import verify


def chat(n: int, tag: str = "") -> bytes:
    return b"".join(orjson.dumps({"messages": [{"role": "user", "content": f"q{tag}{i}"},
                                               {"role": "assistant", "content": "a"}]}) + b"\n" for i in range(n))


def codes(report) -> list[str]:
    return [f.code for f in report.problems]


# ---------------------------------------------------------------- one file, two states


def test_a_second_name_of_a_queued_file_is_removed_not_adopted(tmp_path: Path) -> None:
    """`ln` of a pending file into processing/ (what a link+unlink move cut short leaves)
    was adopted as a new item: one file pending and claimed at once, trained twice."""
    q = make_queue(tmp_path)
    drop(q, "f1.jsonl", chat(3))
    ingest(q)
    os.link(q.dir("normal") / "f1.jsonl", q.dir("processing") / "f1.jsonl")
    later = time.time() + 120  # a name made in the last minute may be a move under way: left
    report = doctor(q, now=later)
    assert "same_file_twice" in codes(report) and "file_without_record" not in codes(report)
    fixed = doctor(q, repair=True, now=later)
    assert any(f.code == "same_file_twice" and f.repaired for f in fixed.findings)
    assert states(q) == {"normal": ["f1.jsonl"]}
    assert (q.dir("normal") / "f1.jsonl").read_bytes() == chat(3)
    assert doctor(q).ok


def test_a_copy_of_a_queued_file_goes_to_quarantine_not_back_in_line(tmp_path: Path) -> None:
    """A hand copy into failed/ was adopted, and `retry --all` queued the data a second time."""
    q = make_queue(tmp_path)
    drop(q, "f1.jsonl", chat(3))
    ingest(q)
    (q.dir("failed") / "again.jsonl").write_bytes(chat(3))
    later = time.time() + 120
    assert "copy_of_queued_file" in codes(doctor(q, now=later))
    doctor(q, repair=True, now=later)
    assert states(q) == {"normal": ["f1.jsonl"], "quarantine": ["again.jsonl"]}
    assert doctor(q).ok
    r = run_cli("queue", "retry", "--all", "--root", q.root)
    assert r.returncode == 0 and states(Queue(q.root)) == {"normal": ["f1.jsonl"], "quarantine": ["again.jsonl"]}


# ---------------------------------------------------------------- names that repeat


def test_a_drop_name_used_again_completes_under_a_free_name(tmp_path: Path) -> None:
    """A daily batch.jsonl: the second one could never complete (completed/batch.jsonl
    exists, exit 4), was requeued as stale and trained again until dead."""
    q = make_queue(tmp_path)
    for day in range(3):
        drop(q, "batch.jsonl", chat(2, tag=f"d{day}-"))
        ingest(q)
        claimed = q.claim("w")
        claimed.complete()
    done = sorted(e.name for e in q.entries(["completed"]))
    assert done == ["batch-2.jsonl", "batch-3.jsonl", "batch.jsonl"]
    contents = {(q.dir("completed") / n).read_bytes() for n in done}
    assert contents == {chat(2, tag=f"d{d}-") for d in range(3)}
    moves = [e for e in q.journal.iter_entries() if e.get("op") == "complete"]
    assert [m.get("as") for m in moves] == [None, "batch-2.jsonl", "batch-3.jsonl"]
    assert doctor(q).ok


def test_a_drop_whose_name_is_pending_is_queued_under_a_free_name(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", chat(2, "a"))
    ingest(q)
    drop(q, "batch.jsonl", chat(2, "b"))
    r = run_cli("queue", "ingest", "--root", q.root)
    assert r.returncode == 0 and b"as batch-2.jsonl" in r.stdout, r.stdout + r.stderr
    assert sorted(states(Queue(q.root))["normal"]) == ["batch-2.jsonl", "batch.jsonl"]


# ---------------------------------------------------------------- tokens


def test_a_token_whose_claim_ended_is_told_so(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    first = q.claim("a")
    q.complete(first.name)  # no token: another process, say
    try:
        q.complete(first.name, first.token)
    except ConflictError as e:
        assert "this token no longer holds the file" in str(e)
    else:
        raise AssertionError("a second complete went through")
    line = [e for e in q.journal.iter_entries() if e.get("op") == "complete"][-1]
    assert line["unverified"] is True and line["worker"] == "a"


def test_fail_and_heartbeat_name_themselves_in_errors(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    for op in ("fail", "heartbeat"):
        r = run_cli("queue", op, "f.jsonl", "--root", q.root)
        assert r.returncode == 4 and f"cannot {op} a file in normal".encode() in r.stderr, r.stderr


# ---------------------------------------------------------------- a killed prune


def test_a_prune_killed_midway_is_finished_by_doctor_repair(tmp_path: Path) -> None:
    """doctor --repair ignored prune intents: `open_intent` and `record_without_file` for
    ever. Killed after 30 of its journaled deletes, here by a fault after a step."""
    q = make_queue(tmp_path)
    for i in range(60):
        drop(q, f"f{i:03d}.jsonl", chat(1, tag=str(i)))
    ingest(q)
    while c := q.claim("w"):
        c.complete()
    script = (
        "import os, signal, sys\n"
        "from shardkit.queue.state import Queue\n"
        "from shardkit.queue import journal\n"
        "q = Queue(sys.argv[1])\n"
        "orig = journal.Transaction.step\n"
        "n = [0]\n"
        "def step(self, op, **f):\n"
        "    out = orig(self, op, **f)\n"
        "    n[0] += 1\n"
        "    if n[0] == 30:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # journaled, not yet unlinked\n"
        "    return out\n"
        "journal.Transaction.step = step\n"
        "q.prune(keep=10, yes=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(q.root)], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    q = Queue(q.root)
    before = doctor(q)
    assert "open_intent" in codes(before)
    fixed = doctor(q, repair=True)
    assert any(f.code == "open_intent" and f.repaired for f in fixed.findings)
    assert doctor(q).ok
    left = sorted(e.name for e in q.entries(["completed"]))
    assert len(left) == 60 - 30  # the 30 journaled deletes, the kill's own included
    r = run_cli("queue", "prune", "--keep", "10", "--yes", "--root", q.root)
    assert r.returncode == 0 and len(list(q.entries(["completed"]))) == 10
    deletes = [e["name"] for e in q.journal.iter_entries() if e.get("op") == "delete"]
    assert len(deletes) == len(set(deletes)) == 50  # each file deleted once


# ---------------------------------------------------------------- drops that stopped ingest


def test_drops_ingest_used_to_crash_on_are_set_aside(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "a\udcff.jsonl", chat(1))  # bytes that are not UTF-8 in the name
    drop(q, "x.parquet", b'{"text": "a"}\n')  # a .parquet name on JSON lines
    drop(q, "empty.jsonl", b"")
    drop(q, "blank.jsonl", b"\n  \n")
    drop(q, "cut.jsonl", chat(2)[:-1])  # no newline at the end
    drop(q, "ok.jsonl", chat(2))
    r = run_cli("queue", "ingest", "--root", q.root, "--json")
    assert r.returncode == 0, r.stderr
    q = Queue(q.root)
    assert states(q)["normal"] == ["ok.jsonl"]
    assert sorted(states(q)["quarantine"]) == ["blank.jsonl", "cut.jsonl", "empty.jsonl", "x.parquet"]
    reasons = {x["name"]: x["reason"] for x in orjson.loads(r.stdout)["routed"]}
    assert "not a Parquet file" in reasons["x.parquet"] and "no records" in reasons["empty.jsonl"]
    assert "no newline at the end" in reasons["cut.jsonl"]
    report = doctor(q)
    assert codes(report) == ["bad_name"]  # the one ingest skips is not silent
    assert run_cli("queue", "status", "--root", q.root).returncode == 0


def test_a_record_holding_null_does_not_stop_the_queue(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    (q.meta / "items" / "nn.json").write_bytes(b"null")
    for args in (["status"], ["list"], ["doctor"]):
        r = run_cli("queue", *args, "--root", q.root)
        assert b"internal error" not in r.stderr, (args, r.stderr)
    assert run_cli("queue", "claim", "--root", q.root).returncode == 0


def test_an_unreadable_record_is_rebuilt_from_the_journal(tmp_path: Path) -> None:
    """A torn record used to be dropped and its file adopted anew: attempts and history lost."""
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    c = q.claim("w")
    c.fail("oom")
    q.retry(["f.jsonl"])
    item = next(e.item for e in q.entries() if e.name == "f.jsonl")
    path = q.meta / "items" / f"{item.id}.json"
    path.write_bytes(path.read_bytes()[:40])  # torn
    assert "corrupt_record" in codes(doctor(q))
    doctor(q, repair=True)
    assert doctor(q).ok
    again = Queue(q.root).load_item(item.id)
    assert (again.state, again.name, again.attempts) == ("normal", "f.jsonl", 1)
    assert (q.meta / "items" / f".corrupt-{item.id}.json").exists()


# ---------------------------------------------------------------- counts


def test_compressed_drops_count_their_records_and_verify(tmp_path: Path) -> None:
    """A 1000-record .jsonl.gz was recorded as 28 records (newlines in its gzip bytes)."""
    q = make_queue(tmp_path)
    drop(q, "big.jsonl.gz", gzip.compress(chat(1000)))
    ingest(q)
    assert next(e.item for e in q.entries()).records == 1000
    r = run_cli("manifest", q.root)
    assert r.returncode == 0, r.stderr
    manifest = orjson.loads((q.root / "manifest.json").read_bytes())
    assert [(f["records"], f["compression"]) for f in manifest["files"]] == [(1000, "gzip")]
    assert verify(q.root / "manifest.json").ok


def test_log_of_a_split_drop_brings_its_shards(tmp_path: Path) -> None:
    """The help promised it; the shards' publish lines (steps of the split's transaction)
    had no parent and were left out, and so was everything later done to a shard."""
    q = make_queue(tmp_path, max_records=5)
    drop(q, "big.jsonl", chat(12))
    ingest(q)
    shards = sorted(e.name for e in q.entries(["normal"]))
    assert len(shards) == 3
    q.hold([shards[1]])
    r = run_cli("queue", "log", "--root", q.root, "--item", "big.jsonl", "--json")
    entries = orjson.loads(r.stdout)["entries"]
    published = sorted(e["name"] for e in entries if e.get("op") == "publish")
    assert published == shards
    assert any(e.get("op") == "hold" and e.get("name") == shards[1] for e in entries)
    assert not any(e.get("op") == "prune" for e in entries)


def test_a_claim_for_a_dead_owner_is_refused(tmp_path: Path) -> None:
    """--owner-pid of a process that is gone made a lease stale at birth: requeue-stale
    would have handed the file to a second worker while the first trained on it."""
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    r = run_cli("queue", "claim", "--root", q.root, "--owner-pid", gone.pid)
    assert r.returncode == 2 and b"no such process" in r.stderr, r.stderr
    assert states(Queue(q.root)) == {"normal": ["f.jsonl"]}



# ---------------------------------------------------------------- from the review of these fixes


def test_a_renamed_fresh_record_names_the_file_where_it_lands(tmp_path: Path, monkeypatch) -> None:
    """The record of a new file is saved before its rename; it named batch.jsonl while the
    file went to batch-2.jsonl, and a claimer in that gap gave the file a second record."""
    import shardkit.queue.state as state

    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", chat(2, "a"))
    ingest(q)
    drop(q, "batch.jsonl", chat(2, "b"))
    seen = []
    real = state.rename_noreplace

    def rename(src, dst):
        if dst.parent == q.dir("normal"):
            records = [orjson.loads(p.read_bytes()) for p in (q.meta / "items").glob("*.json")]
            seen.append(sorted(r["name"] for r in records if r["state"] == "normal"))
        return real(src, dst)

    monkeypatch.setattr(state, "rename_noreplace", rename)
    ingest(q)
    assert seen == [["batch-2.jsonl", "batch.jsonl"]]  # at the rename, the new record already says batch-2


def test_doctor_leaves_a_second_name_made_a_moment_ago(tmp_path: Path) -> None:
    """A move by link + unlink (NFS) shows two names for a moment: removing the new one
    then, and the mover unlinking the old one, lost the file."""
    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(3))
    ingest(q)
    src, dst = q.dir("normal") / "f.jsonl", q.dir("processing") / "f.jsonl"
    os.link(src, dst)  # the mover, half-way
    report = doctor(q, repair=True)
    assert "same_file_twice" not in codes(report) and dst.exists()
    os.unlink(src)  # the mover finishes
    assert dst.read_bytes() == chat(3)


def test_a_finished_prune_never_deletes_a_later_file_of_the_same_name(tmp_path: Path) -> None:
    """A prune killed after unlinking X but before saving X's record: a new batch.jsonl (Y)
    completed under the freed name, and doctor --repair deleted Y."""
    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", chat(2, "x"))
    ingest(q)
    q.claim("w").complete()
    x = next(e for e in q.entries(["completed"]))
    tx = q.journal.begin("prune", files=1)
    st = os.lstat(x.path)
    tx.step("delete", id=x.item.id, name=x.name, state=x.state, bytes=x.size, inode=[st.st_dev, st.st_ino])
    os.unlink(x.path)  # killed here: no record save, no commit
    drop(q, "batch.jsonl", chat(2, "y"))
    ingest(q)
    q.claim("w").complete()  # Y takes completed/batch.jsonl
    doctor(q, repair=True)
    assert (q.dir("completed") / "batch.jsonl").read_bytes() == chat(2, "y")
    (y,) = q.entries(["completed"])
    assert y.item is not None and y.item.state == "completed"  # Y's record (it took X's id over) stands
    assert doctor(q).ok


def test_a_running_prune_is_left_to_finish(tmp_path: Path) -> None:
    from shardkit.queue.operations import prune_lock

    q = make_queue(tmp_path)
    drop(q, "f.jsonl", chat(2))
    ingest(q)
    q.claim("w").complete()
    q.journal.begin("prune", files=1)  # its intent, as a running prune has it
    with prune_lock(q):
        assert "open_intent" not in codes(doctor(q))
        fixed = doctor(q, repair=True)
        assert not any(f.code == "open_intent" for f in fixed.findings)
    assert "open_intent" in codes(doctor(q))  # once no prune holds the lock: interrupted


def test_two_quarantined_files_of_one_name_keep_their_own_reports(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", b'{"messages": 1}\n')
    ingest(q)
    drop(q, "batch.jsonl", b"")
    ingest(q)
    qdir = q.dir("quarantine")
    reports = {p.name: orjson.loads(p.read_bytes())["reason"] for p in qdir.glob("*.report.json")}
    assert set(reports) == {"batch.jsonl.report.json", "batch-2.jsonl.report.json"}
    assert "invalid" in reports["batch.jsonl.report.json"] and "no records" in reports["batch-2.jsonl.report.json"]
    assert doctor(q).ok


def test_link_unlink_fallback_loses_a_race_cleanly(tmp_path: Path, monkeypatch) -> None:
    """Without RENAME_NOREPLACE: another mover unlinked src between our link and unlink.
    It used to end in a bare FileNotFoundError, leaving the file under two names."""
    import shardkit.core.io as io

    monkeypatch.setattr(io, "_renameat2", lambda: None)
    src, dst, theirs = tmp_path / "src", tmp_path / "dst", tmp_path / "theirs"
    src.write_bytes(b"data")
    real_link = os.link

    def link(a, b):
        real_link(a, b)
        real_link(a, theirs)  # the other mover, done meanwhile: its link, then its unlink
        os.unlink(a)

    monkeypatch.setattr(os, "link", link)
    try:
        io.rename_noreplace(src, dst)
    except ConflictError:
        pass
    else:
        raise AssertionError("no ConflictError")
    assert not dst.exists() and theirs.read_bytes() == b"data"


def test_a_renamed_move_is_shown_with_both_names(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    for tag in ("a", "b"):
        drop(q, "batch.jsonl", chat(1, tag))
        ingest(q)
        q.claim("w")
        r = run_cli("queue", "complete", "batch.jsonl", "--root", q.root)
        assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "completed: batch.jsonl -> completed as batch-2.jsonl (its name was taken there)"


def test_a_new_drop_never_takes_the_record_of_a_pruned_file_of_its_name(tmp_path: Path) -> None:
    """A prune killed between its unlink and its record save left a 'completed' record with
    no file; the next batch.jsonl drop was taken for that file one step behind, and got its
    id, attempts and history (a completed record cannot become an inbox drop's in one move)."""
    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", chat(2, "x"))
    ingest(q)
    q.claim("w").complete()
    (x,) = q.entries(["completed"])
    os.unlink(x.path)  # the prune's unlink, its record not saved
    drop(q, "batch.jsonl", chat(2, "y"))
    ingest(q)
    (y,) = q.entries(["normal"])
    assert y.item.id != x.item.id and y.item.attempts == 0


def test_a_record_one_renamed_move_behind_is_found(tmp_path: Path) -> None:
    """A move that renamed its file (its name taken there) saves the record after the
    rename; a listing in between must find that record for processing/batch-2.jsonl, not
    adopt the file under a second one."""
    q = make_queue(tmp_path)
    drop(q, "batch.jsonl", chat(2, "a"))
    ingest(q)
    (a,) = q.entries(["normal"])
    os.rename(a.path, q.dir("processing") / "batch-2.jsonl")  # the rename; the save to come
    (e,) = q.entries(["processing"])
    assert e.item is None
    found = q.record_of(e)
    assert found is not None and found.id == a.item.id
