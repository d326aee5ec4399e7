"""Looking at a queue without moving anything: `find` and `find_for` (one file by name),
`status` (counts, records, bytes and oldest age per state, and what needs a person), `show`
(one file), and `queue_manifest` (every queue file with its sha256, for the trainer and
for checks before deleting)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from shardkit.core.errors import ConflictError, InputError, UsageError
from shardkit.core.io import atomic_write, inspect_input
from shardkit.queue.model import PENDING, PRIORITIES, STATE_DIRS, STATES, TRANSITIONS, Entry
from shardkit.store.manifest import now_iso

if TYPE_CHECKING:
    from shardkit.queue.state import Queue


class Looking:
    """find, find_for, status, show, disk_reserve: a mixin of `state.Queue`."""

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

    def find_for(self, op: str, name: str) -> Entry:
        """The file `op` would move (or, for heartbeat, renew): found in any state; in a
        state `op` cannot move it from, a ConflictError (exit 4) naming both; nowhere, an
        InputError (exit 3)."""
        sources = TRANSITIONS["complete" if op == "heartbeat" else op][0]
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
                "attempts": sum((e.item.attempts or 0) for e in es if e.item),
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

    # -2: records of .gz/.zst files are counted inside them since 2026-12-07 (before: their
    # compressed bytes' newlines); the old cache is not read
    cache_path = queue.meta / "cache" / "manifest-cache-2.json"
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
            compression = inspect_input(str(e.path)).compression
            stats = scan_file(e.path, compression)
            hit = {"sha256": stats.sha256, "records": stats.records, "compression": compression}
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
            "compression": hit.get("compression"),
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
