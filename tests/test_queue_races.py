"""Queue transitions against each other (issue 24): each test holds one process at the exact
instant of a race window (real files, real Queue objects on one root) and checks that the
other operation leaves it alone. tests/reliability/test_concurrency.py runs them all at once
with real processes in loops."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_queue import GOOD, OLD, journal, make_queue, pend, states

from shardkit.queue.doctor import doctor
from shardkit.queue.state import STATES, Queue


def test_requeue_stale_leaves_a_claim_between_its_rename_and_its_lease(tmp_path: Path) -> None:
    """24.2: a file that waited an hour in pending kept its mtime when claimed, so in the gap
    before the lease was written it looked stale at once and was handed out twice."""
    q = make_queue(tmp_path)
    src = pend(q, "old.jsonl")  # mtime an hour ago
    os.rename(src, q.dir("processing") / "old.jsonl")  # the claim's rename; its lease is not written yet
    other = Queue(q.root)
    assert other.requeue_stale(older_than=60) == []
    assert states(q) == {"processing": ["old.jsonl"]}
    rep = doctor(other, repair=True)
    assert rep.ok, [f.message for f in rep.problems]  # reported as held, left alone
    assert any(f.code == "external_processing" for f in rep.findings)
    assert (q.dir("processing") / "old.jsonl").exists()


def test_doctor_keeps_the_lease_of_a_claim_made_after_it_listed_processing(tmp_path: Path) -> None:
    """24.3: doctor listed processing/ before a claim's rename, then saw the new lease and
    deleted it as lease_without_file: the claimer's complete was refused."""
    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    doc_q = Queue(q.root)
    real_entries = doc_q.entries
    claimed = {}

    def entries(states=STATES):
        listed = real_entries(states)
        if states == ["processing"] and not claimed:
            claimed["c"] = q.claim("w")  # lands right after doctor's listing
        return listed

    doc_q.entries = entries  # type: ignore[method-assign]
    rep = doctor(doc_q, repair=True)
    assert "c" in claimed and claimed["c"]
    assert not [f for f in rep.findings if f.code == "lease_without_file"], [f.message for f in rep.findings]
    assert q.lease("a.jsonl") is not None
    assert claimed["c"].complete().state == "completed"  # not refused
    assert doctor(q).ok


def test_requeue_stale_goes_on_past_a_file_completed_meanwhile(tmp_path: Path) -> None:
    """24.7: requeue-stale stopped (exit 4) at the first file a worker completed meanwhile."""
    q = make_queue(tmp_path, stale_after=0.0)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        pend(q, name)
    owners = [_owner() for _ in range(3)]
    held = [q.claim("w", owner_pid=o.pid) for o in owners]
    assert all(held)
    for o in owners:  # the trainers die (a claim for a dead owner is refused)
        o.kill()
        o.wait()
    time.sleep(0.01)
    worker = Queue(q.root)
    sweeper = Queue(q.root)
    real = sweeper.lease_is_stale
    done = []

    def lease_is_stale(lease, *a, **kw):
        stale = real(lease, *a, **kw)
        if stale and not done:  # the worker completes its file between the check and the move
            done.append(worker.complete(lease.name, lease.token).name)
        return stale

    sweeper.lease_is_stale = lease_is_stale  # type: ignore[method-assign]
    requeued = sorted(e.name for e, _ in sweeper.requeue_stale())
    assert len(done) == 1 and done[0] not in requeued
    assert len(requeued) == 2
    assert states(q) == {"completed": done, "normal": requeued}


def _owner():
    """A trainer process that lives until killed."""
    import subprocess

    return subprocess.Popen(["sleep", "600"])


def test_a_move_that_races_another_says_so_not_something_contradictory(tmp_path: Path) -> None:
    """24.7: "cannot complete a file in processing (complete moves files from processing)"
    when the file moved into processing while complete looked for it."""
    import pytest

    from shardkit.core.errors import ConflictError

    q = make_queue(tmp_path)
    pend(q, "p.jsonl", GOOD)
    mover = Queue(q.root)
    looker = Queue(q.root)
    real_find = looker.find
    calls = []

    def find(name, states=None):
        calls.append(states)
        if len(calls) == 1:  # the first look misses: the file is being claimed right now
            mover.claim("w")
            raise InputError(f"{name}: not in the queue")
        return real_find(name, states) if states is not None else real_find(name)

    from shardkit.core.errors import InputError

    looker.find = find  # type: ignore[method-assign]
    with pytest.raises(ConflictError) as e:
        looker.find_for("complete", "p.jsonl")
    assert "moved while complete looked for it (now in processing)" in str(e.value)
    assert "cannot complete a file in processing" not in str(e.value)
    q2 = make_queue(tmp_path / "two")
    pend(q2, "n.jsonl", GOOD)
    with pytest.raises(ConflictError, match=r"cannot complete a file in normal \(complete moves files from processing\)"):
        q2.find_for("complete", "n.jsonl")


