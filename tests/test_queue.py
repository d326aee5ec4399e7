"""The queue with real files and real processes: claims race, leases expire, moves follow the
state machine, ingest routes every kind of drop, doctor finds what was planted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import run_cli

from shardkit.core.errors import ConflictError
from shardkit.queue.doctor import doctor
from shardkit.queue.ingest import ingest
from shardkit.queue.settings import Settings
from shardkit.queue.state import STATE_DIRS, Queue

GOOD = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n'
OLD = time.time() - 3600


def make_queue(tmp_path: Path, **settings) -> Queue:
    """A new queue whose shardkit.toml holds `settings`, so the CLI sees them too."""
    root = tmp_path / "q"
    Queue(root, Settings(), create=True)
    toml = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in settings.items())
    (root / "shardkit.toml").write_text(toml)
    q = Queue(root)
    assert all(getattr(q.settings, k) == v for k, v in settings.items())
    return q


def drop(q: Queue, name: str, data: bytes, *, age: float = 3600) -> Path:
    p = q.dir("inbox") / name
    p.write_bytes(data)
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def pend(q: Queue, name: str, data: bytes = GOOD, prio: str = "normal") -> Path:
    p = q.dir(prio) / name
    p.write_bytes(data)
    os.utime(p, (OLD, OLD))
    return p


def journal(q: Queue) -> list[dict]:
    return list(q.journal.iter_entries())


def states(q: Queue) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in q.entries():
        out.setdefault(e.state, []).append(e.name)
    return out


# ---------------------------------------------------------------- claim, leases


CLAIMER = r"""
import sys, time
from shardkit.queue.state import Queue
q = Queue(sys.argv[1])
got = []
while True:
    c = q.claim(sys.argv[2])
    if not c:
        break
    got.append(c.name)
    c.complete()
