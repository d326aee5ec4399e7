"""rotate: compress or delete old files in status/log folders; plans, conflicts, crashes."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shardkit.core.errors import ConflictError, InputError, UsageError
from shardkit.queue.journal import Journal
from shardkit.queue.rotate import gzip_file, rotate

NOW = 1_800_000_000.0
DAY = 86400.0


def make(directory: Path, name: str, size: int, age_days: float, *, seed: int = 0) -> bytes:
    """A log-like file of `size` bytes whose mtime is `age_days` before NOW."""
    rng = random.Random(f"{name}{seed}")
    line = lambda i: f"{i} status=ok step={rng.randint(0, 10**6)} loss={rng.random():.5f}\n".encode()  # noqa: E731
    data = b"".join(line(i) for i in range(size // 20 + 1))[:size]
    path = directory / name
    path.write_bytes(data)
    os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    return data


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    d = tmp_path / "status"
    d.mkdir()
    data = {
        "day1.log": make(d, "day1.log", 5000, 10),
        "day2.log": make(d, "day2.log", 4000, 8),
        "day3.log": make(d, "day3.log", 3000, 3),
        "today.log": make(d, "today.log", 2000, 0.1),
    }
    return d, data


def test_compress_older_than_keeps_content_mtime_and_mode(logs):
    d, data = logs
    os.chmod(d / "day1.log", 0o640)
    r = rotate(d, older_than=7 * DAY, compress=True, now=NOW)

    assert r.applied and [(a.name, a.action, a.status) for a in r.actions] == [
        ("day1.log", "compress", "done"), ("day2.log", "compress", "done"),
    ]
    assert sorted(os.listdir(d)) == ["day1.log.gz", "day2.log.gz", "day3.log", "today.log"]
    for name in ("day1.log", "day2.log"):
        gz = d / f"{name}.gz"
        assert gzip.decompress(gz.read_bytes()) == data[name]
        assert gz.stat().st_mtime == pytest.approx(NOW - (10 if name == "day1.log" else 8) * DAY)
    assert (d / "day1.log.gz").stat().st_mode & 0o777 == 0o640
    a = r.actions[0]
    assert a.bytes_before == 5000 and 0 < a.bytes_after < 5000
    assert r.bytes_freed == sum(a.bytes_before - a.bytes_after for a in r.actions)
    assert r.kept == 2 and r.kept_bytes == 5000
    # a second run has nothing left to do: .gz files are never compressed again
    assert rotate(d, older_than=7 * DAY, compress=True, now=NOW).actions == []


def test_dotfiles_symlinks_folders_and_compressed_files_are_left_alone(logs):
    d, _ = logs
    old = NOW - 30 * DAY
    (d / ".hidden.log").write_bytes(b"secret\n")
    (d / "sub").mkdir()
    (d / "sub" / "deep.log").write_bytes(b"deep\n")
    outside = d.parent / "outside.log"
    outside.write_bytes(b"not ours\n")
    (d / "link.log").symlink_to(outside)
    (d / "already.log.gz").write_bytes(gzip.compress(b"old\n"))
    for p in (d / ".hidden.log", d / "sub", d / "sub" / "deep.log", outside, d / "already.log.gz"):
        os.utime(p, (old, old))
    os.utime(d / "link.log", (old, old), follow_symlinks=False)

    r = rotate(d, older_than=7 * DAY, compress=True, now=NOW)
    assert sorted(a.name for a in r.actions) == ["day1.log", "day2.log"]
    assert (d / ".hidden.log").exists() and (d / "sub" / "deep.log").exists()
    assert (d / "link.log").is_symlink() and outside.read_bytes() == b"not ours\n"
    assert not (d / "link.log.gz").exists() and not (d.parent / "outside.log.gz").exists()
    assert not (d / "already.log.gz.gz").exists()

    # delete takes old .gz files too, still never a symlink, dotfile or subfolder
    r = rotate(d, older_than=7 * DAY, delete=True, yes=True, now=NOW)
    assert sorted(a.name for a in r.actions) == ["already.log.gz", "day1.log.gz", "day2.log.gz"]
    assert sorted(os.listdir(d)) == [".hidden.log", "day3.log", "link.log", "sub", "today.log"]
    assert outside.exists()


def test_delete_without_yes_is_only_a_plan(logs):
    d, data = logs
    r = rotate(d, max_bytes=5500, delete=True, now=NOW)
    assert not r.applied and r.why_not_applied == "delete needs --yes"
    # newest first: today (2000) + day3 (3000) fit in 5500; day2 and day1 do not
    assert [(a.name, a.action, a.status) for a in r.actions] == [
        ("day1.log", "delete", "planned"), ("day2.log", "delete", "planned"),
    ]
    assert all(a.reason == "beyond --max-bytes" for a in r.actions)
    assert listing(d) == data
    assert r.bytes_freed == 0

    r = rotate(d, max_bytes=5500, delete=True, yes=True, now=NOW)
    assert r.applied and [a.status for a in r.actions] == ["done", "done"]
    assert sorted(os.listdir(d)) == ["day3.log", "today.log"]
    assert r.bytes_freed == 9000


def test_the_cap_is_contiguous_from_the_newest(logs):
    """A small old file is not kept just because it would fit: everything past the cut goes."""
    d, _ = logs
    make(d, "tiny-old.log", 10, 20)
    r = rotate(d, max_bytes=6000, delete=True, dry_run=True, now=NOW)
    assert [a.name for a in r.actions] == ["tiny-old.log", "day1.log", "day2.log"]


def test_dry_run_changes_nothing(logs):
    d, data = logs
    r = rotate(d, older_than=1 * DAY, compress=True, dry_run=True, now=NOW)
    assert not r.applied and r.why_not_applied == "dry run"
    assert [a.name for a in r.actions] == ["day1.log", "day2.log", "day3.log"]
    assert all(a.status == "planned" and a.bytes_after is None for a in r.actions)
    assert listing(d) == data


def test_compress_old_and_delete_beyond_the_cap_together(logs):
    d, data = logs
    r = rotate(d, older_than=2 * DAY, max_bytes=9500, compress=True, delete=True, yes=True, now=NOW)
    # cap by the sizes on disk now: today 2000 + day3 3000 + day2 4000 = 9000 fit, day1 does not
    assert [(a.name, a.action) for a in r.actions] == [("day1.log", "delete"), ("day2.log", "compress"), ("day3.log", "compress")]
    assert sorted(os.listdir(d)) == ["day2.log.gz", "day3.log.gz", "today.log"]
    assert gzip.decompress((d / "day3.log.gz").read_bytes()) == data["day3.log"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"older_than": DAY}, UsageError, "nothing to do: give --compress and/or --delete"),
        ({"compress": True}, UsageError, "nothing selected"),
        ({"older_than": DAY, "compress": True, "delete": True, "yes": True}, UsageError, "give both"),
        ({"max_bytes": 10, "compress": True, "delete": True, "yes": True}, UsageError, "give both"),
        ({"older_than": -1, "compress": True}, UsageError, "must not be negative"),
    ],
)
def test_options_that_cannot_work_are_usage_errors(logs, kwargs, error, message):
    d, data = logs
    with pytest.raises(error, match=message) as e:
        rotate(d, now=NOW, **kwargs)
    assert e.value.exit_code == 2
    assert listing(d) == data


def test_missing_or_non_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        rotate(tmp_path / "nope", older_than=DAY, compress=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="not a folder") as e:
        rotate(tmp_path / "f", older_than=DAY, compress=True)
    assert e.value.exit_code == 3


def test_an_existing_gz_is_never_replaced(logs):
    d, data = logs
    (d / "day1.log.gz").write_bytes(b"someone else's archive")
    r = rotate(d, older_than=7 * DAY, compress=True, now=NOW)
    by_name = {a.name: a for a in r.actions}
    assert by_name["day1.log"].status == "skipped" and "already exists" in by_name["day1.log"].reason
    assert by_name["day2.log"].status == "done"
    assert (d / "day1.log").read_bytes() == data["day1.log"]
    assert (d / "day1.log.gz").read_bytes() == b"someone else's archive"
    assert r.skipped == [by_name["day1.log"]]


def test_a_compression_killed_before_removing_the_original_is_finished(logs):
    """NAME.gz committed, NAME still there (killed in between): verified equal, NAME removed."""
    d, data = logs
    (d / "day1.log.gz").write_bytes(gzip.compress(data["day1.log"]))
    r = rotate(d, older_than=9 * DAY, compress=True, now=NOW)
    assert [(a.name, a.status) for a in r.actions] == [("day1.log", "done")]
    assert not (d / "day1.log").exists()
    assert gzip.decompress((d / "day1.log.gz").read_bytes()) == data["day1.log"]


def test_gzip_file_refuses_symlinks_and_existing_targets(tmp_path):
    src = tmp_path / "a.log"
    src.write_bytes(b"hello\n" * 100)
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(InputError, match="symlink"):
        gzip_file(tmp_path / "link", tmp_path / "link.gz")
    (tmp_path / "taken.gz").write_bytes(b"x")
    with pytest.raises(ConflictError, match="already exists"):
        gzip_file(src, tmp_path / "taken.gz")
    assert (tmp_path / "taken.gz").read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == ["a.log", "link", "taken.gz"]  # no temp left


def test_every_move_and_delete_is_journaled(logs, tmp_path):
    d, _ = logs
    j = Journal(tmp_path / "j" / "journal.jsonl")
    rotate(d, older_than=2 * DAY, max_bytes=9500, compress=True, delete=True, yes=True, now=NOW, journal=j)
    entries = list(j.iter_entries())
    assert [(e["op"], e.get("phase"), e.get("name")) for e in entries] == [
        ("rotate", "intent", None),
        ("rotate-delete", "step", "day1.log"),
        ("rotate-compress", "step", "day2.log"),
        ("rotate-compress", "step", "day3.log"),
        ("rotate", "commit", None),
    ]
    assert entries[0]["dir"] == str(d) and entries[0]["files"] == 3
    assert entries[1]["bytes"] == 5000
    assert entries[2]["to"] == "day2.log.gz" and entries[2]["bytes_after"] == (d / "day2.log.gz").stat().st_size
    assert j.open_intents() == []
    # plans are not journaled
    rotate(d, max_bytes=1, delete=True, now=NOW, journal=j)
    assert len(list(j.iter_entries())) == 5


LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(30)
"""


