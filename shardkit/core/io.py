"""I/O primitives every shardkit feature reuses.

One place for each side effect: opening inputs (plain, gzip, zstd, stdin), creating
temporary files that follow the umask, committing them without replacing anything
(DESIGN.md's platform pitfalls), fsyncing directories, parsing sizes, and hashing on a
second core while the first one copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gzip
import hashlib
import io
import os
import re
import shutil
import signal
import stat
import sys
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shardkit.core.errors import ConflictError, InputError, UsageError

TMP_PREFIX = ".shardkit-tmp-"
STDIN = "-"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# ---------------------------------------------------------------- sizes

_UNITS = {
    "": 1, "b": 1,  # "" only reaches _UNITS to be refused with a hint (parse_size)
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int) -> int:
    """Parse `64MB` (10^6), `64MiB` or `64M` (2^20, as coreutils), `1G`, `4096B` into bytes.

    A string without a unit is refused with a hint (`-b 64` meant 64 MB far more often than
    64 bytes); an int (a TOML integer in shardkit.toml) is bytes."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.fullmatch(str(text))
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise UsageError(f"invalid size {text!r} (use e.g. 4096B, 64MB, 64MiB, 1G)")
        if unit == "":
            n = m.group(1)
            raise UsageError(f"invalid size {text!r}: {n} has no unit: did you mean {n}MB? write {n}B for bytes")
        try:
            value = int(float(m.group(1)) * _UNITS[unit])
        except (OverflowError, ValueError):
            raise UsageError(f"invalid size {text!r}: too large") from None
    if value <= 0:
        raise UsageError(f"invalid size {text!r}: must be greater than 0")
    return value


def format_size(n: int) -> str:
    """Human size with binary units: 1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class InputSpec:
    """An input as the user named it, checked to exist and be readable."""

    path: str  # as given; "-" for stdin
    display: str  # what messages call it
    size: int | None  # bytes on disk; None for stdin
    compression: str | None  # None, "gzip" or "zstd"
    remote: bool = False  # an object-store URL (see remote.py), read through fsspec

    @property
    def is_stdin(self) -> bool:
        return self.path == STDIN

    @property
    def rereadable(self) -> bool:
        """Can be read again from the start (needed by --num-shards, --resume)."""
        return not self.is_stdin


def inspect_input(path: str) -> InputSpec:
    """Check that an input exists and is a readable regular file; sniff its compression."""
    if path == STDIN:
        return InputSpec(STDIN, "<stdin>", None, None)
    from shardkit.core import objects

    if objects.is_url(path):
        meta = objects.info(path)
        if meta is None:
            raise InputError(f"{path}: no such object")
        if meta.get("type") == "directory":
            raise InputError(f"{path}: is a prefix (folder), expected a JSONL object")
        size = meta.get("size")
        head = objects.read_head(path, 4) if size else b""  # a ranged GET of an empty object is a 416
        return InputSpec(path, path, size, sniff_compression(head), remote=True)
    path = objects.local_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, expected a JSONL file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (FIFO, device or socket); refusing to read it")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return InputSpec(path, path, st.st_size, sniff_compression(head))


def sniff_compression(head: bytes) -> str | None:
    """By magic number, not by name: a `.gz` that is really plain text still works."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


class _HashingReader(io.RawIOBase):
    """Raw reader that hashes the bytes as they come off the disk (compressed inputs)."""

    def __init__(self, raw: BinaryIO, on_raw: Callable[[bytes], None]) -> None:
        self._raw = raw
        self._on_raw = on_raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        if n:
            self._on_raw(data)
        return n


