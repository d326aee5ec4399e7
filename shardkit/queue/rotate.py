"""Keep status and log folders from growing without bound: compress or delete old files.

`rotate(DIR, older_than=..., max_bytes=..., compress=..., delete=..., yes=...)` looks at the
regular files directly in DIR (not recursive; dotfiles and symlinks are never touched) and

- compresses the selected ones to NAME.gz: temp file in DIR, fsync, verified by reading it
  back, renamed without replacing, folder fsynced, mtime and mode kept; the original is
  removed only after that;
- deletes the selected ones, but only with `yes=True` (otherwise the result is a plan).

A file is selected when its mtime is older than `older_than`, or, with `max_bytes`, when it
is among the oldest files beyond the newest ones whose sizes (as on disk when rotate starts)
fit in `max_bytes`. With both `compress` and `delete`, `older_than` picks what is compressed
and `max_bytes` what is deleted (the logrotate idiom: compress old logs, cap the folder).

`gzip_file()` is also how the queue journal compresses its rotated files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shardkit.core.errors import ConflictError, InputError, UsageError
from shardkit.core.io import TMP_PREFIX, commit_file, create_temp, env_error, fsync_dir, pid_alive

if TYPE_CHECKING:
    from shardkit.queue.journal import Journal

BLOCK = 1 << 20
# Recompressing these gains nothing; they are counted against max_bytes but never compressed.
COMPRESSED_SUFFIXES = (".gz", ".zst", ".xz", ".bz2")
_OUR_TEMP = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-\d+-.+\.gz$")


# ---------------------------------------------------------------- compressing one file


def gzip_file(src: Path, dst: Path) -> tuple[os.stat_result, int]:
    """Compress `src` to a new file `dst` (never replacing it); leave `src` in place.

    Written to a temp file beside `dst`, read back and compared (sha256) with what was read,
    fsynced, renamed without replacing, folder fsynced. `dst` keeps the mode and the
    mtime of `src`. Raises ConflictError if `dst` exists or `src` changed while being read
    (a log still being written). Returns (the stat of `src` that was compressed, bytes of `dst`).
    """
    src, dst = Path(src), Path(dst)
    try:
        in_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise _open_error(e, src) from None
    try:
        before = os.fstat(in_fd)
        if not stat.S_ISREG(before.st_mode):
            raise InputError(f"{src}: not a regular file; not compressing it")
        fd, tmp = create_temp(dst.parent, dst.name)
        try:
            digest = _write_gzip(in_fd, fd, src.name, before)
            after = os.fstat(in_fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise ConflictError(f"{src}: changed while being compressed (still written to?); left as is")
            if _gunzip_digest(tmp) != digest:
                raise InputError(f"{tmp}: compressed copy does not read back the same; {src} left as is")
            os.fchmod(fd, stat.S_IMODE(before.st_mode))
            os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        try:
            commit_file(fd, tmp, dst, replace=False)  # closes fd
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return before, size
    except OSError as e:
        raise env_error(e, src) from None
    finally:
        os.close(in_fd)


def _write_gzip(in_fd: int, out_fd: int, name: str, st: os.stat_result) -> str:
    """Stream in_fd through gzip into out_fd; return the sha256 of what was read."""
    h = hashlib.sha256()
    with open(out_fd, "wb", closefd=False) as raw:
        with gzip.GzipFile(filename=name, mode="wb", fileobj=raw, mtime=int(st.st_mtime)) as gz:
            while block := os.read(in_fd, BLOCK):
                h.update(block)
                gz.write(block)
    return h.hexdigest()


def _gunzip_digest(path: Path) -> str:
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class RotateAction:
    """One file rotate acts on, planned or done."""

    name: str
    action: str  # "compress" | "delete"
    bytes_before: int
    bytes_after: int | None  # None: compress not done yet (size unknown); 0 for a delete
    mtime: float
    status: str = "planned"  # "planned" | "done" | "skipped"
    reason: str | None = None  # why it was selected, or why it was skipped

    def to_dict(self) -> dict:
        return {
            "name": self.name, "action": self.action, "status": self.status,
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "mtime": self.mtime, "reason": self.reason,
        }


@dataclass(slots=True)
class RotateResult:
    """What rotate planned (`applied` False) or did (`applied` True)."""

    directory: Path
    actions: list[RotateAction]
    kept: int  # files left alone
    kept_bytes: int
    applied: bool
    why_not_applied: str | None = None  # "dry run", "delete needs yes=True"
    removed_temps: list[str] = field(default_factory=list)  # leftovers of a killed rotate

    @property
    def bytes_freed(self) -> int:
        return sum(
            a.bytes_before - (a.bytes_after or 0)
            for a in self.actions if a.status == "done"
        )

    @property
    def skipped(self) -> list[RotateAction]:
        return [a for a in self.actions if a.status == "skipped"]

    def to_dict(self) -> dict:
        return {
            "directory": str(self.directory),
            "applied": self.applied,
            "why_not_applied": self.why_not_applied,
            "actions": [a.to_dict() for a in self.actions],
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "bytes_freed": self.bytes_freed,
            "removed_temps": self.removed_temps,
        }


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    size: int
    mtime: float
    mtime_ns: int
    ino: int


def _list_files(directory: Path) -> list[_File]:
    files = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    files.append(_File(entry.name, st.st_size, st.st_mtime, st.st_mtime_ns, st.st_ino))
    except OSError as e:
        raise env_error(e, directory) from None
    # newest first; the name breaks ties so the plan is the same on every run
    files.sort(key=lambda f: (-f.mtime_ns, f.name))
    return files


def _beyond_cap(files: list[_File], max_bytes: int) -> set[str]:
    """Names of the oldest files past the newest ones that fit in max_bytes together."""
    total = 0
    for i, f in enumerate(files):
        total += f.size
        if total > max_bytes:
            return {g.name for g in files[i:]}
    return set()


def plan(
    directory: Path, *, older_than: float | None, max_bytes: int | None,
    compress: bool, delete: bool, now: float,
) -> tuple[list[RotateAction], list[_File]]:
    """Decide what to do with each file; touch nothing. Returns (actions, files kept)."""
    files = _list_files(directory)
    old = set() if older_than is None else {f.name for f in files if now - f.mtime > older_than}
    over = set() if max_bytes is None else _beyond_cap(files, max_bytes)
    if compress and delete:
        to_delete, to_compress = over, old - over
    elif delete:
        to_delete, to_compress = old | over, set()
    else:
        to_delete, to_compress = set(), old | over
    actions, kept = [], []
    for f in reversed(files):  # oldest first
        if f.name in to_delete:
            actions.append(RotateAction(f.name, "delete", f.size, 0, f.mtime, reason=_why(f.name, old, over)))
        elif f.name in to_compress and not f.name.endswith(COMPRESSED_SUFFIXES):
            actions.append(RotateAction(f.name, "compress", f.size, None, f.mtime, reason=_why(f.name, old, over)))
        else:
            kept.append(f)
    return actions, kept


def _why(name: str, old: set[str], over: set[str]) -> str:
    reasons = []
    if name in old:
        reasons.append("older than --older-than")
    if name in over:
        reasons.append("beyond --max-bytes")
    return " and ".join(reasons)


# ---------------------------------------------------------------- rotate


def rotate(
    directory: Path | str,
    older_than: float | None = None,
    max_bytes: int | None = None,
    compress: bool = False,
    delete: bool = False,
    yes: bool = False,
    dry_run: bool = False,
    now: float | None = None,
    journal: Journal | None = None,
) -> RotateResult:
    """Compress and/or delete old files in a status or log folder (see the module docstring).

    `older_than` is in seconds (settings.parse_duration turns "7d" into one), `max_bytes` in
    bytes (io.parse_size), `now` an epoch time (default: the clock). Nothing changes with
    `dry_run`, nor when `delete` is asked without `yes`: the result is then the plan. Every
    compression and deletion is journaled when a journal is given, in one transaction.
    Raises UsageError for options that select or do nothing, InputError if DIR is not a
    folder, ConflictError if another rotate is working on DIR.
    """
    directory = Path(directory)
    _check_options(older_than, max_bytes, compress, delete)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such folder" if not directory.exists() else f"{directory}: not a folder")
    now = time.time() if now is None else now
    why_not = "dry run" if dry_run else ("delete needs --yes" if delete and not yes else None)
    if why_not:
        actions, kept = plan(directory, older_than=older_than, max_bytes=max_bytes,
                             compress=compress, delete=delete, now=now)
        return RotateResult(directory, actions, len(kept), sum(f.size for f in kept), applied=False,
                            why_not_applied=why_not)
    with _dir_lock(directory):
        removed = _remove_dead_temps(directory)
        actions, kept = plan(directory, older_than=older_than, max_bytes=max_bytes,
                             compress=compress, delete=delete, now=now)
        done = _apply(directory, actions, journal, older_than=older_than, max_bytes=max_bytes)
    return RotateResult(directory, done, len(kept), sum(f.size for f in kept), applied=True,
                        removed_temps=removed)


def _check_options(older_than, max_bytes, compress, delete) -> None:
    if not compress and not delete:
        raise UsageError("nothing to do: give --compress and/or --delete")
    if older_than is None and max_bytes is None:
        raise UsageError("nothing selected: give --older-than DURATION and/or --max-bytes SIZE")
    if compress and delete and (older_than is None or max_bytes is None):
        raise UsageError(
            "--compress with --delete: --older-than picks what to compress and --max-bytes "
            "what to delete; give both (or only one of --compress/--delete)"
        )
    if older_than is not None and older_than < 0:
        raise UsageError(f"--older-than must not be negative (got {older_than})")
    if max_bytes is not None and max_bytes < 0:
        raise UsageError(f"--max-bytes must not be negative (got {max_bytes})")


def _apply(directory: Path, actions: list[RotateAction], journal: Journal | None, **params) -> list[RotateAction]:
    if not actions:
        return []
    tx = (
        journal.transaction("rotate", dir=str(directory), files=len(actions), **params)
        if journal is not None else contextlib.nullcontext()
    )
    done = []
    with tx as t:
        for a in actions:
            fn = _compress_one if a.action == "compress" else _delete_one
            done.append(fn(directory, a, t))
        if any(a.action == "delete" and a.status == "done" for a in done):
            fsync_dir(directory)
    return done


def _still_planned(path: Path, a: RotateAction) -> str | None:
    """Why the file is no longer the one planned (None: it still is)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "vanished before it was rotated"
    if not stat.S_ISREG(st.st_mode):
        return "no longer a regular file"
    if st.st_size != a.bytes_before or st.st_mtime != a.mtime:
        return "changed since it was planned (still written to?)"
    return None