def test_a_second_rotate_on_the_same_folder_is_refused(logs):
    d, data = logs
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(d)], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"locked\n"
        with pytest.raises(ConflictError, match="another rotate") as e:
            rotate(d, older_than=DAY, compress=True, now=NOW)
        assert e.value.exit_code == 4
        assert listing(d) == data
        assert rotate(d, older_than=DAY, compress=True, dry_run=True, now=NOW).actions  # plans need no lock
    finally:
        p.kill()
        p.wait()
    assert rotate(d, older_than=DAY, compress=True, now=NOW).applied


ROTATOR = """
import sys
from shardkit.queue.rotate import rotate
rotate(sys.argv[1], older_than=0, compress=True, now=float(sys.argv[2]))
"""


def test_killed_mid_rotation_loses_nothing_and_a_rerun_finishes(tmp_path):
    """SIGKILL at random moments: each file is whole as NAME or NAME.gz; a rerun completes."""
    d = tmp_path / "logs"
    d.mkdir()
    data = {f"run{i:02d}.log": make(d, f"run{i:02d}.log", 200_000, 2, seed=i) for i in range(16)}
    rng = random.Random(7)
    partial = 0
    gzipped = lambda: sum(n.endswith(".gz") and not n.startswith(".") for n in os.listdir(d))  # noqa: E731
    for _ in range(6):
        before = gzipped()
        p = subprocess.Popen([sys.executable, "-c", ROTATOR, str(d), str(NOW)])
        deadline = time.monotonic() + 60
        while gzipped() == before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)  # wait for real progress, whatever the machine's load
        time.sleep(rng.uniform(0, 0.04))  # then kill at a random point of the next file
        p.send_signal(signal.SIGKILL)
        p.wait()
        partial += 0 < gzipped() < len(data)
        for name, content in data.items():
            plain, gz = d / name, d / f"{name}.gz"
            assert plain.exists() or gz.exists(), name
            if plain.exists():
                assert plain.read_bytes() == content
            if gz.exists():
                assert gzip.decompress(gz.read_bytes()) == content
    assert partial  # the kills did land mid-run
    r = rotate(d, older_than=0, compress=True, now=NOW)
    assert all(a.status == "done" for a in r.actions)
    assert sorted(os.listdir(d)) == sorted(f"{n}.gz" for n in data)
    for name, content in data.items():
        assert gzip.decompress((d / f"{name}.gz").read_bytes()) == content
