"""The operator's moves on a `Queue` (retry, requeue stale claims, hold, release, redrive,
quarantine, prune): a mixin of `state.Queue`, whose `move` does every rename and whose
journal records every delete."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterable, Iterator

from shardkit.core.errors import ConflictError, UsageError
from shardkit.core.io import fsync_dir
from shardkit.queue.model import (
    LEASELESS_FLOOR_S,
    Entry,
    PrunePlan,
    completed_time,
    file_identity,
    open_by_any_process,
)
from shardkit.store.manifest import now_iso


class Operations:
    """retry, requeue_stale, hold, release, redrive, quarantine, prune."""

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
                                     dry_run=dry_run, reset_attempts=True if reset_attempts else None))
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
                try:
                    item = self.adopt(entry)
                except ConflictError:
                    continue  # moved on (or recorded) by another process meanwhile: not ours
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
        done.sort(key=lambda e: completed_time(e), reverse=True)  # newest first
        plan = PrunePlan()
        for i, e in enumerate(done):
            age = now - completed_time(e)
            if (keep is not None and i >= keep) or (older_than is not None and age > older_than):
                plan.delete.append(e)
            else:
                plan.keep.append(e)
        if yes:
            with prune_lock(self), self.journal.transaction("prune", files=len(plan.delete)) as tx:
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
                    identity = file_identity(e.path)
                    if identity is None:
                        continue
                    # journaled first: a kill between the two leaves a recorded delete, never a
                    # silent one; its identity says which file, should another take its name later
                    tx.step("delete", id=item.id if item else None, name=e.name, state=e.state, bytes=e.size,
                            inode=identity)
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


@contextlib.contextmanager
def prune_lock(queue, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on ROOT/.shardkit/prune.lock while a prune deletes: prunes take
    turns, and doctor can tell a running prune (leave it) from a killed one (finish it).
    Yields False when `wait` is off and a prune holds it."""
    try:
        fd = os.open(queue.meta / "prune.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        if wait:
            raise
        yield True  # a read-only root: no prune can be running on it
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