def test_two_concurrent_ingests_split_each_drop_once(tmp_path: Path) -> None:
    """24.1: both runs adopted the same over-limit drop, split it into their own temp folders
    and published both: 140,000-160,000 records pending for 80,000 dropped."""
    import subprocess
    import sys

    import orjson

    q = make_queue(tmp_path, max_records=1000, settle=0.0, kind="chat")
    n, drops = 10_000, 4
    for d in range(drops):
        lines = b"".join(orjson.dumps({"messages": [{"role": "user", "content": f"d{d} r{i}"},
                                                    {"role": "assistant", "content": "ok"}]}) + b"\n"
                         for i in range(n))
        p = q.dir("inbox") / f"drop{d}.jsonl"
        p.write_bytes(lines)
        os.utime(p, (OLD, OLD))
    procs = [subprocess.Popen([sys.executable, "-m", "shardkit", "queue", "ingest", "--root", str(q.root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    seen: dict[bytes, int] = {}
    for prio in ("high", "normal", "low"):
        for f in q.dir(prio).iterdir():
            for line in f.read_bytes().splitlines():
                seen[line] = seen.get(line, 0) + 1
    assert len(seen) == n * drops, f"{n * drops - len(seen)} records missing"
    twice = [k for k, v in seen.items() if v > 1]
    assert not twice, f"{len(twice)} records pending more than once"
    assert sorted(p.name for p in q.dir("split").iterdir()) == [f"drop{d}.jsonl" for d in range(drops)]
    rep = doctor(Queue(q.root))
    assert rep.ok, [f.message for f in rep.problems]


def test_a_drop_with_a_name_of_255_bytes_is_claimed_with_a_lease_and_tools_keep_working(tmp_path: Path) -> None:
    """24.5: a 251-255 byte drop name was ingested, then claim could not write its lease
    ("File name too long"): the file sat in processing without one and status, doctor and
    requeue-stale all exited 3 from then on."""
    from test_queue import drop, ingest, run_cli

    q = make_queue(tmp_path)
    good = "g" * 249 + ".jsonl"  # 255 bytes
    bad = "b" * 249 + ".jsonl"
    assert len(good.encode()) == len(bad.encode()) == 255
    drop(q, good, GOOD)
    drop(q, bad, b'{"messages":[{"role":"bot","content":"x"}]}\n')
    ingest(q)
    assert states(q) == {"normal": [good], "quarantine": [bad]}
    c = q.claim("w")
    assert c and c.name == good
    assert q.lease(good) is not None and q.lease(good).token == c.token
    for args in (["queue", "status", "--root", q.root], ["queue", "doctor", "--root", q.root], ["queue", "requeue-stale", "--root", q.root],
                 ["queue", "list", "--root", q.root], ["manifest", q.root]):
        r = run_cli(*args)
        assert r.returncode in (0, 1), (args, r.stderr)  # 1: status --check-like findings, never 3
        assert b"File name too long" not in r.stderr and b"Traceback" not in r.stderr
    rep = doctor(Queue(q.root))
    assert rep.ok, [f.message for f in rep.problems]  # the report of the quarantined one is found
    assert c.complete().state == "completed"
    assert doctor(Queue(q.root)).ok


def test_prune_leaves_a_file_whose_complete_is_still_saving_its_record(tmp_path: Path) -> None:
    """The race test's flake: prune deleted a file a worker had just renamed into
    recently_completed/, then the worker's record save put it back to "completed" (file gone,
    record completed; the delete line journaled before the complete line)."""
    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    c = q.claim("w")
    os.rename(c.path, q.dir("completed") / "a.jsonl")  # complete's rename; its record save comes next
    plan = Queue(q.root).prune(keep=0, yes=True)
    assert plan.deleted == 0 and (q.dir("completed") / "a.jsonl").exists()
    os.rename(q.dir("completed") / "a.jsonl", c.path)  # (back, so that the real complete runs)
    assert c.complete().state == "completed"
    plan = Queue(q.root).prune(keep=0, yes=True)
    assert plan.deleted == 1
    item = Queue(q.root).load_item(c.lease.id)
    assert item.state == "deleted"
    assert doctor(Queue(q.root)).ok


@pytest.mark.parametrize("loser_id", ["0" * 32, "f" * 32])  # before and after the claimed one, by name
def test_complete_moves_the_claimed_record_not_a_losing_claimers_fresh_one(tmp_path: Path, loser_id: str) -> None:
    """Seen once in the race test: a claimer that found no record for a pending file (its
    record one step behind a retry) saved a fresh one, already "processing", just before
    its rename lost to another worker's claim. The winner's complete then picked that fresh
    record by name and completed it: the claimed item stayed "processing" with no file, and
    doctor reported it. The lease names the claimed item; complete moves that one, and a
    listing prefers the record with a history."""
    from shardkit.queue.model import Item

    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    claim = q.claim("w1")
    claimed_id = q.lease("a.jsonl").id
    loser = Item(id=loser_id, name="a.jsonl", state="processing", bytes=1, priority="normal")
    loser.history.append({"ts": "2026-12-07T03:48:53Z", "op": "adopt", "to": "normal"})
    q.save_item(loser)  # the losing claimer's fresh record, not yet unlinked
    (entry,) = Queue(q.root).entries(["processing"])
    assert entry.item.id == claimed_id  # the established record wins the listing
    done = claim.complete()
    assert done.state == "completed" and done.item.id == claimed_id
    assert [e["id"] for e in journal(q) if e["op"] == "complete"] == [claimed_id]
    assert q.load_item(claimed_id).state == "completed"
    os.unlink(q._item_path(loser.id))  # the loser cleans up after its failed rename
    assert doctor(Queue(q.root)).ok


def test_doctor_does_not_adopt_a_file_that_moved_on_while_it_looked_for_its_record(tmp_path: Path) -> None:
    """Seen once in the race test (2026-12-07): doctor listed failed/ just after a fail's
    rename, before that fail saved its record (so the listing found no record of the file);
    while doctor then looked for the record, the operator's retry moved the file on. doctor
    adopted the file anyway: a second record, "says failed, but no such file". A file that
    left (or whose record showed up) while its record was looked for is not record-less."""
    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    q.claim("w").fail(reason="simulated")
    item = q.entries(["failed"])[0].item
    assert item is not None and item.state == "failed"
    behind = q.load_item(item.id)
    behind.state = "processing"  # as the record was between the fail's rename and its save
    q.save_item(behind)

    doc_q = Queue(q.root)
    real_entries, real_record_of = doc_q.entries, doc_q.record_of

    done = set()

    def entries(states=STATES):
        listed = real_entries(states)
        if "save" not in done:
            done.add("save")
            fixed = q.load_item(item.id)
            fixed.state = "failed"  # the fail's save lands right after doctor's listing
            q.save_item(fixed)
        return listed

    def record_of(entry):
        if entry.state == "failed" and entry.name == "a.jsonl" and "retry" not in done:
            done.add("retry")
            Queue(q.root).retry(all_failed=True)  # the operator's retry, meanwhile
        return real_record_of(entry)

    doc_q.entries = entries  # type: ignore[method-assign]
    doc_q.record_of = record_of  # type: ignore[method-assign]
    doctor(doc_q, repair=True)
    assert done == {"save", "retry"}  # both races happened
    assert not [e for e in journal(q) if e["op"] == "adopt"], journal(q)
    assert [i.id for i in Queue(q.root).items() if i.name == "a.jsonl"] == [item.id]  # one record
    assert states(q) == {"normal": ["a.jsonl"]}
    assert doctor(Queue(q.root)).ok


def _by_hand(q: Queue, state: str, name: str) -> Path:
    p = q.path(state, name)
    p.write_bytes(GOOD)
    os.utime(p, (OLD, OLD))
    return p


def _records(q: Queue, name: str) -> list[str]:
    return sorted(i.id for i in Queue(q.root).items() if i.name == name)


def test_an_adopt_that_backs_off_keeps_a_record_a_claimer_took_from_it(tmp_path: Path) -> None:
    """doctor saved a record for a file placed by hand, and before its check a claimer
    listed the file, took that record, moved the file and saved it: doctor's check then
    fails (the file left), and it must not delete what is now the claimer's record."""
    q = make_queue(tmp_path)
    _by_hand(q, "normal", "a.jsonl")
    doc_q = Queue(q.root)
    real_check = doc_q._still_recordless
    got = {}

    def check(entry, own):
        got["claim"], got["own"] = Queue(q.root).claim("w"), own
        return real_check(entry, own)

    doc_q._still_recordless = check  # type: ignore[method-assign]
    doctor(doc_q, repair=True)
    claim = got["claim"]
    assert claim is not None and claim.lease.id == got["own"]  # the claimer took doctor's record
    assert _records(q, "a.jsonl") == [got["own"]]  # still there: one record
    assert claim.complete().item.id == got["own"]
    assert doctor(Queue(q.root)).ok


def test_two_adopters_that_both_back_off_leave_the_file_reported(tmp_path: Path) -> None:
    """Two processes adopting one record-less file each see the other's new record and both
    back off: doctor --repair must not say all is well while the file has no record; its
    next run adopts it."""
    from shardkit.queue.model import Item

    q = make_queue(tmp_path)
    _by_hand(q, "failed", "a.jsonl")
    doc_q, other = Queue(q.root), Queue(q.root)
    real_check = doc_q._still_recordless

    def check(entry, own):
        rival = Item(id="f" * 32, name=entry.name, state=entry.state)
        rival.history.append({"op": "adopt", "to": entry.state})
        other.save_item(rival)  # the other adopter's save, then both checks
        mine_ok = real_check(entry, own)
        if not other._still_recordless(entry, rival.id):
            os.unlink(other._item_path(rival.id))
        return mine_ok

    doc_q._still_recordless = check  # type: ignore[method-assign]
    rep = doctor(doc_q, repair=True)
    assert _records(q, "a.jsonl") == []
    assert not rep.ok and [f.code for f in rep.problems] == ["file_without_record"]
    assert doctor(Queue(q.root), repair=True).ok  # the next run adopts it
    assert len(_records(q, "a.jsonl")) == 1 and doctor(Queue(q.root)).ok


def test_retry_split_all_passes_over_a_fail_still_saving_its_record(tmp_path: Path) -> None:
    """`retry --split N --all` stopped (exit 4) at a failed file whose fail had renamed it
    but not yet saved its record; like `retry --all`, it now leaves that one to the next run."""
    from shardkit.queue.ingest import resplit

    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    pend(q, "b.jsonl")
    q.claim("w").fail(reason="x")
    q.claim("w").fail(reason="x")
    a = q.find("failed/a.jsonl").item
    a.state = "processing"  # a's fail is between its rename and its save
    q.save_item(a)
    routed = resplit(Queue(q.root), [], 1, all_failed=True)
    assert [r.name for r in routed] == ["b.jsonl"]
    assert "a.jsonl" in states(q)["failed"] and _records(q, "a.jsonl") == [a.id]


def _before_first_save(q: Queue, action) -> list:
    """Run `action` once, just before `q`'s next record save."""
    real, done = q.save_item, []

    def save_item(item):
        if not done:
            done.append(action())
        return real(item)

    q.save_item = save_item  # type: ignore[method-assign]
    return done


@pytest.mark.parametrize("mover", ["retry", "claim"])
def test_a_mover_that_found_no_record_takes_the_one_doctor_just_gave(tmp_path: Path, mover: str) -> None:
    """A file placed by hand: the mover looked for its record (none), and just before it
    saved a fresh one, a whole `doctor --repair` adopted the file. The mover must then take
    doctor's record, not add a second one."""
    q = make_queue(tmp_path)
    _by_hand(q, "failed" if mover == "retry" else "normal", "a.jsonl")
    mq = Queue(q.root)
    done = _before_first_save(mq, lambda: doctor(Queue(q.root), repair=True))
    if mover == "retry":
        mq.retry(all_failed=True)
    else:
        assert mq.claim("w") is not None
    assert done
    adopted = [e["id"] for e in journal(q) if e["op"] == "adopt"]
    assert len(adopted) == 1 and _records(q, "a.jsonl") == adopted  # doctor's, and only it
    assert [e["id"] for e in journal(q) if e["op"] == mover] == adopted
    assert doctor(Queue(q.root)).ok
