"""Append-only JSONL audit journal (DESIGN.md §4): one line per queue transition.

    ROOT/.shardkit/journal.jsonl                    current file, opened O_APPEND
    ROOT/.shardkit/journal.jsonl.lock               flock target; never moves, never removed
    ROOT/.shardkit/journal-20261124T010203.jsonl.gz rotated past max_bytes, kept forever
    ROOT/.shardkit/journal-20261124T010203-1.jsonl.gz  (-N when one second holds several)

Every append and every rotation holds an exclusive flock on the lock file, so lines from
several processes never interleave, however long, and none is lost across a rotation: an
appender opens `journal.jsonl` only once it holds the lock, after any rotation is done.
Each line is fsynced (unless `fsync=False`). Readers take the lock shared just long enough
to open every file, then read from those descriptors: a consistent snapshot that a
rotation running meanwhile cannot disturb.

A crash can leave a torn last line; readers skip and report it, and the next append starts
on a fresh line so it is not glued to the fragment.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from shardkit.core.errors import ShardkitError
from shardkit.core.io import TMP_PREFIX, env_error, fsync_dir, rename_noreplace, write_all
from shardkit.queue.rotate import gzip_file

JOURNAL_DIR = ".shardkit"
JOURNAL_NAME = "journal.jsonl"
DEFAULT_MAX_BYTES = 64 * 1024**2
RESERVED_KEYS = frozenset({"ts", "op", "phase", "tx"})
_TAIL_BLOCK = 64 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A journal line that could not be read (torn by a crash, or garbage)."""

    file: Path
    line: int | None  # 1-based line number in `file`; None when read from the end (tail)
    offset: int | None  # byte offset in the (uncompressed) file, when known
    reason: str

    def __str__(self) -> str:
        where = f":{self.line}" if self.line is not None else f" at byte {self.offset}"
        return f"{self.file}{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class OpenIntent:
    """A multi-step operation whose intent was journaled but never committed nor aborted."""

    tx: str
    op: str
    intent: dict  # the intent line as written (ts, op, phase, tx, fields)
    steps: tuple[dict, ...]  # the step lines written before the crash, in order


OnBad = Callable[[BadLine], None]


def _warn(bad: BadLine) -> None:
    log.warning("skipping unreadable journal line: %s", bad)


class Transaction:
    """Handle given by `Journal.transaction()`; `step()` appends a line carrying the tx id."""

    def __init__(self, journal: Journal, op: str, tx_id: str) -> None:
        self.journal = journal
        self.op = op
        self.id = tx_id
        self.steps = 0

    def step(self, op: str, **fields: Any) -> dict:
        self.steps += 1
        return self.journal._append(op, fields, phase="step", tx=self.id)

    def commit(self, **fields: Any) -> dict:
        """Close a transaction from `Journal.begin()`: done."""
        return self.journal._append(self.op, {**fields, "steps": self.steps}, phase="commit", tx=self.id)

    def abort(self, **fields: Any) -> dict:
        """Close a transaction from `Journal.begin()`: stopped, its partial steps dealt with."""
        return self.journal._append(self.op, {**fields, "steps": self.steps}, phase="abort", tx=self.id)


