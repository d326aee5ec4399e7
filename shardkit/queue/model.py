"""The queue's vocabulary: its states and transitions, the records it keeps (items, leases),
the files it finds (entries), and small helpers every queue module shares."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shardkit.store.manifest import now_iso

PRIORITIES = ("high", "normal", "low")
STATE_DIRS = {
    "inbox": "inbox",
    "high": "queue/high",
    "normal": "queue/normal",
    "low": "queue/low",
    "processing": "queue/processing",
    "completed": "queue/recently_completed",
    "failed": "queue/failed",
    "dead": "queue/dead",
    "held": "queue/held",
    "quarantine": "queue/quarantine",
    "split": "queue/split",
}
STATES = tuple(STATE_DIRS)
PENDING = frozenset(PRIORITIES)

# op -> (states it may start from, states it may end in)
TRANSITIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "ingest": (frozenset({"inbox"}), PENDING | {"quarantine", "split"}),
    "claim": (PENDING, frozenset({"processing"})),
    "complete": (frozenset({"processing"}), frozenset({"completed"})),
    "fail": (frozenset({"processing"}), frozenset({"failed"})),
    "retry": (frozenset({"failed"}), PENDING | {"dead", "split"}),
    "requeue": (frozenset({"processing"}), PENDING | {"dead"}),
    "hold": (PENDING | {"failed", "dead"}, frozenset({"held"})),
    "release": (frozenset({"held"}), PENDING | {"failed", "dead"}),
    "redrive": (frozenset({"dead", "quarantine"}), frozenset({"inbox"})),
    "quarantine": (PENDING | {"inbox", "failed", "dead", "held"}, frozenset({"quarantine"})),
    "adopt": (frozenset(STATES), frozenset(STATES)),  # doctor: record follows the folder
}

META = ".shardkit"
_SKIP_SUFFIXES = (".tmp", ".part", ".partial", ".report.json")


NAME_MAX = 255  # bytes in one file name (Linux, macOS)
# A file in processing/ without a lease is a claim between its rename and its lease write, or
# a file a trainer moved there by hand: never requeued before it has been there this long,
# whatever --older-than says (a live claim writes its lease microseconds after the rename).
LEASELESS_FLOOR_S = 60.0


def side_file_name(name: str, suffix: str) -> str:
    """NAME + suffix for a file kept beside or about a queue file (lease, report), or, when
    that would not fit in a file name, `~` + a hash of NAME + suffix: a drop whose name
    takes 251-255 bytes must not leave its claim without a lease (or its quarantine
    without a report), nor stop status, doctor and requeue-stale."""
    full = name + suffix
    if len(full.encode("utf-8", "surrogateescape")) <= NAME_MAX - 8:  # room for a -2, -3... suffix
        return full
    return "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40] + suffix


def is_data_name(name: str) -> bool:
    """A queue file: not hidden, not a temp/partial upload, not a report beside a file."""
    return not name.startswith(".") and not name.endswith(_SKIP_SUFFIXES)


_REJECTS_NAME = re.compile(r"\.rejects(-[0-9]+)?\.jsonl\Z")  # NAME.rejects.jsonl, NAME.rejects-2.jsonl, ...


def is_quarantine_side_name(name: str) -> bool:
    """What ingest puts beside a quarantined file: its report, and the rejects of each
    ingest that quarantined it (a redriven file quarantined again gets NAME.rejects-2.jsonl).
    Never an item of its own."""
    return name.endswith(".report.json") or _REJECTS_NAME.search(name) is not None


# ---------------------------------------------------------------- records


@dataclass
class Item:
    """What the queue knows about one file, kept in .shardkit/items/ID.json."""

    id: str
    name: str
    state: str
    priority: str = "normal"
    attempts: int = 0
    sha256: str | None = None
    records: int | None = None
    bytes: int | None = None
    kind: str | None = None
    created_at: str = field(default_factory=now_iso)
    completed_at: str | None = None
    held_from: str | None = None
    last_error: str | None = None
    parent: str | None = None
    children: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> Item:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Lease:
    """Who holds a claimed file: a token only the holder knows, and how to tell it is alive."""

    id: str
    name: str
    worker: str
    token: str
    host: str
    pid: int  # the shardkit process that claimed
    owner_pid: int  # the process whose death frees the file (the trainer)
    owner_start: int | None  # its start time (clock ticks since boot), against pid reuse
    claimed_at: float
    heartbeat: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Entry:
    """A file found in a state folder, with its item record when there is one."""

    state: str
    name: str
    path: Path
    size: int
    mtime: float
    item: Item | None
    was: str | None = None  # after a move that renamed it (its name was taken there): the name it had

    @property
    def priority(self) -> str:
        return self.state if self.state in PENDING else (self.item.priority if self.item else "normal")

    def arrived(self) -> float | None:
        """When the file came into its folder: the later of its mtime and its ctime (a rename
        sets the ctime, not the mtime, so a file claimed a moment ago after waiting an hour
        in pending is new in processing). None if it has left meanwhile."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return max(st.st_mtime, st.st_ctime)


