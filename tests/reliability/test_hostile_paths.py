"""Hostile paths: symlinks, FIFOs, devices, control characters, `..`, unreadable files,
templates that aim outside OUT, and names planted where shardkit writes.

Every case runs the real CLI in a folder holding ROOT (a queue) and/or OUT next to
`outside/` (files shardkit must never touch) and `in/` (inputs, read on purpose). The whole
folder is snapshotted before and after (paths, kinds, sizes, mtimes, modes, sha256,
symlink targets; and atimes, set old beforehand, to catch reads): nothing outside ROOT/OUT
may be read, written, created, removed or moved.

Running as root (containers, CI), permission cases drop CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH in the child (torture.permissions_apply), so a chmod 000 file is really
unreadable to it; if that is impossible they are skipped with the reason.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import orjson
import pytest
import torture as T

from shardkit.core.io import create_temp

REC = T.chat_record("ok", 0) + b"\n"
PERMS_PREEXEC, PERMS_WHY = T.permissions_apply()


class Arena:
    """base/{q (ROOT), out (OUT), in (inputs), outside (never touched)}."""

    def __init__(self, base: Path, *, queue: bool = False) -> None:
        self.base, self.root, self.out, self.inputs, self.outside = base, base / "q", base / "out", base / "in", base / "outside"
        self.inputs.mkdir()
        self.outside.mkdir()
        (self.outside / "victim.jsonl").write_bytes(b"".join(T.chat_record("victim", i) + b"\n" for i in range(50)))
        (self.outside / "secret.txt").write_bytes(b"do not read me\n" * 100)
        (self.outside / "empty").write_bytes(b"")
        (self.outside / "big.bin").write_bytes(bytes(range(256)) * 1000)
        (self.outside / "dir").mkdir()
        (self.outside / "dir" / "inner.jsonl").write_bytes(REC)
        os.mkfifo(self.outside / "fifo")
        (self.inputs / "in.jsonl").write_bytes(b"".join(T.chat_record("in", i, size=300) + b"\n" for i in range(60)))
        if queue:
            T.ok(T.run(["queue", "init", "--root", self.root]))
            (self.root / "shardkit.toml").write_text('settle = "0s"\nkind = "chat"\n')
        self.reads_checked = T.atime_works(base)
        self.before = None

    def freeze(self) -> None:
        self.before = T.snapshot(self.base, [self.root, self.out])

    def damage(self) -> list[str]:
        inputs = [str(p.relative_to(self.base)) for p in self.inputs.rglob("*")]
        problems = T.changed(self.before, self.base, [self.root, self.out], reads_allowed=inputs)
        if not self.reads_checked:
            problems = [p for p in problems if not p.startswith("read outside")]
        return problems


def ingest_json(a: Arena, **kw) -> dict:
    r = T.run(["queue", "ingest", "--root", a.root, "--json"], timeout=60, **kw)
    assert not r.timed_out, "ingest hung (opened a FIFO?)"
    T.ok(r)
    return orjson.loads(r.stdout)


def skipped(result: dict) -> dict[str, str]:
    return {s["name"]: s["why"] for s in result["skipped"]}


# ---------------------------------------------------------------- the inbox


def test_symlinks_in_the_inbox_are_refused_and_never_followed(tmp_path):
    a = Arena(tmp_path, queue=True)
    inbox = a.root / "inbox"
    (inbox / "rel.jsonl").symlink_to("../../outside/victim.jsonl")
    (inbox / "abs.jsonl").symlink_to(a.outside / "victim.jsonl")
    (inbox / "dir.jsonl").symlink_to(a.outside / "dir")
    (inbox / "pipe.jsonl").symlink_to(a.outside / "fifo")
    (inbox / "dangling.jsonl").symlink_to(a.outside / "nope.jsonl")
    a.freeze()
    result = ingest_json(a)
    why = skipped(result)
    for name in ("rel.jsonl", "abs.jsonl", "dir.jsonl", "pipe.jsonl", "dangling.jsonl"):
        assert name in why and "symlink" in why[name], (name, result)
        assert (inbox / name).is_symlink(), f"{name} was moved"
    assert not result["routed"]
    for args in (["queue", "doctor", "--root", a.root, "--repair"], ["manifest", a.root], ["queue", "status", "--root", a.root],
                 ["queue", "list"], ["queue", "prune", "--root", a.root, "--keep", "0", "--yes"]):
        r = T.run(args if args[:2] != ["queue", "list"] else [*args, "--root", a.root], timeout=60)
        assert r.returncode in (0, 1) and not r.timed_out, r.describe()
    assert not a.damage()


def test_control_characters_in_drop_names_are_refused(tmp_path):
    """A newline in a name breaks SHA256SUMS (one entry becomes two lines) and every
    line-based tool; an escape sequence rewrites the operator's terminal in `status`,
    `doctor` and `list`. Such drops are skipped (or quarantined) with a reason, never queued."""
    a = Arena(tmp_path, queue=True)
    inbox = a.root / "inbox"
    hostile = ["evil\nname.jsonl", "esc\x1b[2J.jsonl", "bell\x07.jsonl", "del\x7f.jsonl", "cr\rname.jsonl", "tab\tname.jsonl"]
    for name in [*hostile, "fine.jsonl", "a..b.jsonl"]:
        (inbox / name).write_bytes(REC)
    (inbox / "..hidden.jsonl").write_bytes(REC)
    a.freeze()
    result = ingest_json(a)
    routed = {r["name"]: r["to"] for r in result["routed"]}
    why = skipped(result)
    assert routed.get("fine.jsonl") == "normal" and routed.get("a..b.jsonl") == "normal", result
    assert "..hidden.jsonl" in why, "a dotfile drop must be left alone"
    queued = sorted(n for n in hostile if routed.get(n) in ("high", "normal", "low"))
    assert not queued, f"drops with control characters in their names were queued: {queued!r}"
    T.ok(T.run(["manifest", a.root]))
    assert not T.sums_problems(a.root), T.sums_problems(a.root)
    assert not a.damage()


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_fifo_device_or_folder_in_the_inbox_is_skipped_without_blocking(tmp_path, kind):
    a = Arena(tmp_path, queue=True)
    p = a.root / "inbox" / "odd.jsonl"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "device":
        try:
            os.mknod(p, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin
        except PermissionError:
            pytest.skip("mknod is not permitted here (no CAP_MKNOD): no device file to drop")
    else:
        p.mkdir()
    a.freeze()
    why = skipped(ingest_json(a))
    assert "odd.jsonl" in why and "not a regular file" in why["odd.jsonl"], why
    assert os.path.lexists(p)
    T.ok(T.run(["queue", "doctor", "--root", a.root, "--repair"], timeout=60), (0, 1))
    assert os.path.lexists(p)
    assert not a.damage()


@pytest.mark.parametrize("command", ["split", "validate", "stats"])
def test_fifo_and_device_as_input_are_refused_without_blocking(tmp_path, command):
    a = Arena(tmp_path)
    a.freeze()
    for path in (a.outside / "fifo", Path("/dev/zero")):
        args = [command, path] + (["-o", a.out, "--max-records", "1"] if command == "split" else [])
        r = T.run(args, timeout=30)
        assert not r.timed_out, f"{command} {path}: blocked reading it"
        assert r.returncode == 3, r.describe()
        assert r.err.startswith(f"shardkit: error: {path}: ") and len(r.err.strip().splitlines()) == 1, r.err
    assert not a.damage()


@pytest.mark.skipif(PERMS_PREEXEC is None, reason=PERMS_WHY or "")
def test_unreadable_files_are_refused(tmp_path):
    a = Arena(tmp_path, queue=True)
    locked = a.root / "inbox" / "locked.jsonl"
    locked.write_bytes(REC)
    locked.chmod(0)
    mine = a.inputs / "locked.jsonl"
    mine.write_bytes(REC)
    mine.chmod(0)
    ro = a.base / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    a.freeze()
    why = skipped(ingest_json(a, preexec=PERMS_PREEXEC))
    assert "locked.jsonl" in why and "unreadable" in why["locked.jsonl"], why
    assert locked.exists()
    for args in (["split", mine, "-o", a.out, "--max-records", "1"], ["validate", mine], ["stats", mine]):
        r = T.run(args, preexec=PERMS_PREEXEC)
        assert r.returncode == 3 and "permission denied" in r.err.lower() and str(mine) in r.err, r.describe()
    r = T.run(["split", a.inputs / "in.jsonl", "-o", ro / "out", "--max-records", "10"], preexec=PERMS_PREEXEC)
    assert r.returncode == 3 and "permission denied" in r.err.lower(), r.describe()
    r = T.run(["validate", a.inputs / "in.jsonl", "--rejects", ro / "bad.jsonl"], preexec=PERMS_PREEXEC)
    assert r.returncode in (0, 3), r.describe()  # no invalid record: nothing to write is fine too
    assert not list(ro.iterdir())
    problems = a.damage()
    ro.chmod(0o755)
    assert not problems


# ---------------------------------------------------------------- names that aim outside


@pytest.mark.parametrize("flags", [
    ["--name", "../{index}.jsonl"],
    ["--name", "{stem}/../../escape-{index}.jsonl"],
    ["--name", "sub/{index}.jsonl"],
    ["--name", "/tmp/shardkit-escape-{index}.jsonl"],
    ["--name", "..{index}"],
    ["--name", "{index:/>3}.jsonl"],
])
def test_a_name_template_cannot_escape_out(tmp_path, flags):
    """Refused before anything is written. Exit 2 (a usage error, DESIGN.md section 3) is
    accepted as well as 3/4: the issue's "exit 3 or 4" predates the usage-error code."""
    a = Arena(tmp_path)
    a.freeze()
    r = T.run(["split", a.inputs / "in.jsonl", "-o", a.out, "--max-records", "5", "--oversize", "reject", "--max-bytes", "200B", *flags])
    assert r.returncode in (2, 3, 4), r.describe()
    assert r.err.startswith("shardkit: error: ") and len(r.err.strip().splitlines()) == 1, r.err
    assert not a.out.exists() or not [p for p in a.out.iterdir() if p.name.endswith(".jsonl")]
    assert not list(Path("/tmp").glob("shardkit-escape-*"))
    assert not a.damage()


