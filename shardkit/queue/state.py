"""The file queue: state folders, item records, leases, a journal, and every move between them.

The folder a file sits in is its state (the Maildir/Postfix way): a move is one
`rename()` within the queue's filesystem that never replaces a name in the target folder,
followed by an fsync of both folders, then one journal line, then the item record. A crash
between those steps leaves the file in its new state and a record one step behind, which
`doctor` reconciles from the folders (the truth) and the journal.

    ROOT/inbox/                       drops
    ROOT/queue/{high,normal,low}/     pending, by priority
    ROOT/queue/processing/            claimed (lease in .shardkit/leases/NAME.json)
    ROOT/queue/recently_completed/ failed/ dead/ held/ quarantine/ split/
    ROOT/.shardkit/journal.jsonl      one line per transition
    ROOT/.shardkit/items/ID.json      per item: name, state, attempts, history, lineage...

Names repeat over time (a daily `batch.jsonl`), so an item is keyed by a unique id; within
one state folder a name is unique because no move ever replaces a file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shardkit.core.errors import ConflictError, InputError, ShardkitError, UsageError
from shardkit.core.io import atomic_write, env_error, fsync_dir, rename_noreplace
from shardkit.queue.journal import Journal
from shardkit.queue.settings import Settings, load_settings
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


# ---------------------------------------------------------------- the queue


class Queue:
    """A queue root. Every state-folder path and every move lives here."""

    def __init__(self, root: str | os.PathLike, settings: Settings | None = None, *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.init()
        if not (self.root / META).is_dir() and not (self.root / "queue").is_dir():
            raise InputError(f"{self.root}: not a shardkit queue (no queue/ or .shardkit/); run: shardkit queue init {self.root}")
        self.settings = settings if settings is not None else load_settings(self.root)
        self.meta = self.root / META
        for sub in ("items", "leases", "tmp", "cache"):  # a trainer's own layout has none of these
            if not (self.meta / sub).is_dir():
                try:
                    (self.meta / sub).mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise env_error(e, self.meta / sub) from None
        self.journal = Journal(self.meta / "journal.jsonl")
        self.host = socket.gethostname()
        self._item_cache: dict[str, tuple[tuple[int, int, int], Item]] = {}

    # ----- layout

    def init(self) -> list[Path]:
        """Create the folders (idempotent); return those created."""
        made = []
        for rel in [*STATE_DIRS.values(), META, f"{META}/items", f"{META}/leases", f"{META}/tmp", f"{META}/cache"]:
            p = self.root / rel
            if not p.is_dir():
                try:
                    p.mkdir(parents=True)
                except OSError as e:
                    raise env_error(e, p) from None
                made.append(p)
        for p in {q.parent for q in made}:
            fsync_dir(p)
        return made

    def dir(self, state: str) -> Path:
        try:
            return self.root / STATE_DIRS[state]
        except KeyError:
            raise UsageError(f"unknown state {state!r} (expected one of {', '.join(STATES)})") from None

    def path(self, state: str, name: str) -> Path:
        return self.dir(state) / name

    # ----- records

    def _item_path(self, item_id: str) -> Path:
        return self.meta / "items" / f"{item_id}.json"

    def load_item(self, item_id: str) -> Item | None:
        try:
            return Item.from_dict(orjson.loads(self._item_path(item_id).read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError, TypeError):
            return None

    def save_item(self, item: Item) -> None:
        atomic_write(self._item_path(item.id), orjson.dumps(item.to_dict(), option=orjson.OPT_INDENT_2))

    def items(self) -> list[Item]:
        """Every item record. Records are re-read only when their file changed (every save is
        a new inode), so a long-lived Queue lists a big queue in a few milliseconds."""
        folder = self.meta / "items"
        cache = self._item_cache
        seen = {}
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                st = os.stat(folder / name)
            except FileNotFoundError:
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = cache.get(name)
            if hit is None or hit[0] != key:
                item = self.load_item(name[:-5])
                if item is None:
                    continue
                hit = (key, item)
            seen[name] = hit
        self._item_cache = seen
        return [copy.deepcopy(item) for _, item in seen.values()]

    def _index(self) -> dict[tuple[str, str], Item]:
        return {(i.state, i.name): i for i in self.items()}

    def entries(self, states: Iterable[str] = STATES) -> list[Entry]:
        """Every data file in the given state folders, with its record (if any).

        Folders are listed before the records are read: a mover saves the record before
        its rename, so a file seen here has its record on disk by the time it is read."""
        out = []
        for state in states:
            folder = self.dir(state)
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if not is_data_name(p.name) or (state == "quarantine" and is_quarantine_side_name(p.name)):
                    continue
                try:
                    st = p.lstat()
                except FileNotFoundError:
                    continue  # moved by someone else meanwhile
                if not _is_regular(st):
                    continue
                out.append(Entry(state, p.name, p, st.st_size, st.st_mtime, None))
        index = self._index()
        for e in out:
            e.item = index.get((e.state, e.name))
        return out

    def find(self, name: str, states: Iterable[str] = STATES) -> Entry:
        """The one file called `name` (a bare name, or STATE/NAME, or a path in the queue)."""
        state_hint = None
        p = Path(name)
        if len(p.parts) > 1:
            for state, rel in STATE_DIRS.items():
                if str(p.parent) in (state, rel):  # STATE/NAME or queue/STATE/NAME, relative to ROOT
                    state_hint = state
                elif p.is_absolute() or p.parent.exists():
                    with contextlib.suppress(OSError):
                        if p.parent.resolve() == (self.root / rel).resolve():
                            state_hint = state
            if state_hint is None or ".." in p.parts:
                raise InputError(f"{name}: not in the queue at {self.root} (a path must be inside its state folders)")
            name = p.name
        matches = [e for e in self.entries([state_hint] if state_hint else states) if e.name == name]
        if not matches:
            raise InputError(f"{name}: not in the queue" + (f" (state {state_hint})" if state_hint else ""))
        if len(matches) > 1:
            where = ", ".join(e.state for e in matches)
            raise UsageError(f"{name}: in several states ({where}); say which, e.g. {matches[0].state}/{name}")
        return matches[0]

    def record_of(self, entry: Entry) -> Item | None:
        """The entry's record, looked for again if the listing found none: it may have been
        saved by its mover after our listing, or missed by a readdir that raced with a
        record being replaced. Only then is a file without a record adopted."""
        for delay in (0.0, 0.01, 0.05):
            if entry.item is not None:
                break
            time.sleep(delay)
            entry.item = self._index().get((entry.state, entry.name))
        if entry.item is None:
            # a record of this name whose file is not where it says is this file's record,
            # one step behind its move (doctor's record_behind, applied before adopting)
            for item in self.items():
                if (item.name == entry.name and item.state in STATE_DIRS
                        and not os.path.lexists(self.path(item.state, item.name))):
                    item.state = entry.state
                    entry.item = item
                    break
        return entry.item

    def new_item(self, entry: Entry) -> Item:
        """A record for a file that has none, not yet saved (the next move saves it)."""
        item = Item(id=new_id(), name=entry.name, state=entry.state, bytes=entry.size,
                    priority=entry.state if entry.state in PENDING else "normal")
        item.history.append({"ts": now_iso(), "op": "adopt", "to": entry.state})
        entry.item = item
        return item

    def find_for(self, op: str, name: str) -> Entry:
        """The file `op` would move: found in any state; in a state `op` cannot move it from,
        a ConflictError (exit 4) naming both; nowhere, an InputError (exit 3)."""
        sources = TRANSITIONS[op][0]
        try:
            return self.find(name, sorted(sources))
        except InputError:
            try:
                where = self.find(name)
            except InputError:
                raise InputError(f"{Path(name).name}: not in the queue") from None
            if where.state in sources:  # it moved in while we looked (another process's move)
                raise ConflictError(f"{where.name}: moved while {op} looked for it (now in {where.state}); "
                                    "try again") from None
            raise ConflictError(
                f"{where.name}: cannot {op} a file in {where.state} "
                f"({op} moves files from {', '.join(sorted(sources))})"
            ) from None

    def adopt(self, entry: Entry, *, journal: bool = True) -> Item:
        """The record of a file, creating one for a file that has none (dropped in the inbox,
        or moved by hand). `journal=False` when the caller's own journal line names the id."""
        if entry.item is not None:
            return entry.item
        item = Item(id=new_id(), name=entry.name, state=entry.state, bytes=entry.size,
                    priority=entry.state if entry.state in PENDING else "normal")
        item.history.append({"ts": now_iso(), "op": "adopt", "to": entry.state})
        self.save_item(item)
        if journal:
            self.journal.append("adopt", id=item.id, name=item.name, to=entry.state)
        entry.item = item
        return item

    # ----- the one move

    def move(self, entry: Entry, op: str, to: str, *, name: str | None = None, worker: str | None = None,
             reason: str | None = None, dry_run: bool = False, update: dict | None = None, **extra) -> Entry:
        """Move one file to state `to` by `op`, checked against the transition table.

        `update`: fields of the item record to set in the same save as its new state. The
        record's save after the rename is the mover's last write to it: a second save would
        undo what another process did to the record meanwhile (a prune's `deleted`, a
        retry's new state)."""
        sources, targets = TRANSITIONS[op]
        if entry.state not in sources or to not in targets:
            raise ConflictError(
                f"{entry.name}: cannot {op} from {entry.state} to {to} "
                f"({op} goes from {', '.join(sorted(sources))} to {', '.join(sorted(targets))})"
            )
        new_name = name or entry.name
        target = self.path(to, new_name)
        if dry_run:
            return Entry(to, new_name, target, entry.size, entry.mtime, entry.item)
        self.record_of(entry)
        fresh = entry.item is None or not self._item_path(entry.item.id).exists()
        if fresh:
            # a record no one else knows yet: save it, already in its target state, before the
            # rename, so no other process ever sees the file without its record
            item = entry.item or self.new_item(entry)
            item.state, item.name = to, new_name
            self.save_item(item)
        else:
            item = entry.item
        if not target.parent.is_dir():  # e.g. dead/ or held/ in a layout made by hand
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(target.parent.parent)
        try:
            try:
                rename_noreplace(entry.path, target)
            except BaseException:
                if fresh:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._item_path(item.id))
                raise
        except ConflictError:
            raise ConflictError(f"{entry.name}: {to}/{new_name} already exists; nothing was moved") from None
        except InputError:
            if not os.path.lexists(entry.path):
                raise ConflictError(f"{entry.name}: no longer in {entry.state} (moved by another process)") from None
            if entry.path.stat().st_dev != target.parent.stat().st_dev:
                raise InputError(f"{entry.path}: on another filesystem than {target.parent}; "
                                 "the queue never moves across filesystems") from None
            raise
        fsync_dir(target.parent)
        if entry.path.parent != target.parent:
            fsync_dir(entry.path.parent)
        line = {"id": item.id, "name": entry.name, "from": entry.state, "to": to}
        if new_name != entry.name:
            line["as"] = new_name
        line.update({k: v for k, v in (("worker", worker), ("reason", reason)) if v is not None})
        line.update({k: v for k, v in extra.items() if v is not None})
        self.journal.append(op, **line)
        item.history.append({"ts": now_iso(), "op": op, "from": entry.state, "to": to,
                             **{k: v for k, v in (("worker", worker), ("reason", reason)) if v is not None}})
        item.state, item.name = to, new_name
        if to in PENDING:
            item.priority = to
        for key, value in (update or {}).items():
            setattr(item, key, value(item) if callable(value) else value)
        if os.path.lexists(target):
            self.save_item(item)
        # else: the file has already moved on (claimed, completed, pruned...) while this
        # process was between its rename and this save; the later mover saved the record,
        # and saving ours now would put it back a step (the journal has our move)
        return Entry(to, new_name, target, entry.size, entry.mtime, item)

    # ----- leases

    def _lease_path(self, name: str) -> Path:
        return self.meta / "leases" / side_file_name(name, ".json")

    def lease(self, name: str) -> Lease | None:
        try:
            return Lease(**orjson.loads(self._lease_path(name).read_bytes()))
        except (FileNotFoundError, orjson.JSONDecodeError, TypeError):
            return None

    def _write_lease(self, lease: Lease) -> None:
        atomic_write(self._lease_path(lease.name), orjson.dumps(lease.to_dict()))

    def _drop_lease(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lease_path(name))

    def lease_is_stale(self, lease: Lease, stale_after: float | None = None, now: float | None = None) -> bool:
        """Heartbeat older than stale_after AND (on this host) the owner process is gone."""
        stale_after = self.settings.stale_after if stale_after is None else stale_after
        now = time.time() if now is None else now
        if now - lease.heartbeat < stale_after:
            return False
        if lease.host == self.host:
            return not process_alive(lease.owner_pid, lease.owner_start)
        return True  # another host: its processes cannot be checked from here; age alone

    # ----- trainer operations

    def claim(self, worker: str | None = None, *, owner_pid: int | None = None, wait: float = 0.0,
              poll: float = 0.5) -> Claimed | NoClaim:
        """Take the oldest pending file, highest priority first, waiting up to `wait` seconds
        for one; `NO_CLAIM` (false; `with` binds None) if there is none::

            with queue.claim("gpu0", wait=60) as item:
                if item is not None:
                    train(item.path)      # completes on success, fails on an exception

        A claim is the rename from pending to processing: of several racing workers exactly
        one wins each file; the others move on to the next. attempts += 1 here, so a run the
        OOM killer ends still counts. `worker` defaults to HOST:PID."""
        worker = worker or f"{self.host}:{os.getpid()}"
        owner_pid = os.getpid() if owner_pid is None else owner_pid
        deadline = time.monotonic() + wait
        while True:
            for entry in self._candidates():
                try:
                    # attempts counted in the move's own record save: no second save that could
                    # undo what another process does to the record meanwhile
                    moved = self.move(entry, "claim", "processing", worker=worker,
                                      update={"attempts": lambda it: it.attempts + 1})
                except ConflictError:
                    continue  # another worker won this one, or processing/NAME exists
                item = moved.item
                now = time.time()
                lease = Lease(item.id, moved.name, worker, secrets.token_hex(16), self.host, os.getpid(),
                              owner_pid, process_start(owner_pid), now, now)
                self._write_lease(lease)
                return Claimed(self, moved, lease)
            if time.monotonic() >= deadline:
                return NO_CLAIM
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def _candidates(self) -> list[Entry]:
        out = []
        for prio in PRIORITIES:
            out += sorted(self.entries([prio]), key=lambda e: (e.mtime, e.name))
        return out

    def _held_entry(self, path_or_name: str, token: str | None) -> tuple[Entry, Lease | None]:
        entry = self.find_for("complete", path_or_name)
        lease = self.lease(entry.name)
        if token is not None and (lease is None or lease.token != token):
            raise ConflictError(
                f"{entry.name}: the lease was taken over or released (token does not match); "
                "another worker owns this file now"
            )
        return entry, lease

    def heartbeat(self, path_or_name: str, token: str | None = None) -> Lease:
        entry, lease = self._held_entry(path_or_name, token)
        if lease is None:
            raise ConflictError(f"{entry.name}: no lease (claimed outside shardkit?)")
        lease.heartbeat = time.time()
        self._write_lease(lease)
        return lease

    def complete(self, path_or_name: str, token: str | None = None, *, dry_run: bool = False) -> Entry:
        entry, lease = self._held_entry(path_or_name, token)
        moved = self.move(entry, "complete", "completed", worker=lease.worker if lease else None, dry_run=dry_run,
                          update={"completed_at": _now_precise(), "last_error": None})
        if not dry_run:
            self._drop_lease(entry.name)
        return moved

    def fail(self, path_or_name: str, token: str | None = None, *, reason: str | None = None, dry_run: bool = False) -> Entry:
        entry, lease = self._held_entry(path_or_name, token)
        moved = self.move(entry, "fail", "failed", worker=lease.worker if lease else None, reason=reason,
                          dry_run=dry_run, update={"last_error": reason})
        if not dry_run:
            self._drop_lease(entry.name)
        return moved

    # ----- operator operations

    def retry(self, names: Iterable[str] = (), *, all_failed: bool = False, reset_attempts: bool = False,
              dry_run: bool = False) -> list[Entry]:
        """failed -> pending (its priority), or -> dead once attempts reach max_attempts."""
        entries = self.entries(["failed"]) if all_failed else [self.find_for("retry", n) for n in names]
        if not entries and not all_failed:
            raise UsageError("name the files to retry, or give --all")
        out = []
        for entry in entries:
            item = entry.item
            attempts = 0 if reset_attempts else (item.attempts if item else 0)
            to = "dead" if attempts >= self.settings.max_attempts else entry.priority
            if not dry_run and item is not None and reset_attempts:
                item.attempts = 0
            try:
                out.append(self.move(entry, "retry", to, reason="max attempts reached" if to == "dead" else None,
                                     dry_run=dry_run))
            except ConflictError:
                if not all_failed or entry.path.exists():
                    raise
                # --all: retried (or held) by another process since the listing: not ours now
        return out

    def requeue_stale(self, *, older_than: float | None = None, dry_run: bool = False, now: float | None = None) -> list[tuple[Entry, str]]:
        """processing -> pending (or dead at max_attempts) when the holder is gone.

        With a lease: heartbeat older than the limit and the owner process dead. Without one
        (moved there by hand): adopted, and requeued only when no process has it open and it
        is older than the limit."""
        limit = self.settings.stale_after if older_than is None else older_than
        now = time.time() if now is None else now
        out = []
        for entry in self.entries(["processing"]):
            lease = self.lease(entry.name)
            if lease is not None:
                if not self.lease_is_stale(lease, limit, now):
                    continue
                why = f"lease of {lease.worker} (pid {lease.owner_pid} on {lease.host}) expired"
            else:
                # a claim renames the file in, then writes its lease: a file that arrived
                # recently is a claim in progress, not an abandoned one, whatever its age
                arrived = entry.arrived()
                if arrived is None or now - arrived < max(limit, LEASELESS_FLOOR_S) or open_by_any_process(entry.path):
                    continue
                if self.lease(entry.name) is not None:  # the claimer's lease landed meanwhile
                    continue
                why = "no lease, not open, in processing longer than the limit"
            item = entry.item
            attempts = item.attempts if item else 1
            if item is None and not dry_run:
                item = self.adopt(entry)
                item.attempts = attempts
            to = "dead" if attempts >= self.settings.max_attempts else (item.priority if item else "normal")
            try:
                moved = self.move(entry, "requeue", to, reason=why, dry_run=dry_run)
            except ConflictError:
                if entry.path.exists():
                    raise
                continue  # completed, failed or requeued by someone else meanwhile: not ours now
            if not dry_run:
                self._drop_lease(entry.name)
            out.append((moved, why))
        return out

    def hold(self, names: Iterable[str], *, reason: str | None = None, dry_run: bool = False) -> list[Entry]:
        out = []
        for n in names:
            entry = self.find_for("hold", n)
            moved = self.move(entry, "hold", "held", reason=reason, dry_run=dry_run,
                              update={"held_from": entry.state})
            out.append(moved)
        return out

    def release(self, names: Iterable[str], *, dry_run: bool = False) -> list[Entry]:
        out = []
        for n in names:
            entry = self.find_for("release", n)
            back = (entry.item.held_from if entry.item else None) or "normal"
            out.append(self.move(entry, "release", back, dry_run=dry_run))
        return out

    def redrive(self, names: Iterable[str], *, dry_run: bool = False) -> list[Entry]:
        out = []
        for n in names:
            entry = self.find_for("redrive", n)
            moved = self.move(entry, "redrive", "inbox", dry_run=dry_run, update={"attempts": 0})
            out.append(moved)
        return out

    def quarantine(self, names: Iterable[str], *, reason: str | None = None, dry_run: bool = False) -> list[Entry]:
        out = []
        for n in names:
            entry = self.find_for("quarantine", n)
            out.append(self.move(entry, "quarantine", "quarantine", reason=reason, dry_run=dry_run))
        return out

    def prune(self, *, keep: int | None = None, older_than: float | None = None, yes: bool = False,
              now: float | None = None) -> PrunePlan:
        """Delete completed files beyond the newest `keep` or older than `older_than`, by
        recorded completion time (never by name). Without `yes`, only the plan."""
        keep = self.settings.keep_completed if keep is None else keep
        older_than = self.settings.completed_max_age if older_than is None else older_than
        if keep is None and older_than is None:
            raise UsageError("say what to prune: --keep N and/or --older-than DUR (or keep_completed / completed_max_age in shardkit.toml)")
        now = time.time() if now is None else now
        done = self.entries(["completed"])
        done.sort(key=lambda e: _completed_time(e), reverse=True)  # newest first
        plan = PrunePlan()
        for i, e in enumerate(done):
            age = now - _completed_time(e)
            if (keep is not None and i >= keep) or (older_than is not None and age > older_than):
                plan.delete.append(e)
            else:
                plan.keep.append(e)
        if yes:
            with self.journal.transaction("prune", files=len(plan.delete)) as tx:
                for e in plan.delete:
                    item = e.item
                    if item is None or item.completed_at is None:
                        # its complete is still saving the record (a rename, then the save), or
                        # it came by hand: only a record-less file that arrived long ago goes
                        if self.record_of(e) is not None or item is not None:
                            continue
                        arrived = e.arrived()
                        if arrived is None or now - arrived < self.settings.stale_after:
                            continue
                    if not os.path.lexists(e.path):
                        continue
                    # journaled first: a kill between the two leaves a recorded delete, never a silent one
                    tx.step("delete", id=item.id if item else None, name=e.name, state=e.state, bytes=e.size)
                    try:
                        os.unlink(e.path)
                    except FileNotFoundError:
                        continue
                    if item is not None:
                        item.history.append({"ts": now_iso(), "op": "prune", "from": e.state, "to": None})
                        item.state = "deleted"
                        self.save_item(item)
                    plan.deleted += 1
                    plan.freed += e.size
                fsync_dir(self.dir("completed"))
        return plan

    # ----- looking

    def status(self, now: float | None = None) -> dict:
        """Counts, records, bytes and oldest age per state; what needs a person."""
        now = time.time() if now is None else now
        entries = self.entries()
        states: dict[str, dict] = {}
        for s in STATES:
            es = [e for e in entries if e.state == s]
            states[s] = {
                "files": len(es),
                "records": sum((e.item.records or 0) for e in es if e.item),
                "bytes": sum(e.size for e in es),
                "oldest_age_s": round(now - min(e.mtime for e in es), 1) if es else None,
            }
        stale, external = [], []
        for e in (x for x in entries if x.state == "processing"):
            lease = self.lease(e.name)
            if lease is None:
                external.append(e.name)
            elif self.lease_is_stale(lease, now=now):
                stale.append(e.name)
        limits = [e.name for e in entries if self._over_limits(e)]
        usage = shutil.disk_usage(self.root)
        reserve = self.disk_reserve(entries)
        problems = []
        if stale:
            problems.append(f"{len(stale)} stale lease(s) in processing: run `shardkit queue requeue-stale`")
        if states["dead"]["files"]:
            problems.append(f"{states['dead']['files']} dead file(s): inspect, then `queue redrive` or remove")
        if states["quarantine"]["files"]:
            problems.append(f"{states['quarantine']['files']} quarantined file(s): see NAME.report.json beside each")
        if usage.free < reserve:
            problems.append(f"free disk {usage.free:,} bytes is below the reserve {reserve:,}")
        if limits:
            problems.append(f"{len(limits)} pending file(s) over max_records/max_bytes (OOM risk): {', '.join(limits[:5])}")
        return {
            "root": str(self.root),
            "states": states,
            "stale_leases": stale,
            "unleased_processing": external,
            "over_limits": limits,
            "disk": {"free": usage.free, "total": usage.total, "reserve": reserve},
            "journal_bytes": self.journal.disk_usage(),
            "problems": problems,
            "ok": not problems,
        }

    def _over_limits(self, e: Entry) -> bool:
        if e.state not in PENDING:
            return False
        s = self.settings
        if s.max_bytes is not None and e.size > s.max_bytes:
            return True
        return bool(s.max_records is not None and e.item and e.item.records and e.item.records > s.max_records)

    def disk_reserve(self, entries: list[Entry] | None = None) -> int:
        """Free bytes to keep: the setting, else 1.5 x the largest file a split could write."""
        sizes = [e.size for e in (entries if entries is not None else self.entries([*PRIORITIES, "inbox"]))]
        largest = max(sizes, default=0)
        if self.settings.max_bytes:
            largest = min(largest, self.settings.max_bytes)
        return self.settings.reserve_for(largest)

    def show(self, name: str) -> dict:
        entry = self.find(name)
        lease = self.lease(entry.name) if entry.state == "processing" else None
        return {
            "state": entry.state,
            "path": str(entry.path),
            "bytes": entry.size,
            "item": entry.item.to_dict() if entry.item else None,
            "lease": lease.to_dict() if lease else None,
        }


