"""What every split shares: options and results, gates, names, shard and side files, inputs.

- `SplitOptions` (how to cut, check and format) and `SplitResult`; the gates a finished
  run must pass before its manifest says complete (`refuse_unless_gates_pass`).
- Names: `shard_name`, `input_stems`, and the checks that no side file can take a shard's name.
- `ShardFile` / `ParquetShardFile`: a shard written under a temp name in OUT and committed
  atomically (fsync, rename without replacing, fsync the folder), hashed as written;
  `RejectsFile`: a side file appended under a partial name, published at the end.
- Inputs: `open_input` (JSONL plain, .gz, .zst, stdin, URLs, or Parquet read as JSONL
  lines), `check_run_inputs`, `holds_json_array`, `count_records`.
- `run_staged`: the object-store publisher (a run written into a local staging folder,
  then published object by object, manifest last).

The driver that uses them is `run.Run`.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import stat
import string
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shardkit.core import faults
from shardkit.core.blocks import BLOCK_SIZE, NL, BlockReader, nonblank_runs
from shardkit.core.errors import ConflictError, DataError, InputError, UsageError
from shardkit.core.io import (
    BackgroundHasher,
    InputSpec,
    InputStream,
    commit_file,
    create_temp,
    env_error,
    fsync_dir,
    inspect_input,
    rename_noreplace,
    start_writeback,
    write_all,
)
from shardkit.core.jsonarray import is_json_array
from shardkit.records.check import CheckOptions, Checks, auto_jobs
from shardkit.records.validate import Report
from shardkit.store.manifest import (
    MANIFEST_NAME,
    SUMS_NAME,
    check_rel_name,
    scan_file,
)
from shardkit.store.outdir import (
    rejects_outside,
    unlink_if_exists,
)

OVERSIZE_POLICIES = ("own-shard", "reject", "error")
DEFAULT_NAME = "{stem}-{index:05d}.jsonl"
DEFAULT_PARQUET_NAME = "{stem}-{index:05d}.parquet"
FORMATS = ("jsonl", "parquet")
DEFAULT_REJECTS = "rejects.jsonl"
PARTIAL_PREFIX = ".shardkit-partial-"

Progress = Callable[[int], None]
Warn = Callable[[str], None]


# ---------------------------------------------------------------- options and results


@dataclass(frozen=True, kw_only=True)
class SplitOptions:
    """What to cut and how. Checked at construction; `params()` goes into the manifest."""

    max_records: int | None = None
    max_bytes: int | None = None
    num_shards: int | None = None
    oversize: str = "own-shard"
    name: str = DEFAULT_NAME
    rejects: str = DEFAULT_REJECTS
    block_size: int = BLOCK_SIZE
    check: CheckOptions | None = None  # --validate: invalid records go to the rejects file
    format: str = "jsonl"  # or "parquet"
    parquet: Any = None  # parquet.ParquetOptions when format is parquet
    allow_empty: bool = False  # a run that writes no record is refused unless this (not in params)
    # quality gates (not in params): more rejected records than this, or a larger share of
    # the records read, and the run is refused (exit 1, manifest left incomplete)
    max_errors: int | None = None
    max_reject_ratio: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (
            ("--max-records", self.max_records),
            ("--max-bytes", self.max_bytes),
            ("--num-shards", self.num_shards),
        ):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1 (got {value})")
        if self.max_records is None and self.max_bytes is None and self.num_shards is None:
            raise UsageError("say how to cut: give --max-records N, --max-bytes SIZE or --num-shards N")
        if self.num_shards is not None and (self.max_records is not None or self.max_bytes is not None):
            raise UsageError("--num-shards makes exactly N shards: give it alone, without --max-records or --max-bytes "
                             "(which would make more)")
        if self.oversize not in OVERSIZE_POLICIES:
            raise UsageError(f"--oversize must be one of {', '.join(OVERSIZE_POLICIES)} (got {self.oversize!r})")
        if self.max_errors is not None and self.max_errors < 0:
            raise UsageError(f"--max-errors must be 0 or more (got {self.max_errors})")
        if self.max_reject_ratio is not None and not 0 <= self.max_reject_ratio <= 1:
            raise UsageError(f"--max-reject-ratio must be a fraction from 0 to 1 (got {self.max_reject_ratio})")
        if self.block_size < 1:
            raise UsageError("block size must be positive")
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {self.format!r})")
        if self.format == "parquet":
            if self.parquet is None:
                from shardkit.pipeline.parquet import ParquetOptions

                object.__setattr__(self, "parquet", ParquetOptions())
            if self.name == DEFAULT_NAME:
                object.__setattr__(self, "name", DEFAULT_PARQUET_NAME)
            if self.oversize == "reject":
                raise UsageError("--oversize reject needs --format jsonl (a Parquet shard's size is known only once written)")
        elif self.parquet is not None:
            raise UsageError("Parquet options (--row-group-bytes, --schema-from, --on-conflict) need --format parquet")
        shard_name(self.name, "x", 0)  # fails early on a bad template
        if not rejects_outside(self.rejects) and self.rejects in (MANIFEST_NAME, SUMS_NAME):
            raise UsageError(f"--rejects {self.rejects!r}: that name is the run's own {self.rejects}; choose another name")
        if "{index" not in self.name:
            raise UsageError(f"--name {self.name!r} must contain {{index}} so shard names differ")

    def params(self) -> dict:
        return {
            "max_records": self.max_records,
            "max_bytes": self.max_bytes,
            "num_shards": self.num_shards,
            "oversize": self.oversize,
            "format": self.format,
            "compression": self.parquet.compression if self.parquet else None,
            "name": self.name,
            "validate": self.check.params() if self.check else None,
            **({"parquet": self.parquet.params()} if self.parquet else {}),
        }


@dataclass
class SplitResult:
    """What a split did (or, with dry_run, would do)."""

    out: Path
    manifest: dict
    dry_run: bool = False
    resumed: bool = False
    already_complete: bool = False
    warnings: list[str] = field(default_factory=list)
    removed_temps: list[str] = field(default_factory=list)
    validation: Report | None = None  # with --validate: what this run checked

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    def summary(self) -> dict:
        m = self.manifest
        return {
            "out": str(self.out),
            "manifest": f"{str(self.out).rstrip('/')}/{MANIFEST_NAME}",
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "complete": m["complete"],
            "counts": m["counts"],
            "totals": m["totals"],
            "files": [
                {k: f.get(k) for k in ("path", "split", "records", "bytes", "sha256", "first_line", "last_line")
                 if k in f}
                for f in m["files"]
            ],
            "rejects": m["rejects"],
            **{k: m[k] for k in ("duplicates", "excluded", "near_duplicates", "contaminated") if k in m},
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "warnings": self.warnings,
        }


class GateError(DataError):
    """A finished run that must not be published as complete (e.g. it wrote no record)."""


def gate_failure(counts: dict, options: SplitOptions) -> str | None:
    """Why a finished run must not be published as complete, or None. Checked by every
    driver just before it writes the complete manifest; the manifest then stays
    `"complete": false` with this reason as `"failed"`, so a trainer that reads only
    complete manifests never sees the output."""
    rejected, records = counts["rejected"], counts["read"] - counts["blank"]
    if options.max_errors is not None and rejected > options.max_errors:
        return (f"{rejected} record(s) rejected, more than --max-errors {options.max_errors} "
                "(see the rejects file for each one's file:line and reason)")
    if options.max_reject_ratio is not None and records and rejected / records > options.max_reject_ratio:
        return (f"{rejected} of {records} record(s) rejected ({rejected / records:.1%}), more than "
                f"--max-reject-ratio {options.max_reject_ratio:g} (see the rejects file for each one's file:line and reason)")
    if counts["written"] == 0 and not options.allow_empty:
        set_aside = {k: v for k, v in counts.items() if k not in ("read", "written", "train", "validation") and v}
        detail = ", ".join(f"{v} {k}" for k, v in set_aside.items()) or "the input is empty"
        return f"no records written ({counts['read']} line(s) read: {detail}); give --allow-empty to accept an empty output"
    return None


def refuse_unless_gates_pass(out: Path, manifest: dict, options: SplitOptions, *, dry_run: bool,
                             write: Callable[[dict], None]) -> None:
    """Raise GateError after writing `manifest` as incomplete, with the reason, if a gate fails."""
    reason = gate_failure(manifest["counts"], options)
    if reason is None:
        return
    manifest["complete"] = False
    manifest["failed"] = reason
    manifest.pop("resume", None)  # nothing to continue: rerun with --overwrite
    if not dry_run:
        write(manifest)
    raise GateError(f"{out}: {reason}")


def shard_quota(total: int | None, num_shards: int | None, cap: int | None) -> Callable[[int], int | None]:
    """Records shard `index` may take: --max-records (`cap`, None: no limit); with
    --num-shards, `total` records cut into N shards balanced by count (the first
    total % N one record larger), each still at most `cap`."""
    if num_shards is None:
        return lambda _index: cap
    q, r = divmod(total, num_shards)
    return lambda index: min(q + (index < r), cap) if cap else q + (index < r)


def shard_name(template: str, stem: str, index: int) -> str:
    """Format a shard name; reject templates that escape the output folder."""
    try:
        name = template.format(stem=stem, index=index)
    except Exception as e:  # any format error (KeyError, TypeError, AttributeError...) is a usage error
        raise UsageError(
            f"--name {template!r}: {e.__class__.__name__}: {e} (fields: {{stem}}, {{index}})"
        ) from None
    return check_rel_name(name)


_STEM_SUFFIXES = re.compile(r"(\.(jsonl|ndjson|json|txt|parquet))?(\.(gz|zst))?$", re.IGNORECASE)


def input_stems(paths: Sequence[str]) -> list[str]:
    """`data.jsonl.gz` -> `data`; clashing stems get `_2`, `_3`... in input order."""
    stems: list[str] = []
    seen: set[str] = set()
    for p in paths:
        base = "stdin" if p == "-" else _STEM_SUFFIXES.sub("", os.path.basename(p)) or "input"
        stem, k = base, 1
        while stem in seen:
            k += 1
            stem = f"{base}_{k}"
        seen.add(stem)
        stems.append(stem)
    return stems


# ---------------------------------------------------------------- shard files


class ShardFile:
    """A shard being written under a temp name in OUT; `commit` makes it appear whole."""

    WRITEBACK_EVERY = 16 << 20  # bytes written between two early writebacks

    def __init__(self, out: Path, name: str) -> None:
        self.fd, self.tmp = create_temp(out, name)
        self.hasher = BackgroundHasher(lane=1)
        self.final = out / name
        self._unflushed = 0

    def write(self, data) -> None:
        try:
            write_all(self.fd, data)
        except OSError as e:
            raise env_error(e, self.final) from None
        self.hasher.update(data)
        self._unflushed += len(data)
        if self._unflushed >= self.WRITEBACK_EVERY:  # the disk works while we read on: a shorter fsync
            self._unflushed = 0
            start_writeback(self.fd)
        faults.hit("after:shard_write")

    def commit(self, *, adopt_identical: bool) -> str:
        sha = self.hasher.hexdigest()
        faults.hit("before:shard_commit")
        fd, self.fd = self.fd, -1  # commit_file closes it, whatever happens
        try:
            commit_file(fd, self.tmp, self.final, replace=False)
        except ConflictError:
            # A run killed between renaming a shard and rewriting the manifest leaves that
            # shard behind; a resumed run writes the same bytes, so adopt it if identical.
            if (not adopt_identical or not stat.S_ISREG(os.lstat(self.final).st_mode)
                    or scan_file(self.final, None).sha256 != sha):
                os.unlink(self.tmp)
                raise
            os.unlink(self.tmp)
        faults.hit("after:shard_commit")
        return sha

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class ParquetShardFile(ShardFile):
    """A Parquet shard: JSONL lines in, row groups out to the temp file, hashed as written."""

    def __init__(self, out: Path, name: str, schema, options, builder=None, index: int = 0) -> None:
        from shardkit.pipeline.parquet import ParquetShardWriter

        super().__init__(out, name)
        # consecutive shards take turns on two lanes: one's last row groups are encoded
        # while the next one's are parsed and encoded (the splitter keeps at most two open)
        self.writer = ParquetShardWriter(self, schema, options, builder=builder, lane=f"write{index % 2}")
        self.closing = None  # commit_async's future

    WRITEBACK_EVERY = 0  # the sink of ParquetShardWriter: row groups, each written back at once

    def add(self, data, n: int, first_line: int, display: str) -> None:
        self.writer.add_lines(data, n, first_line, display)

    @property
    def estimated_bytes(self) -> int:
        return self.writer.estimated_bytes

    def commit(self, *, adopt_identical: bool) -> str:
        self.writer.close()
        return super().commit(adopt_identical=adopt_identical)

    def commit_async(self, *, adopt_identical: bool):
        """commit() in the background: returns once every record is parsed (errors in the
        data are raised here); the future gives the sha256 once the shard is under its
        final name. Until then, abort() is all one may do with it."""
        from shardkit.pipeline.parquet import thread_lane

        written = self.writer.close_async()

        def commit() -> str:
            written.result()
            return ShardFile.commit(self, adopt_identical=adopt_identical)

        self.closing = thread_lane("commit").submit(commit)
        return self.closing

    def abort(self) -> None:
        closing = self.closing
        if closing is not None:
            # never cut short, or unlink, a file the lanes are finishing and renaming
            try:
                closing.result()
            except BaseException:  # noqa: BLE001 - failed: its temp file is removed below
                pass
            else:
                return  # committed: under its final name, listed or not (resume adopts it)
        self.writer.abort()
        super().abort()


def rejects_target(out: Path, rejects: str) -> Path:
    """Where a run's rejects file goes: OUT/NAME, or PATH (absolute, from the current folder)."""
    if rejects_outside(rejects):
        from shardkit.core import objects

        if objects.is_url(rejects):
            raise UsageError(f"--rejects {rejects!r}: give a local path or a bare name (rejects are written locally)")
        return Path(os.path.abspath(rejects))
    return out / rejects