print("\n".join(got))
"""


def test_four_processes_claim_each_file_exactly_once(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    names = [f"f{i:03d}.jsonl" for i in range(200)]
    for i, n in enumerate(names):
        pend(q, n, prio=("high", "normal", "low")[i % 3])
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(q.root), f"w{k}"], stdout=subprocess.PIPE)
             for k in range(4)]
    outs = [p.communicate(timeout=120)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    claimed = [n for out in outs for n in out]
    assert sorted(claimed) == sorted(names)  # each once, none lost
    assert sorted(states(q)["completed"]) == sorted(names)
    claims = [e for e in journal(q) if e["op"] == "claim"]
    assert sorted(e["name"] for e in claims) == sorted(names)
    assert all(sum(1 for x in out if x) for out in outs)  # every worker got some work


def test_priority_then_age_order(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    pend(q, "low.jsonl", prio="low")
    pend(q, "normal.jsonl", prio="normal")
    p = pend(q, "high-new.jsonl", prio="high")
    os.utime(p, (OLD + 10, OLD + 10))
    pend(q, "high-old.jsonl", prio="high")
    order = [q.claim("w").name for _ in range(4)]
    assert order == ["high-old.jsonl", "high-new.jsonl", "normal.jsonl", "low.jsonl"]
    assert not q.claim("w")


SLEEPER = r"""
import sys, time
from shardkit.queue.state import Queue
c = Queue(sys.argv[1]).claim("doomed")
print(c.path, flush=True)
time.sleep(60)
"""


def test_killed_claimer_is_requeued_with_attempt_counted_then_dead(tmp_path: Path) -> None:
    q = make_queue(tmp_path, stale_after=0.0, max_attempts=2)
    pend(q, "poison.jsonl")
    for attempt in (1, 2):
        proc = subprocess.Popen([sys.executable, "-c", SLEEPER, str(q.root)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip().endswith(b"poison.jsonl")
        # alive: a live lease is never taken, however old
        assert q.requeue_stale(older_than=0.0) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moved = q.requeue_stale(older_than=0.0)
        assert [m.name for m, _ in moved] == ["poison.jsonl"]
        item = q.find("poison.jsonl").item
        assert item.attempts == attempt
        expected = "normal" if attempt < 2 else "dead"
        assert moved[0][0].state == expected
    assert states(q) == {"dead": ["poison.jsonl"]}
    assert q.lease("poison.jsonl") is None


def test_token_of_a_taken_over_lease_is_refused(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    first = q.claim("w1")
    # the first holder vanished; an operator requeued it and another worker claimed it
    lease = q.lease("a.jsonl")
    lease.heartbeat -= 10_000
    lease.owner_pid = 2**22 + 12345  # no such process
    lease.owner_start = None
    q._write_lease(lease)
    assert q.requeue_stale(older_than=1.0)
    second = q.claim("w2")
    with pytest.raises(ConflictError, match="token does not match"):
        q.complete(first.name, first.token)
    r = run_cli("queue", "complete", str(second.path), "--token", first.token)
    assert r.returncode == 4 and b"token does not match" in r.stderr
    assert q.complete(second.name, second.token).state == "completed"


def test_context_manager_completes_or_fails(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    pend(q, "ok.jsonl")
    bad = pend(q, "bad.jsonl")
    os.utime(bad, (OLD + 1, OLD + 1))  # claimed second
    with q.claim("w") as item:
        assert item.path.exists()
    with pytest.raises(RuntimeError), q.claim("w"):
        raise RuntimeError("CUDA out of memory")
    assert states(q) == {"completed": ["ok.jsonl"], "failed": ["bad.jsonl"]}
    assert q.find("bad.jsonl").item.last_error == "RuntimeError: CUDA out of memory"


def test_with_claim_on_an_empty_queue_binds_none_and_the_worker_loop_runs(tmp_path: Path) -> None:
    """Issue 17.3: `with Queue(root).claim() as item:` raised TypeError on an empty queue."""
    q = make_queue(tmp_path)
    with Queue(q.root).claim() as item:  # no worker name needed: HOST:PID
        assert item is None
    assert not q.claim("w")
    t0 = time.monotonic()
    with q.claim("w", wait=0.3, poll=0.05) as item:
        assert item is None
    assert time.monotonic() - t0 >= 0.3  # it polled for the whole wait

    # claim(wait=...) takes a file that arrives while it waits
    src = tmp_path / "late.jsonl"
    src.write_bytes(GOOD)
    os.utime(src, (OLD, OLD))
    late = subprocess.Popen([sys.executable, "-c", "import sys, time, shutil; time.sleep(0.3); shutil.move(sys.argv[1], sys.argv[2])",
                             str(src), str(q.dir("normal") / "late.jsonl")])
    done = []
    for _ in range(3):  # the README's worker loop, bounded
        with q.claim("w", wait=5, poll=0.05) as item:
            if item is None:
                continue
            done.append(item.name)
            break
    late.wait()
    assert done == ["late.jsonl"]
    assert states(q) == {"completed": ["late.jsonl"]}


# ---------------------------------------------------------------- the state machine


def test_moves_follow_the_state_machine_and_illegal_ones_exit_4(tmp_path: Path) -> None:
    q = make_queue(tmp_path, max_attempts=3)
    pend(q, "a.jsonl")
    pend(q, "b.jsonl", prio="high")
    root = str(q.root)
    assert run_cli("queue", "hold", "a.jsonl", "--root", root).returncode == 0
    assert states(q)["held"] == ["a.jsonl"]
    assert run_cli("queue", "release", "a.jsonl", "--root", root).returncode == 0
    assert "a.jsonl" in states(q)["normal"]
    # retry needs a failed file; redrive needs dead/quarantine: refused, nothing moves
    for args in (["retry", "a.jsonl"], ["redrive", "a.jsonl"], ["release", "b.jsonl"], ["complete", "a.jsonl"]):
        r = run_cli("queue", *args, "--root", root)
        assert r.returncode == 4, (args, r.stderr)
        assert f"cannot {args[0]} a file in".encode() in r.stderr
    r = run_cli("queue", "hold", "nope.jsonl", "--root", root)
    assert r.returncode == 3 and b"nope.jsonl: not in the queue" in r.stderr
    assert states(q) == {"high": ["b.jsonl"], "normal": ["a.jsonl"]}
    c = q.claim("w")
    assert c.name == "b.jsonl"
    q.fail(c.name, c.token, reason="boom")
    assert run_cli("queue", "quarantine", "b.jsonl", "--root", root, "--reason", "bad data").returncode == 0
    assert run_cli("queue", "redrive", "b.jsonl", "--root", root).returncode == 0
    assert states(q) == {"inbox": ["b.jsonl"], "normal": ["a.jsonl"]}
    with pytest.raises(ConflictError, match="cannot complete from inbox"):
        q.move(q.find("b.jsonl"), "complete", "completed")
    ops = [(e["op"], e.get("from"), e.get("to")) for e in journal(q) if e["op"] != "adopt"]
    assert ops == [
        ("hold", "normal", "held"), ("release", "held", "normal"), ("claim", "high", "processing"),
        ("fail", "processing", "failed"), ("quarantine", "failed", "quarantine"), ("redrive", "quarantine", "inbox"),
    ]
    item = q.find("b.jsonl").item
    assert [h["op"] for h in item.history][-4:] == ["claim", "fail", "quarantine", "redrive"]


def test_retry_goes_dead_at_max_attempts_unless_reset(tmp_path: Path) -> None:
    q = make_queue(tmp_path, max_attempts=1)
    pend(q, "a.jsonl")
    c = q.claim("w")
    q.fail(c.name, c.token)
    assert [e.state for e in q.retry(all_failed=True, dry_run=True)] == ["dead"]
    assert states(q) == {"failed": ["a.jsonl"]}  # dry run moved nothing
    assert [e.state for e in q.retry(["a.jsonl"], reset_attempts=True)] == ["normal"]
    assert q.find("a.jsonl").item.attempts == 0


def test_prune_deletes_nothing_without_yes_and_by_completion_time(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    for n in ("z.jsonl", "a.jsonl", "m.jsonl"):
        pend(q, n)
        c = q.claim("w")
        q.complete(c.name, c.token)
        time.sleep(0.01)
    before = sorted(p.name for p in q.dir("completed").iterdir())
    r = run_cli("queue", "prune", "--root", str(q.root), "--keep", "1")
    assert r.returncode == 0 and b"add --yes" in r.stdout
    assert sorted(p.name for p in q.dir("completed").iterdir()) == before
    r = run_cli("queue", "prune", "--root", str(q.root), "--keep", "1", "--yes")
    assert r.returncode == 0
    # completion order was z, a, m (not name order): the newest, m, stays
    assert sorted(p.name for p in q.dir("completed").iterdir()) == ["m.jsonl"]
    deletes = [e for e in journal(q) if e["op"] == "delete"]
    assert sorted(e["name"] for e in deletes) == ["a.jsonl", "z.jsonl"]


# ---------------------------------------------------------------- ingest


def test_ingest_routes_valid_invalid_oversize_and_unsettled(tmp_path: Path) -> None:
    q = make_queue(tmp_path, kind="chat", max_records=40)
    drop(q, "ok.jsonl", GOOD * 10)
    drop(q, "bad.jsonl", GOOD + b'{"messages": "nope"}\n')
    drop(q, "big.jsonl", GOOD * 100)
    drop(q, "fresh.jsonl", GOOD, age=0)
    drop(q, ".hidden.jsonl", GOOD)
    drop(q, "upload.jsonl.part", GOOD)
    result = ingest(q)
    routed = {r.name: r.to for r in result.routed}
    assert routed == {"ok.jsonl": "normal", "bad.jsonl": "quarantine", "big.jsonl": "split"}
    assert {n for n, _ in result.skipped} == {"fresh.jsonl", ".hidden.jsonl", "upload.jsonl.part"}
    st = states(q)
    assert st["inbox"] == ["fresh.jsonl"] and (q.dir("inbox") / "upload.jsonl.part").exists()
    assert st["split"] == ["big.jsonl"] and st["quarantine"] == ["bad.jsonl"]
    shards = [n for n in st["normal"] if n.startswith("big-")]
    assert len(shards) == 3
    records = {n: (q.dir("normal") / n).read_bytes().count(b"\n") for n in shards}
    assert sorted(records.values()) == [20, 40, 40]
    parent = q.find("big.jsonl").item
    children = [q.find(n).item for n in shards]
    assert all(c.parent == parent.id for c in children) and sorted(parent.children) == sorted(c.id for c in children)
    report = orjson.loads((q.dir("quarantine") / "bad.jsonl.report.json").read_bytes())
    assert report["reason"].startswith("1 invalid record")
    assert report["report"]["issues"][0]["examples"][0]["line"] == 2
    rejects = (q.dir("quarantine") / "bad.rejects.jsonl").read_bytes()
    assert orjson.loads(rejects)["line"] == 2
    assert q.find("ok.jsonl").item.records == 10 and q.find("ok.jsonl").item.sha256


def test_ingest_strip_sends_good_records_on(tmp_path: Path) -> None:
    q = make_queue(tmp_path, kind="chat", on_invalid="strip")
    drop(q, "mixed.jsonl", GOOD * 3 + b"not json\n" + GOOD)
    ingest(q)
    st = states(q)
    assert st["split"] == ["mixed.jsonl"]
    (child,) = [n for n in st["normal"]]
    assert (q.dir("normal") / child).read_bytes() == GOOD * 4
    assert b"not json" in (q.dir("quarantine") / "mixed.rejects.jsonl").read_bytes()


def test_ingest_refuses_symlinks_and_fifos(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(GOOD)
    (q.dir("inbox") / "link.jsonl").symlink_to(outside)
    os.mkfifo(q.dir("inbox") / "pipe.jsonl")
    result = ingest(q)
    why = dict(result.skipped)
    assert "symlink" in why["link.jsonl"] and "FIFO" in why["pipe.jsonl"]
    assert outside.read_bytes() == GOOD and not result.routed


def test_dry_run_moves_nothing(tmp_path: Path) -> None:
    q = make_queue(tmp_path, max_records=5)
    drop(q, "a.jsonl", GOOD * 12)
    r = run_cli("queue", "ingest", "--root", str(q.root), "--dry-run")
    assert r.returncode == 0 and b"would route: a.jsonl -> split" in r.stdout
    assert states(q) == {"inbox": ["a.jsonl"]}
    assert journal(q) == []


# ---------------------------------------------------------------- doctor, by-hand moves


def test_doctor_finds_planted_problems_and_repairs_the_safe_ones(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    pend(q, "a.jsonl")
    pend(q, "b.jsonl")
    c = q.claim("w")  # a.jsonl
    # 1. a trainer moved a file by hand (no record)
    os.rename(q.path("normal", "b.jsonl"), q.path("failed", "b.jsonl"))
    # 2. a temp leftover from a killed write
    tmp = q.dir("normal") / ".shardkit-tmp-1-2-x.jsonl"
    tmp.write_bytes(b"partial")
    os.utime(tmp, (OLD, OLD))
    # 3. a lease whose file is gone
    (q.meta / "leases" / "gone.jsonl.json").write_bytes(orjson.dumps(q.lease(c.name).to_dict()))
    # 4. a record one step behind (crash between rename and record write)
    pend(q, "c.jsonl")
    item = q.adopt(q.find("c.jsonl"))
    os.rename(q.path("normal", "c.jsonl"), q.path("held", "c.jsonl"))
    # 5. the same content in two states
    pend(q, "dup.jsonl", GOOD)
    pend(q, "dup2.jsonl", GOOD, prio="low")
    for n in ("dup.jsonl", "dup2.jsonl"):
        it = q.adopt(q.find(n))
        it.sha256 = "f" * 64
        q.save_item(it)
    later = time.time() + 10  # the hand moves above are not moves in progress any more
    report = doctor(q, now=later)
    codes = sorted(f.code for f in report.findings)
    assert codes == sorted(["file_without_record", "temp_leftover", "lease_without_file", "record_behind", "duplicate_content"])
    assert not report.ok
    r = run_cli("queue", "doctor", "--root", str(q.root))
    assert r.returncode == 1
    fixed = doctor(q, repair=True, now=later)
    assert {f.code for f in fixed.findings if f.repaired} == {"file_without_record", "temp_leftover", "lease_without_file", "record_behind"}
    assert not tmp.exists() and q.find("c.jsonl").item.id == item.id and q.find("c.jsonl").state == "held"
    again = doctor(q, repair=True, now=later)
    assert [f.code for f in again.findings] == ["duplicate_content"]  # idempotent; the rest needs a person


def test_files_moved_by_hand_work_everywhere(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    for state in ("normal", "failed", "recently_completed"):
        d = q.root / "queue" / state
        (d / f"by-hand-{state}.jsonl").write_bytes(GOOD)
    r = run_cli("queue", "status", "--root", str(q.root), "--json")
    assert r.returncode == 0
    st = orjson.loads(r.stdout)["states"]
    assert (st["normal"]["files"], st["failed"]["files"], st["completed"]["files"]) == (1, 1, 1)
    assert run_cli("queue", "doctor", "--root", str(q.root), "--repair").returncode == 0
    assert run_cli("queue", "list", "--root", str(q.root)).returncode == 0


def test_status_check_exits_1_when_a_person_is_needed(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    assert run_cli("queue", "status", "--root", str(q.root), "--check").returncode == 0
    (q.dir("dead") / "x.jsonl").write_bytes(GOOD)
    r = run_cli("queue", "status", "--root", str(q.root), "--check")
    assert r.returncode == 1 and b"dead" in r.stdout


def test_init_layout(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    for rel in STATE_DIRS.values():
        assert (q.root / rel).is_dir()


def test_queue_manifest_rehashes_only_changed_files(tmp_path: Path) -> None:
    from shardkit.queue.state import queue_manifest
    from shardkit.store.manifest import verify

    q = make_queue(tmp_path)
    for i in range(5):
        pend(q, f"f{i}.jsonl", GOOD * (i + 1))
    m = queue_manifest(q)
    assert m["type"] == "queue" and m["rehashed"] == 5 and m["totals"]["records"] == 15
    assert verify(q.root / "manifest.json").ok
    assert queue_manifest(q)["rehashed"] == 0
    c = q.claim("w")  # a move is a rename: it changes the ctime, so the file is read once more
    (q.dir("normal") / "f4.jsonl").write_bytes(GOOD)  # changed
    m = queue_manifest(q)
    assert m["rehashed"] == 2
    assert queue_manifest(q)["rehashed"] == 0
    entry = next(f for f in m["files"] if f["path"].endswith(c.name))
    assert entry["state"] == "processing" and entry["attempts"] == 1
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=q.root, capture_output=True).returncode == 0
    r = run_cli("manifest", q.root, "--json")
    assert r.returncode == 0 and orjson.loads(r.stdout)["rehashed"] == 0


def test_ingest_from_another_filesystem_copies_and_verifies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    q = make_queue(tmp_path)
    other = Path(shm) / f"shardkit-inbox-{os.getpid()}"
    other.mkdir()
    try:
        q.dir("inbox").rmdir()
        q.dir("inbox").symlink_to(other)
        drop(q, "far.jsonl", GOOD * 3)
        result = ingest(q)
        assert [(r.name, r.to) for r in result.routed] == [("far.jsonl", "normal")]
        assert (q.dir("normal") / "far.jsonl").read_bytes() == GOOD * 3
        assert not (other / "far.jsonl").exists()
        line = [e for e in journal(q) if e["op"] == "ingest"][0]
        assert line["copied"] is True and line["sha256"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_rotate_cli(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(3):
        (logs / f"s{i}.log").write_bytes(b"status line\n" * 1000)
    os.utime(logs / "s0.log", (OLD, OLD))
    r = run_cli("rotate", logs, "--older-than", "1h", "--delete")
    assert r.returncode == 0 and b"needs --yes" in r.stdout and (logs / "s0.log").exists()
    r = run_cli("rotate", logs, "--older-than", "1h", "--compress", "--json")
    assert r.returncode == 0 and orjson.loads(r.stdout)["applied"] is True
    assert sorted(p.name for p in logs.iterdir()) == ["s0.log.gz", "s1.log", "s2.log"]


def test_retry_split_reshards_a_file_that_failed_for_size(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    data = b"".join(GOOD.replace(b"hi", b"hi %d" % i) for i in range(25))
    pend(q, "huge.jsonl", data, prio="high")
    c = q.claim("w")
    q.fail(c.name, c.token, reason="CUDA out of memory")
    r = run_cli("queue", "retry", "huge.jsonl", "--split", "10", "--root", q.root)
    assert r.returncode == 0, r.stderr
    st = states(q)
    assert st["split"] == ["huge.jsonl"] and len(st["high"]) == 3
    assert b"".join((q.dir("high") / n).read_bytes() for n in sorted(st["high"])) == data
    parent = q.find("huge.jsonl").item
    assert all(q.find(n).item.parent == parent.id for n in st["high"])
    assert [h["op"] for h in parent.history][-1] == "retry"


def test_a_json_array_drop_counts_its_records_not_its_lines(tmp_path: Path) -> None:
    """Issue 17.1: a .json drop of 999 records was shown as 4,997 records (its lines)."""
    import json

    q = make_queue(tmp_path)
    records = [{"instruction": f"q{i}", "input": "", "output": f"é {i}"} for i in range(999)]
    data = json.dumps(records, indent=1, ensure_ascii=False).encode()
    assert data.count(b"\n") > 4000  # many lines per record
    drop(q, "alpaca.json", data)
    ingest(q)
    [entry] = [e for e in q.entries() if e.name == "alpaca.json"]
    assert entry.state == "normal"
    assert entry.item.records == 999
    show = orjson.loads(run_cli("queue", "show", "alpaca.json", "--root", q.root, "--json").stdout)
    assert show["item"]["records"] == 999
    status = orjson.loads(run_cli("queue", "status", "--root", q.root, "--json").stdout)
    assert status["states"]["normal"]["records"] == 999
    r = run_cli("manifest", q.root, "--json")
    assert r.returncode == 0, r.stderr
    [f] = [f for f in orjson.loads((q.root / "manifest.json").read_bytes())["files"] if f["path"].endswith("alpaca.json")]
    assert f["records"] == 999


def test_a_redriven_file_still_bad_is_one_item_back_in_quarantine(tmp_path: Path) -> None:
    """Issue 17.2: its second rejects file (NAME.rejects-2.jsonl) was adopted by doctor --repair
    as a new item, and status --check then counted two quarantined files for ever."""
    q = make_queue(tmp_path)
    bad = b'{"messages":[{"role":"bot","content":"x"}]}\n' * 2
    drop(q, "bad.jsonl", bad)
    ingest(q)
    assert q.find("bad.jsonl").state == "quarantine"
    assert run_cli("queue", "redrive", "bad.jsonl", "--root", q.root).returncode == 0
    os.utime(q.dir("inbox") / "bad.jsonl", (OLD, OLD))
    ingest(q)
    names = sorted(p.name for p in q.dir("quarantine").iterdir())
    assert names == ["bad.jsonl", "bad.jsonl.report.json", "bad.rejects-2.jsonl", "bad.rejects.jsonl"]
    assert states(q) == {"quarantine": ["bad.jsonl"]}
    item = q.find("bad.jsonl").item
    assert [(h["op"], h["to"]) for h in item.history][-3:] == [("ingest", "quarantine"), ("redrive", "inbox"),
                                                               ("ingest", "quarantine")]
    assert item.attempts == 0  # attempts count claims; nobody claimed it
    assert "invalid record" in item.history[-1]["reason"]
    rep = doctor(q, repair=True)
    assert rep.ok, [f.message for f in rep.problems]
    assert len(list(q.meta.glob("items/*.json"))) == 1
    assert doctor(q).ok
    status = orjson.loads(run_cli("queue", "status", "--root", q.root, "--json").stdout)
    assert status["states"]["quarantine"]["files"] == 1


def test_queue_manifest_sees_an_edit_whose_mtime_was_put_back(tmp_path: Path) -> None:
    """Issue 24.6: the cache key was dev:ino:size:mtime_ns, so an in-place edit followed by
    `touch -r` kept a stale sha256 that verify and sha256sum -c then rejected."""
    from shardkit.queue.state import queue_manifest
    from shardkit.store.manifest import verify

    q = make_queue(tmp_path)
    f = pend(q, "f.jsonl", GOOD)
    queue_manifest(q)
    st = f.stat()
    f.write_bytes(GOOD.replace(b"hi", b"ho"))  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # as touch -r does
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    m = queue_manifest(q)
    assert m["rehashed"] == 1
    assert verify(q.root / "manifest.json").ok
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=q.root, capture_output=True).returncode == 0


def test_every_queue_command_takes_root_one_way(tmp_path: Path) -> None:
    """--root, else $SHARDKIT_ROOT, else the current folder; the old positional ROOT still
    works with a one-line notice (issue 18.3)."""
    root = tmp_path / "q"
    assert run_cli("queue", "init", "--root", root).returncode == 0
    for cmd in (["status"], ["ingest"], ["claim"], ["requeue-stale"], ["prune", "--keep", "1"], ["doctor"],
                ["list"], ["retry", "--all"]):
        r = run_cli("queue", *cmd, "--root", root)
        assert r.returncode in (0, 1), (cmd, r.stderr)
        assert b"deprecated" not in r.stderr and b"Traceback" not in r.stderr
        r = run_cli("queue", *cmd, env={"SHARDKIT_ROOT": str(root)}, cwd=tmp_path)
        assert r.returncode in (0, 1) and b"not a shardkit queue" not in r.stderr, (cmd, r.stderr)
    old = run_cli("queue", "status", root, "--json")
    assert old.returncode == 0 and orjson.loads(old.stdout)["root"] == str(root)
    assert old.stderr.decode().strip() == (f"shardkit: note: a queue ROOT argument is deprecated; write --root {root} "
                                           "(or set SHARDKIT_ROOT)")
    both = run_cli("queue", "status", tmp_path / "other", "--root", root)
    assert both.returncode == 2 and b"two queue roots given" in both.stderr
    nowhere = run_cli("queue", "status", cwd=tmp_path, env={"SHARDKIT_ROOT": ""})
    assert nowhere.returncode != 0 and b"not a shardkit queue" in nowhere.stderr