def test_a_rejects_path_outside_out_goes_exactly_there_and_nowhere_else(tmp_path):
    """--rejects PATH may name a file outside OUT on purpose (issue 17.5, as validate
    --rejects): the records go to exactly that file, created new, and nothing else escapes;
    an existing file there is never replaced (exit 4)."""
    a = Arena(tmp_path)
    a.freeze()
    target = tmp_path / "aside-rejects.jsonl"
    args = ["split", a.inputs / "in.jsonl", "-o", a.out, "--max-records", "5", "--oversize", "reject",
            "--max-bytes", "200B", "--allow-empty", "--rejects", target]
    r = T.run(args)
    assert r.returncode == 0, r.describe()
    assert target.is_file() and target.read_bytes().count(b"\n") > 0
    assert not [p for p in a.out.iterdir() if p.name.endswith(".jsonl")]  # every record went aside
    assert a.damage() == [f"created outside ROOT/OUT: {target.name}"]  # that file, and nothing else
    before = target.read_bytes()
    r = T.run([*args[:3], tmp_path / "out2", *args[4:]])
    assert r.returncode == 4 and "already exists" in r.err, r.describe()
    assert target.read_bytes() == before


def test_operator_commands_refuse_a_path_outside_root(tmp_path):
    """`queue hold /elsewhere/x.jsonl` names a file outside the queue: refused (exit 3 or 4),
    not mapped to the queue's own file that happens to share its name."""
    a = Arena(tmp_path, queue=True)
    (a.root / "inbox" / "victim.jsonl").write_bytes(REC)
    ingest_json(a)
    queued = a.root / "queue" / "normal" / "victim.jsonl"
    assert queued.exists()
    a.freeze()
    wrong = []
    for args in (["hold", a.outside / "victim.jsonl"], ["quarantine", "../../outside/victim.jsonl"], ["redrive", a.outside / "victim.jsonl"],
                 ["retry", a.outside / "victim.jsonl"], ["complete", a.outside / "victim.jsonl"], ["fail", a.outside / "victim.jsonl"],
                 ["release", a.outside / "victim.jsonl"], ["hold", a.outside / "dir" / ".." / "victim.jsonl"]):
        r = T.run(["queue", *args, "--root", a.root])
        if r.returncode not in (3, 4):
            wrong.append(f"`queue {args[0]} {args[1]}` -> {r.returncode}: {r.stdout.decode().strip()}")
        if not queued.exists():
            wrong.append(f"`queue {args[0]} {args[1]}` moved the queue's own normal/victim.jsonl")
            T.run(["queue", "release", "victim.jsonl", "--root", a.root])
            T.run(["queue", "redrive", "victim.jsonl", "--root", a.root])
            ingest_json(a)
    assert not a.damage()
    assert not wrong, "\n".join(wrong)