class JournalReading:
    """Reading a journal, rotated parts included (`Journal`'s reading half): every entry in
    order, the last n, the transactions left open, the bytes on disk. Reads never take
    the write lock: a snapshot of the parts, then each part to the length it had."""

    def rotated_files(self) -> list[Path]:
        """The rotated journal files, oldest first."""
        return [p for p, _ in self._rotated_entries()]

    def disk_usage(self) -> int:
        """Bytes on disk of the current and the rotated files (for `queue status`)."""
        total = 0
        for p in [*self.rotated_files(), self.path]:
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    # ------------------------------------------------------------ reading

    def _snapshot(self) -> tuple[list[Path], IO[bytes] | None, int]:
        """Under the shared lock: the rotated files, and the current file opened with its size.

        Rotated .gz files are never changed nor removed, so they are opened later, one at a
        time; the current file is opened now, as a later rotation renames it.
        """
        with self._locked(fcntl.LOCK_SH, create=False):
            rotated = self.rotated_files()
            try:
                current = open(self.path, "rb")  # noqa: SIM115 - closed by the reader
            except FileNotFoundError:
                return rotated, None, 0
            return rotated, current, os.fstat(current.fileno()).st_size

    def _read_rotated(self, path: Path, on_bad: OnBad) -> Iterator[dict]:
        try:
            f = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:  # a plain leftover compressed meanwhile: read its .gz
            gz = path.with_name(path.name + ".gz")
            if path.suffix == ".gz" or not gz.exists():
                on_bad(BadLine(path, None, None, "rotated journal file vanished while reading"))
                return
            path, f = gz, open(gz, "rb")  # noqa: SIM115
        with f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            yield from _read_entries(path, f, None if gzipped else os.fstat(f.fileno()).st_size, on_bad)

    def iter_entries(self, on_bad: OnBad | None = None) -> Iterator[dict]:
        """Every entry, oldest first: the rotated files in order, then the current one.

        Unreadable lines (a torn last line after a crash, garbage) are skipped and passed to
        `on_bad` (default: a logging warning); reading never fails because of them.
        """
        on_bad = on_bad or _warn
        rotated, current, size = self._snapshot()
        try:
            for path in rotated:
                yield from self._read_rotated(path, on_bad)
            if current is not None:
                yield from _read_entries(self.path, current, size, on_bad)
        finally:
            if current is not None:
                current.close()

    def tail(self, n: int, on_bad: OnBad | None = None) -> list[dict]:
        """The last `n` entries, oldest first. Reads the current file backwards from its end."""
        if n <= 0:
            return []
        on_bad = on_bad or _warn
        rotated, current, size = self._snapshot()
        got: deque[dict] = deque()
        if current is not None:
            with current:
                got.extend(_tail_entries(self.path, current, size, n, on_bad))
        for path in reversed(rotated):
            need = n - len(got)
            if need <= 0:
                break
            older = deque(self._read_rotated(path, on_bad), maxlen=need)
            got.extendleft(reversed(older))
        return list(got)

    def open_intents(self, on_bad: OnBad | None = None) -> list[OpenIntent]:
        """Transactions with an intent line but no commit or abort, oldest first (reads all files)."""
        pending: dict[str, tuple[dict, list[dict]]] = {}
        for entry in self.iter_entries(on_bad):
            tx, phase = entry.get("tx"), entry.get("phase")
            if not isinstance(tx, str):
                continue
            if phase == "intent":
                pending[tx] = (entry, [])
            elif phase in ("commit", "abort"):
                pending.pop(tx, None)
            elif tx in pending:
                pending[tx][1].append(entry)
        return [OpenIntent(tx, intent["op"], intent, tuple(steps)) for tx, (intent, steps) in pending.items()]


# ---------------------------------------------------------------- helpers