def _compress_one(directory: Path, a: RotateAction, tx) -> RotateAction:
    src, dst = directory / a.name, directory / (a.name + ".gz")
    if why := _still_planned(src, a):
        return _skip(a, why)
    if os.path.lexists(dst):
        if not _same_content(src, dst):
            return _skip(a, f"{dst.name} already exists; not replacing it")
        # a rotate killed between committing the .gz and removing the original: finish it
        st, size = os.lstat(src), os.lstat(dst).st_size
    else:
        try:
            st, size = gzip_file(src, dst)
        except ConflictError as e:
            return _skip(a, str(e))
    if tx is not None:  # the move is journaled once the .gz is durable, before the original goes
        tx.step("rotate-compress", name=a.name, to=dst.name, bytes=a.bytes_before, bytes_after=size)
    # the original goes only if it is still the file that was compressed
    if _unlink_if_same(src, st):
        fsync_dir(directory)
        return _done(a, size)
    if tx is not None:
        tx.step("rotate-error", name=a.name, reason="changed after compression; original kept")
    return _skip(a, f"changed after compression; original kept beside {dst.name}")


def _delete_one(directory: Path, a: RotateAction, tx) -> RotateAction:
    path = directory / a.name
    if why := _still_planned(path, a):
        return _skip(a, why)
    if tx is not None:  # write-ahead: a deletion is never missing from the journal
        tx.step("rotate-delete", name=a.name, bytes=a.bytes_before, mtime=a.mtime)
    try:
        os.unlink(path)
    except OSError as e:
        if tx is not None:
            tx.step("rotate-error", name=a.name, reason=f"delete failed: {e.strerror}")
        if e.errno == errno.ENOENT:
            return _skip(a, "vanished before it was deleted")
        raise env_error(e, path) from None
    return _done(a, 0)


