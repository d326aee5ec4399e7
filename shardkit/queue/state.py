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
import os
import socket
from collections.abc import Iterable
from pathlib import Path

import orjson

from shardkit.core.errors import ConflictError, InputError, UsageError
from shardkit.core.io import atomic_write, env_error, fsync_dir, rename_noreplace
from shardkit.queue.claims import NO_CLAIM, Claimed, Claims, NoClaim
from shardkit.queue.journal import Journal
from shardkit.queue.model import (
    LEASELESS_FLOOR_S,
    META,
    NAME_MAX,
    PENDING,
    PRIORITIES,
    STATE_DIRS,
    STATES,
    TRANSITIONS,
    Entry,
    Item,
    Lease,
    PrunePlan,
    free_name,
    index_by_place,
    inode_of,
    is_data_name,
    is_quarantine_side_name,
    is_regular,
    new_id,
    now_precise,
    open_by_any_process,
    process_alive,
    process_start,
    side_file_name,
)
from shardkit.queue.operations import Operations
from shardkit.queue.records import RecordLookup
from shardkit.queue.settings import Settings, load_settings
from shardkit.queue.status import Looking, queue_manifest
from shardkit.store.manifest import now_iso

__all__ = [
    "LEASELESS_FLOOR_S", "META", "NAME_MAX", "NO_CLAIM", "PENDING", "PRIORITIES", "STATES", "STATE_DIRS",
    "TRANSITIONS", "Claimed", "Entry", "Item", "Lease", "NoClaim", "PrunePlan", "Queue", "is_data_name",
    "is_quarantine_side_name", "is_queue_root", "new_id", "now_precise", "open_by_any_process", "process_alive",
    "process_start", "queue_manifest", "side_file_name",
]


class Queue(Claims, Operations, Looking, RecordLookup):
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
            doc = orjson.loads(self._item_path(item_id).read_bytes())
            return Item.from_dict(doc) if isinstance(doc, dict) else None  # `null`, `[1]`: not a record
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
        return index_by_place(self.items())

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
                if not is_regular(st):
                    continue
                out.append(Entry(state, p.name, p, st.st_size, st.st_mtime, None))
        index = self._index()
        for e in out:
            e.item = index.get((e.state, e.name))
        return out

    def new_item(self, entry: Entry) -> Item:
        """A record for a file that has none, not yet saved (the next move saves it)."""
        item = Item(id=new_id(), name=entry.name, state=entry.state, bytes=entry.size,
                    priority=entry.state if entry.state in PENDING else "normal")
        item.history.append({"ts": now_iso(), "op": "adopt", "to": entry.state})
        entry.item = item
        return item

    def adopt(self, entry: Entry, *, journal: bool = True) -> Item:
        """The record of a file, creating one for a file that has none (dropped in the inbox,
        or moved by hand). `journal=False` when the caller's own journal line names the id."""
        if entry.item is not None:
            return entry.item
        item = Item(id=new_id(), name=entry.name, state=entry.state, bytes=entry.size,
                    priority=entry.state if entry.state in PENDING else "normal")
        item.history.append({"ts": now_iso(), "op": "adopt", "to": entry.state})
        self.save_item(item)
        if entry.state != "inbox" and not self._still_recordless(entry, item.id):
            self._drop_if_untouched(item, entry.state, entry.name)  # a claimer may have taken it up
            raise ConflictError(f"{entry.name}: moved on or recorded by another process while its record "
                                "was looked for; nothing adopted")
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
        # names repeat (a daily batch.jsonl): a name taken in the target folder gives the first
        # free NAME-2.jsonl, NAME-3.jsonl... (the journal says `as`), chosen before any record
        # names it, so no file is ever stuck because an older one of that name is there
        new_name = name or free_name(self.dir(to), entry.name)
        target = self.path(to, new_name)
        if dry_run:
            return Entry(to, new_name, target, entry.size, entry.mtime, entry.item,
                         was=entry.name if new_name != entry.name else None)
        self.record_of(entry)
        fresh = entry.item is None or not self._item_path(entry.item.id).exists()
        if fresh:
            # a record no one else knows yet: save it, already in its target state, before the
            # rename, so no other process ever sees the file without its record
            item = entry.item or self.new_item(entry)
            item.state, item.name = to, new_name
            self.save_item(item)
            other = self._other_record(entry, item.id)
            if other is not None:
                # adopted meanwhile by another process (doctor, requeue-stale) since this one
                # looked: that record is the file's, ours would be a second one
                self._drop_if_untouched(item, to, new_name)
                entry.item, item, fresh = other, other, False
        else:
            item = entry.item
        if not target.parent.is_dir():  # e.g. dead/ or held/ in a layout made by hand
            target.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(target.parent.parent)
        try:
            try:
                while True:
                    try:
                        rename_noreplace(entry.path, target)
                        break
                    except ConflictError:
                        # taken since free_name looked: by another file (take the next free
                        # name), or by this very file under another mover (link + unlink
                        # fallback, mid-way): that mover wins
                        if name is not None or not os.path.lexists(entry.path) or inode_of(entry.path) == inode_of(target):
                            raise
                        new_name = free_name(self.dir(to), entry.name)
                        target = self.path(to, new_name)
                        if fresh:  # the record names the file where it is about to be, always
                            item.name = new_name
                            self.save_item(item)
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
        return Entry(to, new_name, target, entry.size, entry.mtime, item, was=entry.name if new_name != entry.name else None)

    # ----- leases




def is_queue_root(path: Path) -> bool:
    return (Path(path) / META).is_dir() and (Path(path) / "queue").is_dir()
