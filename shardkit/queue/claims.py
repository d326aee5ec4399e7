"""Claims: how a trainer takes a file and gives it back (claim, heartbeat, complete, fail),
and the leases that say who holds a file in processing. A mixin of `state.Queue`, whose
`move` does every rename."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from shardkit.core.errors import ConflictError, ShardkitError, UsageError
from shardkit.core.io import atomic_write
from shardkit.queue.model import (
    PRIORITIES,
    Entry,
    Lease,
    now_precise,
    process_alive,
    process_start,
    side_file_name,
)

if TYPE_CHECKING:
    from shardkit.queue.state import Queue


class Claims:
    """Leases and the trainer's operations on a `Queue`."""

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
        if owner_pid <= 0 or not process_alive(owner_pid, None):
            # its lease would be stale at once: requeue-stale would hand the file to another
            raise UsageError(f"--owner-pid {owner_pid}: no such process (the lease follows that process's life)")
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

    def _held_entry(self, op: str, path_or_name: str, token: str | None) -> tuple[Entry, Lease | None]:
        try:
            entry = self.find_for(op, path_or_name)
        except ConflictError as e:
            if token is None:
                raise
            # the holder of a token asks: its claim ended (completed, failed or requeued by
            # another process); say so rather than where the file went
            raise ConflictError(f"{e}; the lease was taken over or released: this token no longer holds the file") from None
        lease = self.lease(entry.name)
        if token is not None and (lease is None or lease.token != token):
            raise ConflictError(
                f"{entry.name}: the lease was taken over or released (token does not match); "
                "another worker owns this file now"
            )
        if lease is not None and (entry.item is None or entry.item.id != lease.id):
            # The lease names the item that was claimed. Another record of this name (one a
            # losing claimer saved just before its rename failed) must not be the one moved:
            # that left the claimed item in processing for ever (seen once in the race test).
            claimed = self.load_item(lease.id)
            if claimed is not None and claimed.name == entry.name:
                claimed.state = entry.state
                entry.item = claimed
        return entry, lease

    def heartbeat(self, path_or_name: str, token: str | None = None) -> Lease:
        entry, lease = self._held_entry("heartbeat", path_or_name, token)
        if lease is None:
            raise ConflictError(f"{entry.name}: no lease (claimed outside shardkit?)")
        lease.heartbeat = time.time()
        self._write_lease(lease)
        return lease

    def complete(self, path_or_name: str, token: str | None = None, *, dry_run: bool = False) -> Entry:
        entry, lease = self._held_entry("complete", path_or_name, token)
        # without a token the caller may not be the lease's worker (a claim requeued as
        # stale and taken by another): the journal says the token was not checked
        moved = self.move(entry, "complete", "completed", worker=lease.worker if lease else None, dry_run=dry_run,
                          update={"completed_at": now_precise(), "last_error": None},
                          unverified=True if lease is not None and token is None else None)
        if not dry_run:
            self._drop_lease(entry.name)
        return moved

    def fail(self, path_or_name: str, token: str | None = None, *, reason: str | None = None, dry_run: bool = False) -> Entry:
        entry, lease = self._held_entry("fail", path_or_name, token)
        moved = self.move(entry, "fail", "failed", worker=lease.worker if lease else None, reason=reason,
                          dry_run=dry_run, update={"last_error": reason},
                          unverified=True if lease is not None and token is None else None)
        if not dry_run:
            self._drop_lease(entry.name)
        return moved


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