def test_a_long_input_name_still_splits(tmp_path):
    """A 230-character input stem gives 242-character shard names (the limit is 255 bytes);
    the temp name beside it must fit too."""
    a = Arena(tmp_path)
    src = a.inputs / ("a" * 230 + ".jsonl")
    src.write_bytes(REC * 3)
    r = T.run(["split", src, "-o", a.out, "--max-records", "2"])
    assert r.returncode == 0, r.describe()


# ---------------------------------------------------------------- what shardkit creates


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_created_files_follow_the_umask(tmp_path, umask):
    """Files shardkit creates get 0666 & ~umask (0644 under the default 022), folders 0777 &
    ~umask: never mkstemp's 0600."""
    a = Arena(tmp_path, queue=True)
    src = a.inputs / "mixed.jsonl"
    src.write_bytes(REC + T.INVALID_CHAT[0] + b"\n" + T.chat_record("big", 0, size=5000) + b"\n" + REC)
    T.ok(T.run(["split", src, "-o", a.out / "shards", "--max-records", "1", "--max-bytes", "2000B", "--oversize", "reject",
                "--validate", "chat", "--jobs", "1"], umask=umask))
    T.ok(T.run(["manifest", a.out / "shards"], umask=umask))
    T.ok(T.run(["validate", src, "--kind", "chat", "--max-errors", "9", "--rejects", a.out / "bad.jsonl"], umask=umask))
    (a.root / "shardkit.toml").write_text('settle = "0s"\nkind = "chat"\nmax_records = 2\n')
    drops = {"big.jsonl": REC * 5, "bad.jsonl": T.INVALID_CHAT[1] + b"\n", "one.jsonl": REC}
    for name, data in drops.items():
        (a.root / "inbox" / name).write_bytes(data)
        (a.root / "inbox" / name).chmod(0o644)
    T.ok(T.run(["queue", "ingest", "--root", a.root], umask=umask))
    claimed = T.ok(T.run(["queue", "claim", "--root", a.root, "--worker", "w"], umask=umask)).stdout.decode().strip()
    T.ok(T.run(["manifest", a.root], umask=umask))
    T.ok(T.run(["queue", "complete", claimed], umask=umask))
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    wrong = []
    for top in (a.out, a.root):
        for dirpath, _dirs, filenames in os.walk(top):
            for name in filenames:
                p = Path(dirpath) / name
                if name in drops or name == "shardkit.toml" or p.parent == a.root / "queue" / "split":
                    continue  # files the test wrote: moved, never recreated
                mode = stat.S_IMODE(p.stat().st_mode)
                if mode != want_file:
                    wrong.append(f"{p.relative_to(a.base)}: {mode:o} (want {want_file:o})")
    for d in (a.out, a.out / "shards"):  # created by split; the queue folders by `queue init` above
        mode = stat.S_IMODE(d.stat().st_mode)
        if mode != want_dir:
            wrong.append(f"{d.relative_to(a.base)}/: {mode:o} (want {want_dir:o})")
    assert not wrong, "\n".join(wrong)