def process_start(pid: int) -> int | None:
    """Start time of a process (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start: int | None) -> bool:
    """Is this exact process (not a later one with the same pid) still running?"""
    now = process_start(pid)
    if now is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start is None
    return start is None or now == start


def open_by_any_process(path: Path) -> bool:
    """Does any process on this host have `path` open? (a scan of /proc/*/fd)"""
    try:
        target = path.stat()
    except OSError:
        return False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(f"{fd_dir}/{fd}")
                if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
                    return True
    return False


@dataclass
class PrunePlan:
    delete: list[Entry] = field(default_factory=list)
    keep: list[Entry] = field(default_factory=list)
    deleted: int = 0
    freed: int = 0


def completed_time(e: Entry) -> float:
    if e.item and e.item.completed_at:
        with contextlib.suppress(ValueError):
            return parse_iso(e.item.completed_at)
    return e.mtime


def now_precise() -> str:
    """UTC time with microseconds: prune orders by it, and several files complete per second."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def is_regular(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


def settled_first(item: Item) -> tuple[int, str, str]:
    """Sorts the most settled record of a file first: the longer history, then the older,
    then by id (so every process picks the same one)."""
    return (-len(item.history), item.created_at or "", item.id)


def index_by_place(items: Iterable[Item]) -> dict[tuple[str, str], Item]:
    """(state, name) -> record. Two records of one file exist for a moment when a claimer
    that found none saves a fresh one (history only "adopt") just before a rename that may
    fail; the settled record wins, in every process."""
    index: dict[tuple[str, str], Item] = {}
    for item in items:
        key = (item.state, item.name)
        other = index.get(key)
        if other is None or settled_first(item) < settled_first(other):
            index[key] = item
    return index


def new_id() -> str:
    return uuid.uuid4().hex


_DATA_SUFFIX = re.compile(r"(\.(jsonl|ndjson|json|txt|parquet))?(\.(gz|zst))?\Z", re.IGNORECASE)


def numbered_name(name: str, k: int) -> str:
    """NAME with -k before its data suffixes: batch.jsonl.gz -> batch-2.jsonl.gz."""
    cut = _DATA_SUFFIX.search(name).start()
    return f"{name[:cut]}-{k}{name[cut:]}"


def free_name(folder: Path, name: str) -> str:
    """`name`, or the first NAME-k (k = 2, 3...) not taken in `folder`."""
    candidate, k = name, 1
    while os.path.lexists(folder / candidate):
        k += 1
        candidate = numbered_name(name, k)
    return candidate


def inode_of(path) -> tuple[int, int] | None:
    """(device, inode) of a name, not following a symlink; None when it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def file_identity(path) -> list[int] | None:
    """[device, inode, size, mtime_ns] of a name: which file it is, as a journal line can
    say it (an inode number alone is reused once its file is gone). None when it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
