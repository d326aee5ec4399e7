"""`queue doctor`: check a queue root against its own rules and, with repair, fix what is safe.

The folders are the truth; records, leases and the journal follow them. Each check yields
a `Finding`; `repair=True` applies the fixes marked safe (idempotent: a second run finds
nothing to fix). What is not safe to fix automatically is reported and left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field

import orjson

from shardkit.core.errors import ConflictError, ShardkitError
from shardkit.core.io import TMP_PREFIX, fsync_dir
from shardkit.queue.ingest import finish_open_ingests, ingest_running
from shardkit.queue.model import TRANSITIONS, Item, file_identity, free_name, inode_of
from shardkit.queue.records import one_move, renamed_forms
from shardkit.queue.state import (
    PRIORITIES,
    STATES,
    Queue,
    is_data_name,
    is_quarantine_side_name,
    open_by_any_process,
    side_file_name,
)

TEMP_GRACE_S = 3600.0  # a temp file younger than this may belong to a running writer
SETTLED_S = 60.0  # a queue file whose inode changed more recently may be in a move under way


@dataclass
class Finding:
    code: str
    message: str
    repairable: bool = False
    repaired: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    repair: bool = False

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired and f.code not in INFO_CODES]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "repair": self.repair, "findings": [f.to_dict() for f in self.findings],
                "problems": len(self.problems)}


INFO_CODES = {"external_processing"}  # reported, not a problem
# How long doctor waits, in steps, for a live mover to save a record that is behind its file
# before it treats the record as left behind by a crash (about 0.7 s in all).
MOVER_PATIENCE_S = (0.02, 0.05, 0.1, 0.2, 0.3)


def doctor(queue: Queue, *, repair: bool = False, now: float | None = None) -> DoctorReport:
    now = time.time() if now is None else now
    report = DoctorReport(repair=repair)
    add = report.findings.append
    if repair:
        for name in finish_open_ingests(queue):
            add(Finding("open_intent", f"interrupted ingest of {name} finished (shards published, parent to split/)", True, True))
        _finish_prunes(queue, add)
    else:
        from shardkit.queue.operations import prune_lock

        with prune_lock(queue, wait=False) as no_prune_running:
            pass
        for intent in queue.journal.open_intents():
            if ingest_running(queue, intent) or (intent.op == "prune" and not no_prune_running):
                continue  # in progress now, not interrupted
            add(Finding("open_intent", f"journal: {intent.op} {intent.intent.get('name', '')} (tx {intent.tx[:8]}) "
                        "started but never committed; --repair finishes it", True))
    _temps(queue, repair, now, add)
    _corrupt_records(queue, repair, add)
    _records(queue, repair, add, now)
    _leases(queue, repair, add)
    _duplicates(queue, add)
    _reports(queue, repair, add)
    _unknown(queue, add)
    return report


def _temps(queue: Queue, repair: bool, now: float, add) -> None:
    open_tx = {i.intent.get("work") for i in queue.journal.open_intents()}
    # not .shardkit/ itself: the journal's rotation temp files there are finished by its next rotation
    places = [queue.dir(s) for s in STATES] + [queue.meta / "items", queue.meta / "leases"]
    for folder in places:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(TMP_PREFIX):
                _old_temp(p, now, repair, add)
    tmp = queue.meta / "tmp"
    if tmp.is_dir():
        for p in tmp.iterdir():
            rel = str(p.relative_to(queue.root))
            if rel in open_tx:
                continue
            _old_temp(p, now, repair, add)


def _old_temp(p, now: float, repair: bool, add) -> None:
    with contextlib.suppress(FileNotFoundError):
        if now - p.lstat().st_mtime < TEMP_GRACE_S:
            return
        f = Finding("temp_leftover", f"{p}: temporary leftover of an interrupted write", True)
        if repair:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
            f.repaired = True
        add(f)


def _records(queue: Queue, repair: bool, add, now: float) -> None:
    """Records against folders. Other processes move files while this runs, so a mismatch
    seen in the snapshot is looked at again, as it is now, before it is reported or
    repaired: only what is still inconsistent counts (a move renames, then saves the
    record; a record written after the listing, or a file that moved in after it, is fine)."""
    entries = queue.entries()
    on_disk = {(e.state, e.name) for e in entries}
    explained: set[tuple[str, str]] = set()
    for item in queue.items():
        if item.state == "deleted" or (item.state, item.name) in on_disk:
            continue
        if _consistent_now(queue, item.id):
            continue
        # the record is a step behind the folder (a crash between rename and record write)
        # (one move away: same name or the NAME-k a taken name gives, by a transition of the table)
        homeless = [e for e in entries if e.item is None and os.path.lexists(e.path) and one_move(item.state, e.state)
                    and e.name in (item.name, *renamed_forms(item.name, e.name))]
        if len(homeless) == 1:
            e = homeless[0]
            explained.add((e.state, e.name))
            f = Finding("record_behind", f"{item.name}: record says {item.state}, file is in {e.state}", True)
            if repair:
                # as it is now: a live mover that saved since the listing owns the record
                fresh = queue.load_item(item.id)
                if fresh is None or (fresh.state, fresh.name) != (item.state, item.name) or not os.path.lexists(e.path):
                    continue
                item = fresh
                item.history.append({"op": "adopt", "from": item.state, "to": e.state, "by": "doctor"})
                item.state = e.state
                queue.save_item(item)
                queue.journal.append("adopt", id=item.id, name=item.name, to=e.state, reason="doctor: record followed the file")
                e.item = item
                f.repaired = True
            add(f)
        else:
            add(Finding("record_without_file", f"{item.name}: record {item.id[:8]} says {item.state}, but no such file"))
    inodes = {inode_of(e.path): e for e in entries if e.item is not None}
    inodes.pop(None, None)
    live = {e.item.sha256: e for e in entries if e.item is not None and e.item.sha256 and e.state != "inbox"}
    for e in entries:
        if e.item is not None or (e.state, e.name) in explained:
            continue
        if e.state == "inbox":
            continue  # a drop: ingest gives it its record when it routes it
        if not os.path.lexists(e.path) or queue.record_of(e) is not None:
            continue  # moved on, or its mover saved its record after the listing
        if _second_name(queue, e, inodes.get(inode_of(e.path)), repair, add, now) or _copy(queue, e, live, repair, add, now):
            continue
        f = Finding("file_without_record", f"{e.state}/{e.name}: no item record (dropped or moved by hand)", True)
        if repair:
            try:
                queue.adopt(e)
                f.repaired = True
            except ConflictError:
                # it moved on, or its record showed up meanwhile: fine. Still there with no
                # record (another adopter backed off too): reported, the next run adopts it
                if not os.path.lexists(e.path) or queue.record_of(e) is not None:
                    continue
        add(f)


def _recent(path, now: float) -> bool:
    """Changed (renamed, linked) less than SETTLED_S ago, or gone: maybe a move under way."""
    try:
        return now - os.lstat(path).st_ctime < SETTLED_S
    except FileNotFoundError:
        return True


def _second_name(queue: Queue, e, other, repair: bool, add, now: float) -> bool:
    """A record-less name of a file the queue already holds under another name (one inode,
    two names: a move cut short between link and unlink, or `ln` by hand). Adopting it
    would put one file in two states, to be trained twice; --repair removes the name the
    records do not know (the data stays under the other). Not while the inode changed in
    the last minute: a live link + unlink move (NFS) looks the same for a moment, and
    removing its new name then would lose the file when it unlinks the old one."""
    if other is None or other.path == e.path:
        return False
    if _recent(e.path, now):
        return True  # neither adopted nor removed now: the next run looks again
    f = Finding("same_file_twice", f"{e.state}/{e.name} is a second name (hard link) of {other.state}/{other.name}, "
                "whose record is the file's: --repair removes this name (no data is lost)", True)
    if repair:
        try:
            st = os.lstat(e.path)
            still = st.st_nlink >= 2 and inode_of(other.path) == (st.st_dev, st.st_ino)
        except FileNotFoundError:
            still = False
        if still:  # as it is now: the other name is still there, on the same inode
            os.unlink(e.path)
            fsync_dir(e.path.parent)
            queue.journal.append("unlink", id=other.item.id, name=e.name, state=e.state,
                                 reason=f"doctor: second name of {other.state}/{other.name}")
        f.repaired = True
    add(f)
    return True


def _copy(queue: Queue, e, live: dict, repair: bool, add, now: float) -> bool:
    """A record-less file with the content of a file the queue already holds: a copy made
    by hand (into failed/, a priority folder...) would train the same data twice. Reported;
    --repair puts it in quarantine (nothing deleted) where it can wait for a decision."""
    if not live or _recent(e.path, now):
        return False
    from shardkit.store.manifest import scan_file

    try:
        sha = scan_file(e.path, None).sha256
    except (OSError, ShardkitError):
        return False
    other = live.get(sha)
    if other is None:
        return False
    can = e.state in TRANSITIONS["quarantine"][0]
    f = Finding("copy_of_queued_file", f"{e.state}/{e.name} has the content of {other.state}/{other.name} "
                f"(sha256 {sha[:12]}…): a copy would train twice; "
                + ("--repair moves it to quarantine" if can else "remove it by hand"), can)
    if repair and can:
        from shardkit.queue.ingest import write_report
        from shardkit.store.manifest import now_iso

        try:
            queue.adopt(e)
        except ConflictError:
            return True  # moved on or recorded meanwhile: the next run looks again
        reason = f"a copy of {other.state}/{other.name} (same sha256)"
        target = free_name(queue.dir("quarantine"), e.name)
        write_report(queue, target, {"name": e.name, "id": e.item.id, "quarantined_at": now_iso(), "reason": reason,
                                     "report": None})
        queue.move(e, "quarantine", "quarantine", name=target, reason=f"doctor: {reason}")
        f.repaired = True
    add(f)
    return True


def _corrupt_records(queue: Queue, repair: bool, add) -> None:
    """Item records that are not readable (a torn write, a hand edit): the queue would see
    their files as record-less and adopt them under a new record, losing their attempts.
    --repair rebuilds each from the journal (its id's moves and claims), keeping the
    unreadable bytes beside it as .corrupt-ID.json."""
    folder = queue.meta / "items"
    if not folder.is_dir():
        return
    bad = [p for p in sorted(folder.iterdir())
           if p.name.endswith(".json") and not p.name.startswith(".") and _unreadable_record(p)]
    if not bad:
        return
    rebuilt = _items_from_journal(queue, {p.name[:-5] for p in bad}) if repair else {}
    for p in bad:
        item_id = p.name[:-5]
        f = Finding("corrupt_record", f"{p.relative_to(queue.root)}: not a readable item record; "
                    "--repair rebuilds it from the journal", True)
        item = rebuilt.get(item_id)
        if repair and item is not None:
            with contextlib.suppress(FileNotFoundError):
                os.replace(p, p.with_name(f".corrupt-{p.name}"))
            queue.save_item(item)
            queue.journal.append("adopt", id=item.id, name=item.name, to=item.state,
                                 reason="doctor: record rebuilt from the journal")
            f.repaired = True
        elif repair:
            f.message += " (the journal does not know this id: left as it is)"
        add(f)


def _unreadable_record(p) -> bool:
    """Bytes that are not a record (torn, `null`, a list...); not a file that could not be
    opened right now (EACCES, EMFILE): that is no reason to rebuild it."""
    try:
        doc = orjson.loads(p.read_bytes())
    except OSError:
        return False
    except orjson.JSONDecodeError:
        return True
    if not isinstance(doc, dict):
        return True
    try:
        Item.from_dict(doc)
    except TypeError:
        return True
    return False


def _items_from_journal(queue: Queue, ids: set[str]) -> dict[str, Item]:
    """The records of `ids` as the journal tells them: last name and state, priority,
    claims counted as attempts, the moves as history."""
    out: dict[str, Item] = {}
    for line in queue.journal.iter_entries(on_bad=lambda _bad: None):
        item_id = line.get("id")
        if item_id not in ids or not isinstance(line.get("name"), str):
            continue
        item = out.get(item_id) or Item(id=item_id, name=line["name"], state="inbox")
        out[item_id] = item
        to = line.get("to")
        if isinstance(to, str) and to in STATES:
            item.state, item.name = to, line.get("as") or line["name"]
            if to in PRIORITIES:
                item.priority = to
        if line.get("op") == "claim":
            item.attempts += 1
        elif line.get("op") == "redrive" or line.get("reset_attempts"):
            item.attempts = 0
        if line.get("op") in ("delete", "prune"):
            item.state = "deleted"
        if isinstance(line.get("sha256"), str):
            item.sha256 = line["sha256"]
        item.history.append({k: line[k] for k in ("ts", "op", "from", "to", "worker", "reason") if k in line})
    return out


def _finish_prunes(queue: Queue, add) -> None:
    """A prune killed part-way (none runs: the prune lock is free): the deletes it
    journaled are carried out, then its intent is closed. A file is unlinked only if it is
    the very file journaled (same inode), and its record is marked deleted only when that
    file is gone: a later file that took the same name is never touched."""
    from shardkit.queue.operations import prune_lock

    with prune_lock(queue, wait=False) as free:
        if not free:
            return  # a prune is running: its intent is open because it is not done
        for intent in queue.journal.open_intents():
            if intent.op != "prune":
                continue
            done = 0
            for step in intent.steps:
                if step.get("op") == "delete" and _finish_delete(queue, step):
                    done += 1
            queue.journal.resolve(intent, "commit", finished_by="doctor", steps=len(intent.steps))
            add(Finding("open_intent", f"interrupted prune (tx {intent.tx[:8]}) finished: {done} journaled delete(s) "
                        "carried out", True, True))


def _finish_delete(queue: Queue, step: dict) -> bool:
    item_id, inode = step.get("id"), step.get("inode")
    if not isinstance(item_id, str) or not isinstance(inode, list):
        return False  # journaled by an older shardkit: which file it was is not known for sure
    item = queue.load_item(item_id)
    if item is None or item.state == "deleted" or (item.state, item.name) != (step.get("state"), step.get("name")):
        return False
    if any(str(h.get("ts", ""))[:19] > str(step.get("ts", ""))[:19] for h in item.history):  # to the second
        return False  # the record lived on after the delete (a later file of that name took it up)
    path = queue.path(item.state, item.name)
    if file_identity(path) == inode:  # the very file journaled (else gone, or another took its name)
        os.unlink(path)
        fsync_dir(path.parent)
    item.history.append({"op": "prune", "from": item.state, "to": None, "by": "doctor"})
    item.state = "deleted"
    queue.save_item(item)
    return True


def _consistent_now(queue: Queue, item_id: str) -> bool:
    """The record as it is now (re-read) names a file that is there now, or is deleted."""
    for pause in MOVER_PATIENCE_S:
        fresh = queue.load_item(item_id)
        if fresh is None or fresh.state == "deleted":
            return True
        if fresh.state in STATES and os.path.lexists(queue.path(fresh.state, fresh.name)):
            return True
        time.sleep(pause)  # a mover between its rename and its record write (slow on a loaded machine)
    return False


def _leases(queue: Queue, repair: bool, add) -> None:
    processing = {e.name: e for e in queue.entries(["processing"])}
    leases = queue.meta / "leases"
    if leases.is_dir():
        for p in leases.iterdir():
            if not p.name.endswith(".json") or p.name.startswith("."):
                continue
            name = p.name[: -len(".json")]
            if name.startswith("~"):  # a hashed name (side_file_name): the lease says whose it is
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    name = orjson.loads(p.read_bytes())["name"]
            # a claim renames its file into processing/ before it writes the lease: a lease
            # seen now whose file is there now belongs to a claim made after the listing
            if name not in processing and not (queue.dir("processing") / name).exists():
                f = Finding("lease_without_file", f"lease for {name}, which is not in processing", True)
                if repair:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                    f.repaired = True
                add(f)
    for name, e in processing.items():
        lease = queue.lease(name)
        if lease is None:
            arrived = e.arrived()
            if arrived is None or queue.lease(name) is not None:
                continue  # gone meanwhile, or its claimer's lease landed after the listing
            if time.time() - arrived < queue.settings.stale_after:
                add(Finding("external_processing", f"processing/{name}: no lease, arrived less than stale_after ago "
                            "(a claim writing its lease, or a trainer that moved it by hand); left alone"))
            elif open_by_any_process(e.path):
                add(Finding("external_processing", f"processing/{name}: no lease, open by a process (a trainer moved it by hand); left alone"))
            else:
                add(Finding("processing_without_lease", f"processing/{name}: no lease and not open; `queue requeue-stale` returns it once older than stale_after"))
        elif queue.lease_is_stale(lease):
            add(Finding("stale_lease", f"processing/{name}: lease of {lease.worker} is stale (owner gone); run `queue requeue-stale`"))


def _reports(queue: Queue, repair: bool, add) -> None:
    """Every quarantined file has NAME.report.json beside it."""
    for e in queue.entries(["quarantine"]):
        report = e.path.with_name(side_file_name(e.name, ".report.json"))
        if report.exists():
            continue
        f = Finding("report_missing", f"quarantine/{e.name}: no {report.name} (lost in a crash?)", True)
        if repair:
            from shardkit.queue.ingest import write_report
            from shardkit.store.manifest import now_iso

            write_report(queue, e.name, {"name": e.name, "id": e.item.id if e.item else None, "quarantined_at": now_iso(),
                                          "reason": "report lost (interrupted ingest); run `shardkit validate` on the file",
                                          "report": None})
            f.repaired = True
        add(f)


def _duplicates(queue: Queue, add) -> None:
    seen = defaultdict(list)
    for e in queue.entries([*PRIORITIES, "processing", "failed", "held", "dead", "inbox"]):
        if e.item and e.item.sha256:
            seen[e.item.sha256].append(f"{e.state}/{e.name}")
    for sha, where in seen.items():
        if len(where) > 1:
            add(Finding("duplicate_content", f"same sha256 {sha[:12]}… in {', '.join(where)}"))


def _unknown(queue: Queue, add) -> None:
    for s in STATES:
        folder = queue.dir(s)
        if not folder.is_dir():
            add(Finding("missing_folder", f"{folder}: missing (run `shardkit queue init`)"))
            continue
        for p in folder.iterdir():
            if p.name.startswith(TMP_PREFIX) or p.name.startswith("."):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue  # moved or pruned by another process while we looked
            try:
                p.name.encode("utf-8")
            except UnicodeEncodeError:
                add(Finding("bad_name", f"{s}/{p.name.encode('utf-8', 'surrogateescape')!r}: the name is not valid UTF-8; "
                            "the queue skips it: rename it"))
                continue
            if stat.S_ISLNK(st.st_mode):
                add(Finding("unknown_file", f"{s}/{p.name}: a symlink; the queue holds only regular files"))
            elif not stat.S_ISREG(st.st_mode):
                add(Finding("unknown_file", f"{s}/{p.name}: not a regular file"))
            elif not is_data_name(p.name) and not (s == "quarantine" and is_quarantine_side_name(p.name)) and s != "inbox":
                add(Finding("unknown_file", f"{s}/{p.name}: not a queue file (temp/partial name)"))
