"""Kill `queue ingest` (SIGKILL at fault points and at random moments), then `doctor --repair`
and a new ingest: every dropped record must be pending exactly once."""

from __future__ import annotations

import collections
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_cli
from crashkit import run_and_kill, run_with_fault, seeded_delays

from shardkit.queue.settings import Settings
from shardkit.queue.state import PRIORITIES, Queue

OLD = time.time() - 3600
TRIALS = 30


def record(i: int, tag: str) -> bytes:
    return (
        b'{"messages":[{"role":"user","content":"%s %d"},{"role":"assistant","content":"%s"}]}\n'
        % (tag.encode(), i, b"x" * (i % 200))
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A queue with drops in its inbox (one to split), and the records they hold."""
    base = tmp_path_factory.mktemp("qcrash")
    root = base / "template"
    Queue(root, Settings(), create=True)
    (root / "shardkit.toml").write_text('max_records = 300\nkind = "chat"\n')
    dropped = collections.Counter()
    files = {"big.jsonl": 1500, "a.jsonl": 120, "b.jsonl": 250, "c.jsonl": 40}
    for name, n in files.items():
        lines = [record(i, name) for i in range(n)]
        (root / "inbox" / name).write_bytes(b"".join(lines))
        os.utime(root / "inbox" / name, (OLD, OLD))
        dropped.update(lines)
    t = time.monotonic()
    fresh = base / "timing"
    shutil.copytree(root, fresh)
    assert run_cli("queue", "ingest", "--root", fresh).returncode == 0
    return base, root, dropped, time.monotonic() - t


def pending_records(root: Path) -> collections.Counter:
    got = collections.Counter()
    for prio in PRIORITIES:
        for p in (root / "queue" / prio).iterdir():
            if not p.name.startswith("."):
                got.update(p.read_bytes().splitlines(keepends=True))
    return got


def recover_and_check(root: Path, dropped: collections.Counter) -> None:
    r = run_cli("queue", "doctor", "--root", root, "--repair")
    assert r.returncode in (0, 1), r.stderr
    r = run_cli("queue", "ingest", "--root", root)
    assert r.returncode == 0, r.stderr
    got = pending_records(root)
    assert got == dropped, (sum(got.values()), sum(dropped.values()))  # none lost, none twice
    assert not [p for p in (root / "inbox").iterdir()], "inbox not drained"
    r = run_cli("queue", "doctor", "--root", root)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert sorted(p.name for p in (root / "queue" / "split").iterdir()) == ["big.jsonl"]


@pytest.mark.parametrize(
    "fault",
    ["after:ingest_split_written:1", "after:ingest_publish:1", "after:ingest_publish:3",
     "after:shard_commit:2", "before:shard_commit:1", "after:manifest_write:3"],
)
def test_ingest_killed_at_a_fault_point(template, fault, tmp_path):
    _, src, dropped, _ = template
    root = tmp_path / "q"
    shutil.copytree(src, root)
    r = run_with_fault(["queue", "ingest", "--root", root], fault)
    assert r.returncode == -9, r.stderr  # the fault point was reached
    recover_and_check(root, dropped)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_ingest_killed_at_random_moments(template, trial, tmp_path):
    _, src, dropped, seconds = template
    delay = seeded_delays(1999, TRIALS, 0.05, seconds * 1.2)[trial]
    root = tmp_path / "q"
    shutil.copytree(src, root)
    run_and_kill(["queue", "ingest", "--root", root], delay)
    recover_and_check(root, dropped)
