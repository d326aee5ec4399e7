"""Ingest: take complete drops from the inbox, validate them, and route each one.

    valid, within limits      -> queue/<priority>/
    invalid beyond max_errors -> queue/quarantine/ with NAME.report.json beside it
                                 (on_invalid = "strip": the good records go on as shards,
                                 the bad ones to quarantine/NAME.rejects.jsonl)
    over max_records/max_bytes-> split into shards first: the children are published into
                                 queue/<priority>/ before the parent moves to queue/split/

A split on ingest is a journal transaction: the intent names the parent, the temp folder
and the children; the shards are written and committed in `.shardkit/tmp/TX/` by the split
pipeline (its own crash safety), then published one rename at a time, then the parent
moves, then the commit line. After a crash, `finish_open_ingests` (run by the next ingest
and by `doctor --repair`) rolls the transaction forward from what is on disk, so every
record ends up exactly once in the queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shardkit.core import faults
from shardkit.core.errors import ConflictError, InputError, ShardkitError
from shardkit.core.io import (
    atomic_write,
    commit_file,
    create_temp,
    fsync_dir,
    inspect_input,
    rename_noreplace,
    write_all,
)
from shardkit.pipeline.driver import split
from shardkit.pipeline.scan import validate_files
from shardkit.pipeline.shard import SplitOptions, input_stems
from shardkit.queue.model import free_name
from shardkit.queue.state import PENDING, Entry, Item, Queue, new_id, side_file_name
from shardkit.store.manifest import MANIFEST_NAME, cut_short, now_iso, read_manifest, scan_file

REPORT_SUFFIX = ".report.json"


@dataclass
class Routed:
    name: str
    to: str
    records: int | None = None
    reason: str | None = None
    children: list[str] = field(default_factory=list)
    renamed: str | None = None  # its name in the queue, when that name was taken there

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class IngestResult:
    routed: list[Routed] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # interrupted ingests completed first
    dry_run: bool = False

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "routed": [r.to_dict() for r in self.routed],
            # a name that is not UTF-8 is shown with its bad bytes escaped (\\xff): JSON holds text
            "skipped": [{"name": n.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), "why": w}
                        for n, w in self.skipped],
            "finished_interrupted": self.finished,
            "counts": self.counts(),
        }

    def counts(self) -> dict:
        c: dict[str, int] = {}
        for r in self.routed:
            key = "split" if r.to == "split" else r.to
            c[key] = c.get(key, 0) + 1
        c["skipped"] = len(self.skipped)
        return c


def ingest(queue: Queue, *, priority: str | None = None, dry_run: bool = False, now: float | None = None,
           warn: Callable[[str], None] | None = None) -> IngestResult:
    """Route every complete file in the inbox (see the module docstring)."""
    s = queue.settings
    prio = priority or s.priority
    if prio not in PENDING:
        raise ConflictError(f"unknown priority {prio!r} (expected high, normal or low)")
    result = IngestResult(dry_run=dry_run)
    if not dry_run:
        result.finished = finish_open_ingests(queue)
    now = time.time() if now is None else now
    inbox = queue.dir("inbox")
    inbox_entries = {e.name: e for e in queue.entries(["inbox"])}
    for p in sorted(inbox.iterdir()) if inbox.is_dir() else []:
        why = _not_ready(p, now, s.settle)
        if why:
            result.skipped.append((p.name, why))
            continue
        entry = inbox_entries.get(p.name)
        if entry is None or not os.path.lexists(entry.path):
            continue  # taken by a concurrent ingest
        with _taken(entry) as mine:
            if not mine:
                continue  # another ingest holds it (or routed it meanwhile)
            _check_disk(queue, entry)
            try:
                result.routed.append(_ingest_one(queue, entry, prio, dry_run))
            except ConflictError as e:
                result.skipped.append((p.name, str(e)))
    return result


@contextlib.contextmanager
def _taken(entry: Entry):
    """Exclusive ownership of one inbox drop for the time it is routed: an flock on the file,
    then a check that inbox/NAME is still that file. A concurrent ingest that listed the
    same drop gets False and moves on, so a drop is validated, split and published once;
    the lock dies with its holder, so a killed ingest blocks nothing."""
    with _flocked(entry.path, os.O_NOFOLLOW | os.O_NONBLOCK, gone=False) as fd:
        if fd is None:
            yield False  # held by another ingest, or gone (routed) already
            return
        try:
            yield os.stat(entry.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            yield False


@contextlib.contextmanager
def _flocked(path: Path, flags: int, *, gone):
    """An exclusive flock on `path`, without waiting: yields its fd while held, None if
    another process holds it, or `gone` if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError:
        yield gone
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def _not_ready(p: Path, now: float, settle: float) -> str | None:
    if p.name.startswith("."):
        return "hidden file"
    if any(ord(c) < 32 or c == "\x7f" for c in p.name):
        return "name has control characters (newline, escape...): refused; rename it"
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, decoded by Python as surrogates
        return "name is not valid UTF-8: refused; rename it"
    if p.name.endswith((".tmp", ".part", ".partial")):
        return "temporary or partial upload"
    if p.name.endswith(REPORT_SUFFIX):
        return "a report"
    try:
        st = p.lstat()
    except FileNotFoundError:
        return "gone"
    import stat

    if stat.S_ISLNK(st.st_mode):
        return "a symlink: refused (the queue takes only regular files it can move)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (directory, FIFO or device): refused"
    if now - st.st_mtime < settle:
        return f"modified {now - st.st_mtime:.0f}s ago, within the settle window ({settle:.0f}s): may still be written"
    if not os.access(p, os.R_OK):
        return "unreadable (permission denied)"
    return None


