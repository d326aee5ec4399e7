"""The queue seen from outside: Prometheus metrics of `queue status`, and the journal as a
log of what happened to each file (`queue log`).

Metrics are written as a node_exporter *textfile* (prometheus-client's format and its
write-to-a-temporary-then-rename), so a collector never reads half a file:

  shardkit_queue_files{state}               files in each state
  shardkit_queue_records{state}             records of those files (as recorded at ingest)
  shardkit_queue_bytes{state}               bytes of those files
  shardkit_queue_oldest_age_seconds{state}  age of the oldest file (states holding any)
  shardkit_queue_attempts{state}            processing attempts recorded on those files
  shardkit_queue_stale_leases               files in processing whose lease has expired
  shardkit_queue_dead_letters               files in dead (retries used up)
  shardkit_queue_disk_free_bytes            free bytes on the queue's disk
  shardkit_queue_journal_bytes              the journal on disk, rotated parts included
  shardkit_queue_problems                   things that need a person (0: all well)
"""

from __future__ import annotations

import datetime
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shardkit.core.errors import UsageError

if TYPE_CHECKING:
    from shardkit.queue.state import Queue

__all__ = ["journal_log", "parse_since", "write_prometheus"]

PREFIX = "shardkit_queue"


def write_prometheus(status: dict, path: str | os.PathLike) -> Path:
    """Write `status` (Queue.status()) as a Prometheus textfile at `path`; returns the path."""
    try:
        from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
    except ImportError:
        raise UsageError("--prometheus needs prometheus-client: pip install prometheus-client") from None
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

    files = gauge("files", "Files in each queue state.", ("state",))
    records = gauge("records", "Records of the files in each state, as recorded at ingest.", ("state",))
    size = gauge("bytes", "Bytes of the files in each state.", ("state",))
    age = gauge("oldest_age_seconds", "Age of the oldest file in each state that holds any.", ("state",))
    attempts = gauge("attempts", "Processing attempts recorded on the files in each state.", ("state",))
    for state, s in status["states"].items():
        files.labels(state).set(s["files"])
        records.labels(state).set(s["records"])
        size.labels(state).set(s["bytes"])
        attempts.labels(state).set(s.get("attempts", 0))
        if s["oldest_age_s"] is not None:
            age.labels(state).set(s["oldest_age_s"])
    gauge("stale_leases", "Files in processing whose lease has expired.").set(len(status["stale_leases"]))
    gauge("dead_letters", "Files in dead: their retries are used up.").set(status["states"].get("dead", {}).get("files", 0))
    gauge("disk_free_bytes", "Free bytes on the queue's disk.").set(status["disk"]["free"])
    gauge("journal_bytes", "Bytes of the journal on disk, rotated parts included.").set(status["journal_bytes"])
    gauge("problems", "Things that need a person (0: all well).").set(len(status["problems"]))
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target}: is a folder; --prometheus takes a file (e.g. {target}/shardkit.prom)")
    try:
        write_to_textfile(str(target), registry)
    except OSError as e:
        raise UsageError(f"{target}: cannot write the metrics: {e.strerror}") from None
    return target


def parse_since(text: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """An ISO date or time (2026-12-01, 2026-12-01T10:00, UTC unless it says), or a
    duration back from now: 30m, 2h, 7d."""
    now = now or datetime.datetime.now(datetime.UTC)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip()
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        return now - datetime.timedelta(seconds=float(t[:-1]) * units[t[-1]])
    try:
        when = datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {text!r}: give an ISO date or time (2026-12-01, 2026-12-01T10:00) "
                         "or a duration (30m, 2h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _when(entry: dict) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(entry.get("ts", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def journal_log(queue: Queue, *, item: str | None = None, since: datetime.datetime | None = None,
                limit: int | None = None) -> list[dict]:
    """The journal's entries, rotated parts included, oldest first: those about `item` (a
    file name, or an item id; a file split into shards brings its shards' entries too),
    those at or after `since`, the last `limit`."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    wanted_names = {Path(item).name} if item else set()
    ids: set[str] = {item} if item else set()
    txs: set[str] = set()  # its transactions: their steps (a split's publish lines) are its too
    kept: deque[dict] = deque(maxlen=limit)
    for entry in _entries(queue):
        if item:
            if (entry.get("name") in wanted_names or entry.get("id") in ids or entry.get("parent") in ids
                    or entry.get("tx") in txs):
                if isinstance(entry.get("id"), str):
                    ids.add(entry["id"])
                if entry.get("phase") == "intent" and entry.get("op") == "ingest-split":
                    txs.add(entry["tx"])  # not a prune's: its other deletes are other files
            else:
                continue
        if since is not None:
            when = _when(entry)
            if when is None or when < since:
                continue
        kept.append(entry)
    return list(kept)


def _entries(queue: Queue) -> Iterator[dict]:
    yield from queue.journal.iter_entries(on_bad=lambda bad: None)