def queue_manifest(queue: Queue, *, progress=None) -> dict:
    """Write ROOT/manifest.json (`"type": "queue"`) + SHA256SUMS: every queue file with its
    state, priority, records, bytes, sha256 and attempts.

    sha256 and records come from a cache in .shardkit/cache/ keyed by (device, inode, size,
    mtime_ns, ctime_ns): a rerun rehashes only files that changed. ctime catches an in-place
    edit whose mtime was put back (`touch -r`); a rename changes it too, so a file that
    moved between states is read once more (correct first, cheap second)."""
    from shardkit.store.manifest import (
        FORMAT_VERSION,
        MANIFEST_NAME,
        scan_file,
        tool_name,
        totals,
        write_manifest,
    )

    cache_path = queue.meta / "cache" / "manifest-cache.json"
    try:
        cache = orjson.loads(cache_path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        cache = {}
    fresh: dict[str, dict] = {}
    files = []
    rehashed = 0
    for e in queue.entries([s for s in STATES if s != "inbox"]):
        st = e.path.stat()
        key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        hit = cache.get(key)
        if hit is None:
            stats = scan_file(e.path, None)
            hit = {"sha256": stats.sha256, "records": stats.records}
            rehashed += 1
            if progress:
                progress(e.size)
        fresh[key] = hit
        item = e.item
        files.append({
            "path": os.path.relpath(e.path, queue.root),
            "state": e.state,
            "priority": e.priority,
            "records": hit["records"],
            "bytes": e.size,
            "sha256": hit["sha256"],
            "id": item.id if item else None,
            "attempts": item.attempts if item else 0,
            "record_kind": item.kind if item else None,
        })
    atomic_write(cache_path, orjson.dumps(fresh))
    manifest = {
        "shardkit_manifest": FORMAT_VERSION,
        "type": "queue",
        "complete": True,
        "created_at": now_iso(),
        "tool": tool_name(),
        "root": str(queue.root),
        "files": files,
        "rejects": None,
        "totals": totals(files),
        "rehashed": rehashed,
    }
    write_manifest(queue.root / MANIFEST_NAME, manifest)
    return manifest


def is_queue_root(path: Path) -> bool:
    return (Path(path) / META).is_dir() and (Path(path) / "queue").is_dir()


@dataclass
class PrunePlan:
    delete: list[Entry] = field(default_factory=list)
    keep: list[Entry] = field(default_factory=list)
    deleted: int = 0
    freed: int = 0


def _completed_time(e: Entry) -> float:
    if e.item and e.item.completed_at:
        with contextlib.suppress(ValueError):
            return _parse_iso(e.item.completed_at)
    return e.mtime


def _now_precise() -> str:
    """UTC time with microseconds: prune orders by it, and several files complete per second."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _is_regular(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


def new_id() -> str:
    return uuid.uuid4().hex


class NoClaim:
    """What `claim()` gives when nothing is pending: false, and `with` binds None."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        return None

    def __repr__(self) -> str:
        return "NO_CLAIM"


NO_CLAIM = NoClaim()


class Claimed:
    """A claimed file. As a context manager: heartbeats while open, completes on success,
    fails (with the exception text) on error."""

    def __init__(self, queue: Queue, entry: Entry, lease: Lease) -> None:
        self.queue, self.entry, self.lease = queue, entry, lease
        self.path = entry.path
        self.name = entry.name
        self.token = lease.token
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.done = False

    def __enter__(self) -> Claimed:
        interval = max(1.0, self.queue.settings.stale_after / 4)
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(ShardkitError, OSError):
                self.queue.heartbeat(self.name, self.token)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.done:
            return
        if exc_type is None:
            self.complete()
        elif issubclass(exc_type, Exception):
            self.fail(f"{exc_type.__name__}: {exc}")

    def complete(self) -> Entry:
        self.done = True
        return self.queue.complete(self.name, self.token)

    def fail(self, reason: str | None = None) -> Entry:
        self.done = True
        return self.queue.fail(self.name, self.token, reason=reason)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "token": self.token, "id": self.lease.id,
                "attempts": self.entry.item.attempts if self.entry.item else None, "worker": self.lease.worker}