def _same_content(src: Path, gz: Path) -> bool:
    """Is `gz` a regular gzip file holding exactly what `src` holds?"""
    try:
        if not stat.S_ISREG(os.lstat(gz).st_mode):
            return False
        h = hashlib.sha256()
        with open(os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), "rb") as f:
            while block := f.read(BLOCK):
                h.update(block)
        return _gunzip_digest(gz) == h.hexdigest()
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def _unlink_if_same(path: Path, st: os.stat_result) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return True  # someone else removed it; the .gz holds it
    if (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns):
        return False
    os.unlink(path)
    return True


def _skip(a: RotateAction, reason: str) -> RotateAction:
    return RotateAction(a.name, a.action, a.bytes_before, a.bytes_after, a.mtime, "skipped", reason)


def _done(a: RotateAction, size: int) -> RotateAction:
    return RotateAction(a.name, a.action, a.bytes_before, size, a.mtime, "done", a.reason)


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """One rotate at a time per folder (flock on the folder itself; nothing is created in it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(f"{directory}: another rotate is working on this folder; try again later") from None
        yield
    finally:
        os.close(fd)


def _remove_dead_temps(directory: Path) -> list[str]:
    """Temp .gz files left by a rotate that was killed (its pid is gone)."""
    removed = []
    for entry in os.scandir(directory):
        m = _OUR_TEMP.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not pid_alive(int(m.group(1))):
            _unlink_quietly(Path(entry.path))
            removed.append(entry.name)
    return sorted(removed)


def _open_error(e: OSError, path: Path) -> Exception:
    if e.errno == errno.ELOOP:
        return InputError(f"{path}: is a symlink; not following it")
    return env_error(e, path)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["COMPRESSED_SUFFIXES", "RotateAction", "RotateResult", "gzip_file", "plan", "rotate"]