def _check_disk(queue: Queue, entry: Entry) -> None:
    reserve = queue.disk_reserve([entry])
    free = shutil.disk_usage(queue.root).free
    if free < reserve:
        raise InputError(
            f"{queue.root}: {free:,} bytes free, below the reserve of {reserve:,} needed to ingest {entry.name}; "
            "free some space (shardkit queue prune) and retry"
        )


def _ingest_one(queue: Queue, entry: Entry, prio: str, dry_run: bool) -> Routed:
    s = queue.settings
    item = entry.item or Item(id=new_id(), name=entry.name, state="inbox")
    tmp = queue.meta / "tmp"
    rejects = tmp / f"{item.id}.rejects.jsonl"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rejects)
    try:
        checked = validate_files([str(entry.path)], kind=s.kind, max_errors=s.max_errors,
                                 max_reject_ratio=s.max_reject_ratio, max_tokens=s.max_tokens,
                                 tokenizer=s.tokenizer, rejects=rejects if not dry_run else None, jobs=1)
    except ShardkitError as e:  # unreadable, corrupt compression, broken array...
        return _quarantine(queue, entry, {"error": str(e)}, str(e), dry_run)
    report = checked.report
    records = report.records
    if not checked.ok:
        ratio = s.max_reject_ratio
        over_ratio = ratio is not None and records > 0 and report.invalid / records > ratio
        if s.on_invalid == "strip" and report.valid > 0 and not over_ratio:
            return _split_in(queue, entry, prio, dry_run, records=report.valid, strip=True)
        if over_ratio and (s.on_invalid == "strip" or report.invalid <= s.max_errors):
            # stripping would pass on a remnant of a broken drop as "ok"
            reason = (f"{report.invalid} of {records} record(s) invalid ({report.invalid / records:.1%}), "
                      f"more than max_reject_ratio {ratio:g}")
        else:
            reason = f"{report.invalid} invalid record(s) (max_errors {s.max_errors})"
        return _quarantine(queue, entry, {**checked.to_dict(), "rejects": None}, reason, dry_run, rejects)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rejects)
    compression = inspect_input(str(entry.path)).compression
    unusable = _unusable(entry, records, compression)
    if unusable is not None:
        return _quarantine(queue, entry, {**checked.to_dict(), "rejects": None}, unusable, dry_run)
    over = (s.max_records is not None and records > s.max_records) or (s.max_bytes is not None and entry.size > s.max_bytes)
    if over:
        return _split_in(queue, entry, prio, dry_run, records=records)
    if dry_run:
        return Routed(entry.name, prio, records)
    try:
        stats = scan_file(entry.path, compression)
    except ShardkitError as e:  # a .parquet name on a file that is not Parquet...
        return _quarantine(queue, entry, {"error": str(e)}, str(e), dry_run)
    item = entry.item or queue.new_item(entry)
    item.records, item.sha256, item.bytes, item.kind = stats.records, stats.sha256, stats.bytes, _main_kind(report)
    moved = _move_in(queue, entry, prio)  # saves the record once, after the rename
    return Routed(entry.name, moved.state, records, renamed=moved.name if moved.name != entry.name else None)