class Journal(JournalReading):
    """Append-only JSONL journal at `path`, rotated and gzipped past `max_bytes` (None: never).

    Safe to share between threads and to use from many processes at once. A Journal object
    holds no open file between calls, so it survives fork().
    """

    def __init__(self, path: Path | str, *, max_bytes: int | None = DEFAULT_MAX_BYTES, fsync: bool = True) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None (got {max_bytes})")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        stem, suffix = os.path.splitext(self.path.name)
        self._rotated_re = re.compile(
            rf"{re.escape(stem)}-(\d{{8}}T\d{{6}})(?:-(\d+))?{re.escape(suffix)}(\.gz)?"
        )
        self._stem, self._suffix = stem, suffix
        self._temp_re = re.compile(
            re.escape(TMP_PREFIX) + rf"\d+-\d+-{re.escape(stem)}-\d{{8}}T\d{{6}}(?:-\d+)?{re.escape(suffix)}\.gz"
        )

    @classmethod
    def for_root(cls, root: Path | str, **kw: Any) -> Journal:
        """The queue journal of ROOT: ROOT/.shardkit/journal.jsonl."""
        return cls(Path(root) / JOURNAL_DIR / JOURNAL_NAME, **kw)

    # ------------------------------------------------------------ writing

    def append(self, op: str, **fields: Any) -> dict:
        """Append one line {"ts", "op", **fields} and return it.

        Fields whose value is None are left out ("where known"). A trailing underscore is
        dropped from a key so Python keywords can be fields: `from_="failed"` -> "from".
        ts, op, phase and tx are reserved.
        """
        return self._append(op, fields)

    @contextlib.contextmanager
    def transaction(self, op: str, **fields: Any) -> Iterator[Transaction]:
        """Journal a multi-step operation: an intent line now, then a commit or abort line.

        The block exits normally -> {"phase": "commit", "steps": n}. It raises -> {"phase":
        "abort", "error": ..., "steps": n}, then the exception goes on: abort means the
        caller stopped and dealt with its partial steps (undo them inside the block if they
        must not stay). A process killed inside the block leaves the intent open:
        `open_intents()` returns it with its steps, for `doctor` to finish or undo.
        """
        tx = Transaction(self, op, uuid.uuid4().hex)
        self._append(op, fields, phase="intent", tx=tx.id)
        try:
            yield tx
        except BaseException as e:
            try:
                self._append(op, {"error": _describe(e), "steps": tx.steps}, phase="abort", tx=tx.id)
            except Exception as journal_error:  # the original error matters more; doctor sees the intent
                log.warning("could not journal the abort of %s %s: %s", op, tx.id, journal_error)
            raise
        self._append(op, {"steps": tx.steps}, phase="commit", tx=tx.id)

    def begin(self, op: str, **fields: Any) -> Transaction:
        """Journal an intent now and return the transaction, left open until its `commit()`
        or `abort()`. Unlike `transaction()`, an exception does not abort it: for operations
        that must be rolled forward from the journal after any failure, not abandoned."""
        tx = Transaction(self, op, uuid.uuid4().hex)
        self._append(op, fields, phase="intent", tx=tx.id)
        return tx

    def resolve(self, intent: OpenIntent, phase: str, **fields: Any) -> dict:
        """Close an open intent found after a crash: phase "commit" (finished) or "abort"."""
        if phase not in ("commit", "abort"):
            raise ValueError(f"phase must be commit or abort (got {phase!r})")
        return self._append(intent.op, fields, phase=phase, tx=intent.tx)

    def rotate(self) -> Path | None:
        """Rotate now (whatever the size); return the new .gz, or None if there was nothing to rotate."""
        with self._locked(fcntl.LOCK_EX, create=True):
            return self._rotate_locked()

    def _append(self, op: str, fields: dict, **meta: str) -> dict:
        if not isinstance(op, str) or not op:
            raise ValueError(f"journal op must be a non-empty string (got {op!r})")
        entry: dict[str, Any] = {"ts": _now_iso(), "op": op, **meta}
        for key, value in fields.items():
            key = key[:-1] if key.endswith("_") else key
            if key in RESERVED_KEYS:
                raise ValueError(f"journal field {key!r} is reserved")
            if value is not None:
                entry[key] = value
        line = orjson.dumps(entry, default=_to_json) + b"\n"
        self._write(line)
        return entry

    def _write(self, line: bytes) -> None:
        with self._locked(fcntl.LOCK_EX, create=True):
            fd, size = self._open_current()
            try:
                if self.max_bytes is not None and size and size + len(line) > self.max_bytes:
                    os.close(fd)
                    fd = -1
                    self._rotate_quietly()
                    fd, size = self._open_current()
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # a crash tore the last line: do not glue ours to it
                try:
                    write_all(fd, line)
                    if self.fsync:
                        os.fsync(fd)
                except OSError as e:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # leave no half line behind (disk full)
                    raise env_error(e, self.path) from None
            finally:
                if fd >= 0:
                    os.close(fd)

    def _open_current(self) -> tuple[int, int]:
        """Open journal.jsonl for appending (creating it, durably, if needed): (fd, size)."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                fd = os.open(self.path, flags | os.O_CREAT, 0o666)
                fsync_dir(self.path.parent)
            return fd, os.fstat(fd).st_size
        except OSError as e:
            raise env_error(e, self.path) from None

    @contextlib.contextmanager
    def _locked(self, mode: int, *, create: bool) -> Iterator[bool]:
        """Hold the journal flock; yields False (unlocked) when a reader cannot open the lock file.

        The lock file is opened on every call: flock then excludes other threads of this
        process too (each open is its own lock owner), and a forked child never shares it.
        """
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if create:
                raise env_error(e, self.lock_path) from None
            try:  # a reader of a journal it may not write to
                fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                yield False
                return
        try:
            fcntl.flock(fd, mode)
            yield True
        finally:
            os.close(fd)  # releases the flock

    # ------------------------------------------------------------ rotation (lock held)

    def _rotate_locked(self) -> Path | None:
        rotated = None
        try:
            size = os.lstat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size:
            rotated = self.path.with_name(self._next_rotated_name())
            rename_noreplace(self.path, rotated)
            fsync_dir(self.path.parent)
        self._finish_rotations()
        return rotated.with_name(rotated.name + ".gz") if rotated else None

    def _rotate_quietly(self) -> None:
        """Rotate on the way to an append: a failure (disk full while gzipping) must not
        stop the queue; the plain rotated file stays and the next rotation gzips it."""
        try:
            self._rotate_locked()
        except (ShardkitError, OSError) as e:
            log.warning("journal rotation failed (will retry at the next one): %s", e)

    def _next_rotated_name(self) -> str:
        """journal-STAMP[-N].jsonl, sorting after every rotated file (even if the clock went back)."""
        stamp, seq = time.strftime("%Y%m%dT%H%M%S", time.gmtime()), 0
        keys = [key for _, key in self._rotated_entries()]
        if keys and max(keys) >= (stamp, 0):
            stamp, seq = max(keys)
            seq += 1
        return f"{self._stem}-{stamp}{f'-{seq}' if seq else ''}{self._suffix}"

    def _finish_rotations(self) -> None:
        """Gzip rotated files still plain (this rotation, or one a crash interrupted)."""
        plain = []
        for name in sorted(os.listdir(self.path.parent)):
            if self._temp_re.fullmatch(name):
                os.unlink(self.path.with_name(name))  # a killed rotation's temp; we hold the lock
            elif self._rotated_re.fullmatch(name) and not name.endswith(".gz"):
                plain.append(self.path.with_name(name))
        for path in plain:
            gz = path.with_name(path.name + ".gz")
            if not gz.exists():  # if it does, a crash hit after its fsync+rename: it is complete
                gzip_file(path, gz)
            os.unlink(path)
            fsync_dir(self.path.parent)

    def _rotated_entries(self) -> list[tuple[Path, tuple[str, int]]]:
        """Rotated files in order, oldest first; a .gz hides a plain twin a crash left."""
        found: dict[tuple[str, int], Path] = {}
        try:
            names = os.listdir(self.path.parent)
        except FileNotFoundError:
            return []
        for name in names:
            m = self._rotated_re.fullmatch(name)
            if m:
                key = (m.group(1), int(m.group(2) or 0))
                if key not in found or name.endswith(".gz"):
                    found[key] = self.path.with_name(name)
        return [(found[k], k) for k in sorted(found)]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_json(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, set | frozenset | tuple):
        return sorted(value) if isinstance(value, set | frozenset) else list(value)
    raise TypeError(f"journal field of type {type(value).__name__} is not JSON")


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _parse(raw: bytes, path: Path, line: int | None, offset: int | None, on_bad: OnBad) -> dict | None:
    if not raw.endswith(b"\n"):
        on_bad(BadLine(path, line, offset, "torn line (no newline at the end; a write was cut short)"))
        return None
    if not raw.strip():
        return None
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        on_bad(BadLine(path, line, offset, f"not JSON ({e})"))
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("op"), str):
        on_bad(BadLine(path, line, offset, "not a journal entry (expected an object with an 'op')"))
        return None
    return entry


def _read_entries(path: Path, f: IO[bytes], limit: int | None, on_bad: OnBad) -> Iterator[dict]:
    """Entries of one file: gzipped when `limit` is None, else plain and read up to `limit` bytes."""
    stream: IO[bytes] = gzip.GzipFile(fileobj=f) if limit is None else f
    offset, number = 0, 0
    try:
        while True:
            raw = stream.readline() if limit is None else stream.readline(limit - offset)
            if not raw:
                return
            number += 1
            entry = _parse(raw, path, number, offset, on_bad)
            offset += len(raw)
            if entry is not None:
                yield entry
    except (OSError, EOFError) as e:  # a damaged .gz: report, keep going with the next file
        on_bad(BadLine(path, number + 1, offset, f"unreadable from here on ({e})"))


def _lines_backward(f: IO[bytes], size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) pairs of the first `size` bytes of f, last line first, by blocks from the end."""
    pos, rest = size, b""
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step) + rest
        cut = (block.find(b"\n") + 1) if pos > 0 else 0  # before `cut`: a line begun further back
        if pos > 0 and cut == 0:
            rest = block
            continue
        rest = block[:cut]
        offset = pos + len(block)
        for raw in reversed(block[cut:].splitlines(keepends=True)):
            offset -= len(raw)
            yield offset, raw


def _tail_entries(path: Path, f: IO[bytes], size: int, n: int, on_bad: OnBad) -> list[dict]:
    """The last n entries of a plain file of `size` bytes, oldest first."""
    entries: list[dict] = []
    for offset, raw in _lines_backward(f, size):
        entry = _parse(raw, path, None, offset, on_bad)
        if entry is not None:
            entries.append(entry)
            if len(entries) == n:
                break
    entries.reverse()
    return entries


def read_entries_from(path: Path | str, on_bad: OnBad | None = None) -> Iterator[dict]:
    """Entries of one journal file, plain or .gz (for tools looking at a single rotated file)."""
    path = Path(path)
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        yield from _read_entries(path, f, None if gzipped else os.fstat(f.fileno()).st_size, on_bad or _warn)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "JOURNAL_DIR",
    "JOURNAL_NAME",
    "BadLine",
    "Journal",
    "OpenIntent",
    "Transaction",
    "read_entries_from",
]