def test_planted_symlink_at_a_shard_name_in_a_fresh_out(tmp_path):
    a = Arena(tmp_path)
    a.out.mkdir()
    (a.out / "in-00000.jsonl").symlink_to(a.outside / "victim.jsonl")
    a.freeze()
    r = T.run(["split", a.inputs / "in.jsonl", "-o", a.out, "--max-records", "10"])
    assert r.returncode == 4, r.describe()
    assert (a.out / "in-00000.jsonl").is_symlink()
    assert not a.damage()


def test_planted_symlink_at_sha256sums_is_replaced_not_followed(tmp_path):
    a = Arena(tmp_path)
    a.out.mkdir()
    (a.out / "SHA256SUMS").symlink_to(a.outside / "empty")  # an empty SHA256SUMS is tolerated in a new OUT
    a.freeze()
    r = T.run(["split", a.inputs / "in.jsonl", "-o", a.out, "--max-records", "10"])
    assert r.returncode in (0, 4), r.describe()
    if r.returncode == 0:
        assert not (a.out / "SHA256SUMS").is_symlink() and not T.sums_problems(a.out)
    (a.out / "SHA256SUMS").unlink(missing_ok=True)
    if r.returncode == 0:
        (a.out / "SHA256SUMS").symlink_to(a.outside / "secret.txt")
        T.ok(T.run(["manifest", a.out]))
        assert not (a.out / "SHA256SUMS").is_symlink()
    assert not a.damage()


def interrupted_split_with_rejects(a: Arena) -> list:
    src = a.inputs / "in.jsonl"
    lines = [T.chat_record("r", i, size=300) for i in range(40)]
    lines[3] = T.chat_record("oversize", 3, size=6000)
    src.write_bytes(b"\n".join(lines) + b"\n")
    args = ["split", src, "-o", a.out, "--max-records", "4", "--max-bytes", "3000B", "--oversize", "reject"]
    r = T.run(args, fault="after:shard_commit:4")
    assert r.returncode == -9, r.describe()
    m = orjson.loads((a.out / "manifest.json").read_bytes())
    assert m["resume"]["rejects_bytes"] > 0 and (a.out / ".shardkit-partial-rejects.jsonl").is_file()
    return args