def _unusable(entry: Entry, records: int, compression: str | None) -> str | None:
    """Why a drop that validates is still not fit to train on, or None."""
    if records == 0:
        return "no records (empty, or only blank lines)"
    if compression is None and cut_short(entry.path):  # as `verify` checks a shard
        return ("no newline at the end: the last record may be cut short (an upload that stopped?); "
                "if the file is complete, add the newline and redrive it")
    return None


def _main_kind(report) -> str | None:
    kinds = report.kinds
    return max(kinds, key=kinds.get) if kinds else None


def _move_in(queue: Queue, entry: Entry, to: str, **kw) -> Entry:
    """inbox -> `to`, copying (fsync, sha256-verified) when the inbox is another filesystem."""
    try:
        return queue.move(entry, "ingest", to, **kw)
    except InputError as e:
        if "another filesystem" not in str(e):
            raise
    target_dir = queue.dir(to)
    src_sha = scan_file(entry.path, None).sha256  # the bytes on disk: plain or not, the sha256 is the same
    fd, tmp = create_temp(target_dir, entry.name)
    try:
        h = hashlib.sha256()
        with open(entry.path, "rb") as f:
            while chunk := f.read(1 << 20):
                write_all(fd, chunk)
                h.update(chunk)
        if h.hexdigest() != src_sha:
            raise InputError(f"{entry.path}: changed while being copied into the queue; left in the inbox")
        commit_file(fd, tmp, target_dir / entry.name, replace=False)
        fd = -1
    finally:
        if fd >= 0:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if scan_file(target_dir / entry.name, None).sha256 != src_sha:
        raise InputError(f"{target_dir / entry.name}: copy does not match {entry.path}; original kept")
    item = queue.adopt(entry, journal=False)
    os.unlink(entry.path)
    fsync_dir(entry.path.parent)
    queue.journal.append("ingest", id=item.id, name=entry.name, to=to, copied=True, sha256=src_sha, **kw)
    item.state = to
    queue.save_item(item)
    return Entry(to, entry.name, target_dir / entry.name, entry.size, entry.mtime, item)


def _quarantine(queue: Queue, entry: Entry, report: dict, reason: str, dry_run: bool,
                rejects: Path | None = None) -> Routed:
    if dry_run:
        return Routed(entry.name, "quarantine", None, reason)
    item = entry.item or queue.new_item(entry)
    records = report.get("records", {}).get("read") if isinstance(report.get("records"), dict) else None
    item.records = records
    # the report first: a kill between the two leaves a report for a file still in the inbox
    # (rewritten when it is ingested again), never a quarantined file without its report
    # the name it will have there, chosen first: the report is written for that name (an
    # earlier NAME in quarantine keeps its own report)
    target = free_name(queue.dir("quarantine"), entry.name)
    doc = {"name": entry.name, "id": item.id, "quarantined_at": now_iso(), "reason": reason, "report": report}
    write_report(queue, target, doc)
    moved = queue.move(entry, "ingest", "quarantine", name=target, reason=reason)
    if rejects is not None and rejects.exists():
        rename_noreplace_or_suffix(rejects, queue.dir("quarantine") / side_file_name(Path(moved.name).stem, ".rejects.jsonl"))
    return Routed(entry.name, "quarantine", records, reason, renamed=target if target != entry.name else None)