def rejects_entry_path(out: Path, final: Path) -> str:
    """How the manifest names the rejects file: its name inside OUT, or its absolute path
    outside (then it is not in SHA256SUMS, and --overwrite never deletes it)."""
    return final.name if final.parent == out else str(final)


def check_rejects_path(rejects: str, *, resume: bool) -> None:
    """A rejects file outside OUT must not exist yet (exit 4) and its folder must (exit 3)."""
    if not rejects_outside(rejects):
        return
    target = rejects_target(Path("."), rejects)
    if not target.parent.is_dir():
        raise InputError(f"--rejects {rejects}: no such folder {target.parent}")
    if target.exists() and not resume:
        raise ConflictError(f"--rejects {rejects}: already exists; shardkit never replaces a file outside OUT "
                            "(choose a new path, or remove it)")


class RejectsFile:
    """Rejected records, appended to a partial file and published at the end of the run.

    Its committed length is part of every checkpoint; a resumed run truncates the file
    back to it, so no reject is written twice.
    """

    def __init__(self, final: Path, dry_run: bool, entry_path: str | None = None) -> None:
        self.final = final
        self.entry_path = entry_path or final.name  # how the manifest names it
        self.partial = final.parent / f"{PARTIAL_PREFIX}{final.name}"
        self.dry_run = dry_run
        self.records = 0
        self.bytes = 0
        self._fd = -1
        self._synced = 0

    def restore(self, records: int, size: int) -> None:
        self.records, self.bytes, self._synced = records, size, size
        if size == 0:
            unlink_if_exists(self.partial)
            return
        if not self.partial.exists() and self.final.is_file() and self.final.stat().st_size == size:
            return  # published just before the crash; publish() will find it in place
        try:
            fd = os.open(self.partial, os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise DataError(f"{self.partial}: missing; cannot resume (use --overwrite)") from None
        except OSError as e:  # ELOOP: a symlink was put there; never write through it
            raise ConflictError(f"{self.partial}: not a regular file ({e.strerror}); cannot resume") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConflictError(f"{self.partial}: not a regular file; cannot resume")
        try:
            with open(fd, "r+b") as f:
                if os.fstat(f.fileno()).st_size < size:
                    raise DataError(f"{self.partial}: shorter than its checkpoint; cannot resume (use --overwrite)")
                f.truncate(size)
                os.fsync(f.fileno())
        except FileNotFoundError:
            raise DataError(f"{self.partial}: missing; cannot resume (use --overwrite)") from None

    def add(self, record: dict) -> None:
        self.records += 1
        line = orjson.dumps(record) + NL
        self.bytes += len(line)
        if self.dry_run:
            return
        if self._fd < 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            try:
                self._fd = os.open(self.partial, flags, 0o666)
            except OSError as e:
                raise env_error(e, self.partial) from None
        try:
            write_all(self._fd, line)
        except OSError as e:
            raise env_error(e, self.partial) from None

    def sync(self) -> None:
        if self._fd >= 0 and self._synced != self.bytes:
            os.fsync(self._fd)
            self._synced = self.bytes
            faults.hit("after:rejects_write")

    def publish(self) -> dict | None:
        """Move the partial file to its final name; return its manifest entry."""
        if self.records == 0:
            return None
        entry = {"path": self.entry_path, "records": self.records, "bytes": self.bytes}
        if self.dry_run:
            return entry
        self.close()
        if os.path.lexists(self.partial):
            if not stat.S_ISREG(os.lstat(self.partial).st_mode):
                raise ConflictError(f"{self.partial}: not a regular file; refusing to publish it")
            fd = os.open(self.partial, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            rename_noreplace(self.partial, self.final)
            fsync_dir(self.final.parent)
        entry["sha256"] = scan_file(self.final, None).sha256
        return entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def reject_record(source: str, line: int, offset: int, code: str, reason: str, raw: bytes) -> dict:
    """A rejects-file line: where the record was, why, and its original bytes."""
    body = bytes(raw[:-1] if raw.endswith(NL) else raw)
    record = {"source": source, "line": line, "offset": offset, "code": code, "reason": reason}
    try:
        record["raw"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["raw_b64"] = base64.b64encode(body).decode("ascii")
    return record


_JSONL_NAMES = (".jsonl", ".ndjson", ".json", ".txt")


def is_parquet(spec: InputSpec) -> bool:
    """A Parquet input: its first bytes are Parquet's magic, and its name does not say
    JSON Lines (a .jsonl file is split as lines whatever its first bytes)."""
    if spec.is_stdin or spec.compression is not None or spec.path.lower().endswith(_JSONL_NAMES):
        return False
    if spec.remote:
        from shardkit.core.objects import read_head

        return bool(spec.size) and read_head(spec.path, 4) == b"PAR1"
    with open(spec.path, "rb") as f:
        return f.read(4) == b"PAR1"


class _ParquetLines:
    """A Parquet input read as JSONL bytes (`readinto`, like InputStream). `on_raw` sees the
    Parquet file's own bytes, so the manifest's source sha256 is the file's."""

    def __init__(self, spec: InputSpec, on_raw: Callable[[bytes], None] | None = None) -> None:
        from shardkit.pipeline.parquet import parquet_lines

        self.spec = spec
        self._lines = parquet_lines(spec.path)
        self._pending = memoryview(b"")
        self._on_raw = on_raw
        self.raw_bytes = 0

    def readinto(self, view: memoryview) -> int:
        n = 0
        while n < len(view):
            if not self._pending:
                chunk = b"".join(itertools.islice(self._lines, 256))
                if not chunk:
                    break
                self._pending = memoryview(chunk)
            k = min(len(view) - n, len(self._pending))
            view[n : n + k] = self._pending[:k]
            self._pending = self._pending[k:]
            n += k
        self.raw_bytes += n
        return n

    def read(self, size: int) -> bytes:
        buf = bytearray(size)
        return bytes(buf[: self.readinto(memoryview(buf))])

    def __enter__(self) -> _ParquetLines:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None and self._on_raw is not None:
            from shardkit.core.objects import open_read

            with (open_read(self.spec.path) if self.spec.remote else open(self.spec.path, "rb")) as f:
                while chunk := f.read(1 << 20):
                    self._on_raw(chunk)
        self.raw_bytes = self.spec.size or self.raw_bytes


def open_input(spec: InputSpec, on_raw: Callable[[bytes], None] | None = None):
    """An input as a stream of JSONL bytes: JSONL (plain, gzip, zstd, stdin) or Parquet."""
    if is_parquet(spec):
        return _ParquetLines(spec, on_raw)
    return InputStream(spec, on_raw=on_raw)


def count_records(spec: InputSpec, block_size: int = BLOCK_SIZE) -> int:
    """Non-blank lines in an input (a read-only pass, for --num-shards)."""
    if not spec.rereadable:
        raise UsageError("--num-shards needs an input that can be read twice (a file, not stdin)")
    total = 0
    with open_input(spec) as stream:
        for block in BlockReader(stream, block_size):
            total += sum(r.lines for r in nonblank_runs(block)[0])
    return total


# ---------------------------------------------------------------- entry point


def check_run_inputs(inputs, *, resume: bool, overwrite: bool, also: Sequence[str] = (),
                     arrays: bool = False, repeats: bool = False) -> list[InputSpec]:
    """The checks every split-like run makes first: flags that exclude each other, inputs
    that exist and are JSONL (or Parquet; or, with `arrays`, a JSON array), stdin at most
    once (counting `also`)."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite cannot be used together")
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise UsageError("give at least one input file (or - for stdin)")
    if (paths + list(also)).count("-") > 1:
        raise UsageError("stdin (-) can be given only once")
    specs = [inspect_input(p) for p in paths]
    if not repeats:  # a run that writes records; head and sample only print
        _refuse_repeats(specs)
    if not arrays:
        for spec in specs:
            _refuse_json_array(spec)
    return specs


def _refuse_repeats(specs: Sequence[InputSpec]) -> None:
    """The same file given twice would write every record twice."""
    seen: dict[tuple, str] = {}
    for spec in specs:
        if spec.is_stdin:
            continue
        if spec.remote:
            key: tuple = ("url", spec.path)
        else:
            st = os.stat(spec.path)
            key = (st.st_dev, st.st_ino)
        if key in seen:
            raise UsageError(f"{spec.display}: given twice (as {seen[key]}): every record would be written twice; "
                             "give each input once (shardkit mix repeats sources on purpose)")
        seen[key] = spec.display


def start_checks(stack: ExitStack, check: CheckOptions | None, specs: list[InputSpec], jobs: int | None) -> Checks | None:
    """The validator for a run (None without --validate), its workers started now, before
    this process runs any thread (so they can be forked), and stopped with `stack`."""
    if check is None:
        return None
    if jobs is None:
        sizes = [s.size for s in specs]
        jobs = auto_jobs(None if None in sizes else sum(sizes))
    checks = stack.enter_context(Checks(check, jobs))
    checks.start()
    return checks


def collecting_warn(warnings: list[str], warn: Warn | None) -> Warn:
    """A warn callback that keeps every warning (for the result) and passes it on."""

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn:
            warn(msg)

    return _warn


def run_staged(url: str, staging, *, resume: bool, overwrite: bool, dry_run: bool,
               same_run: Callable[[dict], None], run: Callable[[Path], SplitResult]) -> SplitResult:
    """The object-store publisher, for every driver: `run(stage)` writes the run into a local
    staging folder, which is then published to `url` object by object, manifest last.

    Killed at any point, a rerun with --resume continues: the staged run resumes as any local
    run does, and the publish keeps each object already uploaded (checked by sha256)."""
    from shardkit.store import remote

    stage = remote.staging_dir(url, staging)
    old = remote.check_destination(url, stage, resume=resume, overwrite=overwrite)
    if old is not None and not overwrite:  # --resume, and the run there is complete
        same_run(old)
        return SplitResult(out=url, manifest=old, already_complete=True)  # type: ignore[arg-type]
    result = run(stage)
    result.out = url  # type: ignore[assignment]
    if dry_run:
        return result
    result.already_complete = False  # complete in staging: published now
    if overwrite and old is not None:
        remote.replace_run(url, stage, old)
    remote.publish(stage, url)
    remote.remove_staging(stage, result.manifest)
    return result


def source_path(spec: InputSpec, out: Path | None) -> str:
    """How a manifest names an input: "-", its URL, its path relative to the manifest's
    folder `out`, or (`out` None: the manifest goes to an object store) its absolute path."""
    if spec.is_stdin:
        return "-"
    if spec.remote:
        return spec.path
    if out is None:
        return os.path.abspath(spec.path)
    return os.path.relpath(os.path.abspath(spec.path), os.path.abspath(out))


def shard_name_pattern(template: str, stem: str, splits: Sequence[str] = ()) -> re.Pattern:
    """A regex matching every name `template` gives for `stem`, whatever the index."""
    parts = []
    for literal, key, _spec, _conv in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if key is None:
            continue
        if key == "stem":
            parts.append(re.escape(stem))
        elif key == "split":
            parts.append("(?:" + "|".join(map(re.escape, splits or ("train",))) + ")")
        elif key in ("index", "total"):
            parts.append(r"\s*[0-9]+")
        else:
            parts.append(".*")
    return re.compile("".join(parts))


def refuse_side_name_clashes(template: str, stems: Sequence[str], splits: Sequence[str], sides: dict[str, str]) -> None:
    """A side file (rejects, duplicates, excluded) must never take a name a shard of the run
    could take, nor the manifest's or the sums': refused before anything is written."""
    for flag, name in sides.items():
        if name in (MANIFEST_NAME, SUMS_NAME):
            raise UsageError(f"{flag} {name!r}: that name is the run's own {name}; choose another name")
        for stem in stems:
            if shard_name_pattern(template, stem, splits).fullmatch(name):
                raise UsageError(f"{flag} {name!r}: a shard of this run could take that name (--name {template!r}); "
                                 "choose another name")


def holds_json_array(spec: InputSpec) -> bool:
    """A `.json` (`.json.gz`, `.json.zst`) input whose content is one JSON array."""
    if spec.is_stdin or not spec.path.lower().endswith((".json", ".json.gz", ".json.zst")):
        return False
    with InputStream(spec) as stream:
        head = stream.read(4096)
    return is_json_array(spec.path, head)


def _refuse_json_array(spec: InputSpec) -> None:
    """The byte-streaming splitter copies JSON Lines; a file holding one JSON array goes
    through the record pipeline instead (`shardkit.split` routes it there)."""
    if holds_json_array(spec):
        raise UsageError(
            f"{spec.display}: holds one JSON array, not JSON Lines; this splitter copies JSONL "
            "byte for byte (shardkit.split reads arrays through the record pipeline)"
        )