def test_resume_never_writes_through_a_symlink_at_the_partial_rejects_file(tmp_path):
    """`.shardkit-partial-rejects.jsonl` has a fixed name. Replaced by a symlink between the
    crash and `--resume`, it must be refused, not opened: opening it for the checkpoint
    truncation cuts the file it points to down to the checkpoint's size."""
    a = Arena(tmp_path)
    args = interrupted_split_with_rejects(a)
    partial = a.out / ".shardkit-partial-rejects.jsonl"
    partial.unlink()
    partial.symlink_to(a.outside / "big.bin")  # longer than the checkpoint
    a.freeze()
    r = T.run([*args, "--resume"])
    problems = a.damage()
    if r.returncode not in (1, 3, 4):
        problems.append(f"resume did not refuse: {r.describe()}")
    rejects = a.out / "rejects.jsonl"
    if rejects.is_symlink():
        problems.append(f"OUT/rejects.jsonl is now a symlink to {os.readlink(rejects)} (and the manifest lists it)")
    assert not problems, "\n".join(problems)


def test_resume_never_reads_through_a_symlink_at_the_next_shard_name(tmp_path):
    """A name planted at the next shard's final name between the crash and `--resume`:
    refused (exit 3/4) without opening what it points to."""
    a = Arena(tmp_path)
    args = interrupted_split_with_rejects(a)
    index = orjson.loads((a.out / "manifest.json").read_bytes())["resume"]["next_index"]
    while (a.out / f"in-{index:05d}.jsonl").exists():  # a shard committed after the last checkpoint
        index += 1
    nxt = a.out / f"in-{index:05d}.jsonl"
    nxt.symlink_to(a.outside / "secret.txt")
    a.freeze()
    r = T.run([*args, "--resume"])
    assert r.returncode in (3, 4), r.describe()
    assert nxt.is_symlink()
    assert not a.damage(), "resume hashed the symlink's target to compare it with the shard it would write"


def test_validate_rejects_path_that_is_a_symlink_is_refused(tmp_path):
    a = Arena(tmp_path)
    a.out.mkdir()
    (a.out / "bad.jsonl").symlink_to(a.outside / "victim.jsonl")
    (a.inputs / "bad-in.jsonl").write_bytes(T.INVALID_CHAT[0] + b"\n")
    a.freeze()
    r = T.run(["validate", a.inputs / "bad-in.jsonl", "--rejects", a.out / "bad.jsonl"])
    assert r.returncode == 4, r.describe()
    assert not a.damage()


def test_ingest_never_moves_onto_a_planted_symlink(tmp_path):
    a = Arena(tmp_path, queue=True)
    (a.root / "queue" / "normal" / "drop.jsonl").symlink_to(a.outside / "victim.jsonl")
    (a.root / "inbox" / "drop.jsonl").write_bytes(REC)
    a.freeze()
    result = ingest_json(a)
    assert (a.root / "queue" / "normal" / "drop.jsonl").is_symlink()
    # the name is taken there (by the symlink): the drop goes in under the next free name
    assert [(r["name"], r["renamed"]) for r in result["routed"]] == [("drop.jsonl", "drop-2.jsonl")]
    assert (a.root / "queue" / "normal" / "drop-2.jsonl").read_bytes() == REC
    assert not a.damage()


def test_temp_names_never_follow_a_planted_symlink(tmp_path):
    """Temp names are predictable (`.shardkit-tmp-PID-N-NAME`): one planted as a symlink is
    skipped (O_CREAT|O_EXCL|O_NOFOLLOW), never opened."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    for n in range(3):
        (tmp_path / "out" / f".shardkit-tmp-{os.getpid()}-{n}-x.jsonl").symlink_to(victim)
    fd, tmp = create_temp(tmp_path / "out", "x.jsonl")
    os.write(fd, b"new")
    os.close(fd)
    assert not tmp.is_symlink() and tmp.read_bytes() == b"new"
    assert victim.read_bytes() == b"precious"


def test_queue_status_and_doctor_output_escape_control_characters(tmp_path):
    """Whatever got into the queue (a file moved in by hand), `list`/`doctor` must not print
    raw escape sequences to the operator's terminal."""
    a = Arena(tmp_path, queue=True)
    (a.root / "queue" / "normal" / "x\x1b]0;pwned\x07.jsonl").write_bytes(REC)
    out = b""
    for args in (["queue", "list", "--root", a.root], ["queue", "doctor", "--root", a.root], ["queue", "status", "--root", a.root]):
        r = subprocess.run([*T.SHARDKIT, *map(str, args)], capture_output=True, env=T.clean_env())
        out += r.stdout + r.stderr
    assert b"\x1b" not in out and b"\x07" not in out, out[:500]