def write_report(queue: Queue, name: str, doc: dict) -> None:
    path = queue.dir("quarantine") / side_file_name(name, REPORT_SUFFIX)
    atomic_write(path, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n", replace=True)


def rename_noreplace_or_suffix(src: Path, dst: Path) -> Path:
    """Move `src` to `dst`, or to `dst` with -2, -3... when the name is taken."""
    k = 1
    target = dst
    while True:
        try:
            rename_noreplace(src, target)
            fsync_dir(target.parent)
            return target
        except ConflictError:
            k += 1
            target = dst.with_name(f"{dst.stem}-{k}{dst.suffix}")


# ---------------------------------------------------------------- split on ingest


def _split_in(queue: Queue, entry: Entry, prio: str, dry_run: bool, *, records: int | None, strip: bool = False,
              max_records: int | None = None, op: str = "ingest") -> Routed:
    s = queue.settings
    reason = "invalid records stripped" if strip else f"over the limits (max_records {s.max_records}, max_bytes {s.max_bytes})"
    if max_records is not None:
        reason = f"re-split into shards of {max_records} records"
    if dry_run:
        return Routed(entry.name, "split", records, reason)
    item = queue.adopt(entry, journal=False)
    stem = input_stems([entry.name])[0]
    stem = stem.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")  # shard names fit NAME_MAX
    template = f"{stem}-{item.id[:8]}-{{index:05d}}.jsonl"
    tx_id = new_id()
    work = queue.meta / "tmp" / f"ingest-{tx_id}"
    check = None
    if strip:
        from shardkit.records.check import CheckOptions

        check = CheckOptions(kind=s.kind, max_tokens=s.max_tokens, tokenizer=s.tokenizer)
    options = SplitOptions(
        max_records=max_records or s.max_records or (None if s.max_bytes else 50_000),
        max_bytes=None if max_records else s.max_bytes, name=template, check=check,
    )
    try:
        split([str(entry.path)], work, options, jobs=1)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing published: the parent stays where it was
        raise
    faults.hit("after:ingest_split_written")
    # From here the transaction stays open until the parent has moved: a crash or an error
    # while publishing is rolled forward by finish_open_ingests, never undone. The work
    # folder's flock says its owner still runs: nobody rolls forward a live transaction.
    with _work_lock(work) as mine:
        assert mine  # a new folder of our own
        tx = queue.journal.begin("ingest-split", id=item.id, name=entry.name, work=str(work.relative_to(queue.root)),
                                 priority=prio, strip=strip, parent_state=entry.state, parent_op=op)
        routed = _publish(queue, entry, item, work, prio, tx, op)
        tx.commit(children=len(routed))
    return Routed(entry.name, "split", records, reason, routed)


def _publish(queue: Queue, entry: Entry, item: Item, work: Path, prio: str, tx, op: str = "ingest") -> list[str]:
    """Move the committed shards of `work` into pending, then the parent to split/."""
    manifest = read_manifest(work / MANIFEST_NAME)
    if not manifest.get("complete"):
        raise InputError(f"{work}: split did not complete")
    children = []
    for f in manifest["files"]:
        name = f["path"]
        src = work / name
        if src.exists():
            child = Item(id=uuid.uuid5(uuid.UUID(item.id), name).hex, name=name, state=prio, priority=prio, records=f["records"], bytes=f["bytes"],
                         sha256=f["sha256"], parent=item.id, kind=item.kind)
            child.history.append({"ts": now_iso(), "op": "ingest", "from": None, "to": prio, "parent": item.id})
            queue.save_item(child)
            try:
                rename_noreplace(src, queue.path(prio, name))
            except ConflictError:
                raise ConflictError(f"{prio}/{name} already exists; cannot publish shard of {entry.name}") from None
            fsync_dir(queue.dir(prio))
            if tx is not None:
                tx.step(op="publish", id=child.id, name=name, to=prio, records=f["records"], sha256=f["sha256"],
                        parent=item.id)
            else:
                queue.journal.append("publish", id=child.id, name=name, to=prio, records=f["records"], parent=item.id)
            faults.hit("after:ingest_publish")
            item.children.append(child.id)
        children.append(name)
    rejects = manifest.get("rejects")
    if rejects:
        rename_noreplace_or_suffix(work / rejects["path"], queue.dir("quarantine") / side_file_name(Path(entry.name).stem, ".rejects.jsonl"))
    item.records = manifest["counts"]["read"] - manifest["counts"]["blank"]
    queue.save_item(item)
    if entry.path.exists():
        queue.move(entry, op, "split", reason=f"split into {len(children)} shard(s)")
    shutil.rmtree(work, ignore_errors=True)
    return children


def resplit(queue: Queue, names: list[str], max_records: int, *, all_failed: bool = False,
            dry_run: bool = False) -> list[Routed]:
    """`queue retry --split N`: a failed file (too big for the trainer) is cut into shards
    of N records, published into its priority, and the parent moves to split/."""
    if max_records < 1:
        raise ConflictError(f"--split must be at least 1 (got {max_records})")
    entries = queue.entries(["failed"]) if all_failed else [queue.find_for("retry", n) for n in names]
    out = []
    for entry in entries:
        _check_disk(queue, entry)
        if entry.item is None and not dry_run:
            try:
                queue.adopt(entry, journal=False)  # its retry line names the id
            except ConflictError:
                if not all_failed:
                    raise
                continue  # --all: moved on, or its fail is still saving its record: not ours now
        out.append(_split_in(queue, entry, entry.priority, dry_run, records=entry.item.records if entry.item else None,
                             max_records=max_records, op="retry"))
    return out


def finish_open_ingests(queue: Queue) -> list[str]:
    """Roll interrupted split-on-ingest transactions forward from what is on disk.

    Shards committed in the temp folder are published (those already published are left);
    the parent moves to split/. If the split itself had not completed, its temp folder is
    removed and the parent, still in the inbox, is ingested again from scratch."""
    done = []
    for intent in queue.journal.open_intents():
        if intent.op != "ingest-split":
            continue
        work = queue.root / intent.intent["work"]
        with _work_lock(work) as mine:
            if not mine:
                continue  # its owner still runs, or another process is rolling it forward
            if intent.tx not in {i.tx for i in queue.journal.open_intents()}:
                continue  # rolled forward by another process meanwhile
            if _roll_forward(queue, intent, work):
                done.append(intent.intent["name"])
    return done


def ingest_running(queue: Queue, intent) -> bool:
    """An open split-on-ingest whose owner still runs (it holds its work folder's lock)."""
    if intent.op != "ingest-split":
        return False
    with _work_lock(queue.root / intent.intent["work"]) as free:
        return not free


@contextlib.contextmanager
def _work_lock(work: Path):
    """An exclusive flock on an ingest's work folder, without waiting: True while held. A
    folder that is gone (its transaction finished) is True: there is nothing to race for."""
    with _flocked(work, os.O_DIRECTORY, gone=True) as fd:
        yield fd is not None


def _roll_forward(queue: Queue, intent, work: Path) -> bool:
    """Finish one interrupted split-on-ingest (its owner is gone); True if shards were published."""
    parent_state = intent.intent.get("parent_state", "inbox")
    entry = next((e for e in queue.entries([parent_state]) if e.item and e.item.id == intent.intent["id"]), None)
    complete = (work / MANIFEST_NAME).exists() and read_manifest(work / MANIFEST_NAME).get("complete")
    if entry is None:
        # the parent left the inbox only after every shard was published: all done
        shutil.rmtree(work, ignore_errors=True)
        queue.journal.resolve(intent, "commit", recovered=True)
        return False
    if complete:
        _publish(queue, entry, entry.item, work, intent.intent["priority"], None,
                 intent.intent.get("parent_op", "ingest"))
        queue.journal.resolve(intent, "commit", recovered=True)
        return True
    # the split had not completed: nothing was published; the parent is ingested anew
    shutil.rmtree(work, ignore_errors=True)
    queue.journal.resolve(intent, "abort", recovered=True)
    return False