class InputStream:
    """A decompressed byte stream over one input, reporting raw bytes to `on_raw`.

    `on_raw` sees the bytes exactly as stored (compressed ones for .gz/.zst), so the
    source sha256 matches what `sha256sum` prints for the file.
    """

    def __init__(self, spec: InputSpec, on_raw: Callable[[bytes], None] | None = None) -> None:
        self.spec = spec
        self.raw_bytes = 0
        self._on_raw_user = on_raw
        try:
            if spec.remote:
                from shardkit.core.objects import open_read

                raw: BinaryIO = open_read(spec.path)
            else:
                raw = sys.stdin.buffer if spec.is_stdin else open(spec.path, "rb")  # noqa: SIM115
        except OSError as e:
            raise InputError(f"{spec.display}: cannot read: {e.strerror}") from None
        self._raw = raw
        compression = spec.compression
        if spec.is_stdin:
            head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
            compression = sniff_compression(head)
        self.compression = compression
        if compression is None:
            self._stream: BinaryIO = raw
            self._direct = True
        else:
            self._direct = False
            hashing = _HashingReader(raw, self._count_raw)
            if compression == "gzip":
                self._stream = gzip.GzipFile(fileobj=io.BufferedReader(hashing, 1 << 20))
            else:
                self._stream = _open_zstd(io.BufferedReader(hashing, 1 << 20))

    @property
    def size_hint(self) -> int | None:
        """Bytes this stream will yield, when known (a plain file; not stdin, not compressed)."""
        return self.spec.size if self._direct and not self.spec.is_stdin else None

    def _count_raw(self, data: bytes) -> None:
        self.raw_bytes += len(data)
        if self._on_raw_user is not None:
            self._on_raw_user(data)

    def read(self, n: int) -> bytes:
        view = memoryview(bytearray(n))
        return bytes(view[: self.readinto(view)])

    def readinto(self, view: memoryview) -> int:
        """Fill `view` with decompressed bytes; 0 at the end. Plain inputs are not copied twice."""
        if self._direct:
            try:
                n = self._stream.readinto(view) or 0
            except OSError as e:
                raise env_error(e, self.spec.display) from None
            if n:
                self._count_raw(view[:n])
            return n
        try:
            data = self._stream.read(len(view))
        except (OSError, EOFError, ValueError, zlib.error) as e:
            raise InputError(f"{self.spec.display}: corrupt {self.compression} data: {e}") from None
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self._direct:
            self._stream.close()
        if not self.spec.is_stdin:
            self._raw.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_zstd(raw: BinaryIO) -> BinaryIO:
    """zstd through pyarrow's codec (imported only when a .zst input is met)."""
    import pyarrow as pa

    return pa.CompressedInputStream(pa.PythonFile(raw, mode="r"), "zstd")


# ---------------------------------------------------------------- atomic output


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until a multi-step commit (rename + manifest) is done.

    The signal stays pending and is delivered on exit, so an interrupt never lands
    between publishing a shard and recording it. (SIGKILL cannot be held; resume copes.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def create_temp(directory: Path, hint: str) -> tuple[int, Path]:
    """Create a new temp file in `directory` (same filesystem as its final name).

    Opened O_EXCL|O_NOFOLLOW with mode 0666 so the umask decides the final mode, as for
    any other file the user creates (mkstemp would give 0600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(100):
        # the hint only helps a person; keep the temp name within NAME_MAX (255 bytes)
        short = hint if len(hint.encode()) <= 160 else hint.encode()[:160].decode("utf-8", "ignore")
        tmp = directory / f"{TMP_PREFIX}{os.getpid()}-{attempt}-{short}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as e:
            raise env_error(e, tmp) from None
    raise ConflictError(f"{directory}: cannot create a temporary file")


def write_all(fd: int, data) -> None:
    """os.write until every byte is out (short writes happen on signals and pipes)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = None


def _renameat2():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # libc is already loaded in this process
    return getattr(_libc, "renameat2", None)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range():
    """libc's sync_file_range, set up on first use, once per function object (a ctypes
    function must not be re-typed while another thread calls it), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing fd's dirty pages now, without waiting (Linux
    sync_file_range): the fsync at commit then waits for less. Nothing elsewhere."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a failure only means the fsync does it all


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst, failing with ConflictError if dst exists (never replacing it).

    renameat2(RENAME_NOREPLACE) where the kernel and filesystem support it, else
    link + unlink (a crash in between leaves both names on one inode: no data lost).
    """
    fn = _renameat2() if sys.platform.startswith("linux") else None
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise ConflictError(f"{dst}: already exists; refusing to replace it")
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise env_error(OSError(err, os.strerror(err)), dst)
    try:
        os.link(src, dst)
    except FileExistsError:
        raise ConflictError(f"{dst}: already exists; refusing to replace it") from None
    except OSError as e:
        raise env_error(e, dst) from None
    try:
        os.unlink(src)
    except FileNotFoundError:
        # another mover of the same file unlinked src between our link and unlink: it won
        # (its own name for the file stays); ours goes, so the file keeps one name
        os.unlink(dst)
        raise ConflictError(f"{src}: moved by another process meanwhile") from None


def commit_file(fd: int, tmp: Path, final: Path, *, replace: bool) -> None:
    """fsync and close fd, move tmp to its final name, fsync the folder."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise env_error(e, final) from None
    finally:
        os.close(fd)
    if replace:
        os.replace(tmp, final)
    else:
        rename_noreplace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write a whole small file (manifest, SHA256SUMS, report) so no reader sees it half done."""
    path = Path(path)
    fd, tmp = create_temp(path.parent, path.name)
    try:
        write_all(fd, data)
        commit_file(fd, tmp, path, replace=replace)
    except OSError as e:
        _unlink_quietly(tmp)
        raise env_error(e, path) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete the temp files an interrupted run left in `directory`; return them."""
    removed = []
    if directory.is_dir():
        for p in sorted(directory.iterdir()):
            if p.name.startswith(TMP_PREFIX) and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
    return removed


def env_error(e: OSError, path: Path | str) -> InputError:
    """Turn an OSError into a one-line error naming the file and what to do."""
    if e.errno == errno.ENOSPC:
        return InputError(f"{path}: no space left on device; free space and rerun with --resume")
    if e.errno == errno.EFBIG:
        return InputError(f"{path}: file too large for this filesystem or limit (EFBIG)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{path}: permission denied")
    if e.errno == errno.EROFS:
        return InputError(f"{path}: read-only filesystem")
    return InputError(f"{path}: {e.strerror or e}")


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


# ---------------------------------------------------------------- hashing off the main thread


def started_pool(name: str, initializer: Callable[[], None] | None = None) -> ThreadPoolExecutor:
    """A one-thread pool whose thread already runs, started with Ctrl-C and SIGTERM held.

    ThreadPoolExecutor starts its thread inside the first submit(); an interrupt landing
    between the thread's start and its registration for shutdown leaves a thread that
    interpreter exit then waits for forever (a Ctrl-C'd split printed its message and
    hung). Starting it here, with the signals held, closes that window."""
    pool = ThreadPoolExecutor(1, name, initializer=initializer)
    with deferred_signals():
        pool.submit(int).result()
    return pool


def _main_thread_gets_signals() -> None:
    """Worker threads never take SIGINT/SIGTERM, so deferred_signals() in the main thread holds them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


class BackgroundHasher:
    """sha256 fed from the main thread, computed on another core.

    hashlib releases the GIL for buffers over 2 KiB, so while the main thread reads and
    writes, worker threads hash. Each hasher is pinned to one of two lanes (one thread
    each), which keeps its updates in order; the source and the shard being written hash
    on different lanes, in parallel. At most `depth` buffers wait, which bounds memory.
    """

    _lanes: list[ThreadPoolExecutor] = []

    def __init__(self, lane: int = 0, depth: int = 4) -> None:
        self._h = hashlib.sha256()
        self._pending: deque[Future] = deque()
        self._depth = depth
        self.thread_lane = lane

    def _executor(self) -> ThreadPoolExecutor:
        lanes = BackgroundHasher._lanes
        while len(lanes) <= self.thread_lane:
            lanes.append(started_pool(f"shardkit-hash{len(lanes)}", _main_thread_gets_signals))
        return lanes[self.thread_lane]

    def update(self, data) -> None:
        if len(data) < 65536:
            self._drain(0)
            self._h.update(data)
            return
        self._pending.append(self._executor().submit(self._h.update, data))
        self._drain(self._depth)

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        self._drain(0)
        return self._h.hexdigest()


def sha256_file(path: Path | str) -> str:
    """sha256 of a local file, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Is process `pid` running? A zombie (killed, not yet reaped by its parent) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
