"""Split pipeline: inputs -> blocks of lines -> runs of records -> shards -> manifest.

Records are copied byte for byte; the shards, concatenated in manifest order, equal the
inputs' non-blank lines. Each shard is committed atomically and the manifest rewritten
(`"complete": false` plus a resume checkpoint) after every shard, so a killed run resumes
from its last committed shard and ends with exactly the files an uninterrupted run writes.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import stat
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from shardkit.core import faults
from shardkit.core.blocks import BLOCK_SIZE, NL, Block, BlockReader, nonblank_runs, nth_line_end
from shardkit.core.errors import ConflictError, DataError, InputError, Interrupted, UsageError
from shardkit.core.io import (
    BackgroundHasher,
    InputSpec,
    InputStream,
    commit_file,
    create_temp,
    deferred_signals,
    env_error,
    fsync_dir,
    inspect_input,
    remove_stale_temps,
    rename_noreplace,
    start_writeback,
    write_all,
)
from shardkit.core.jsonarray import is_json_array
from shardkit.records.check import Bad, CheckOptions, Checks, Verdict, auto_jobs
from shardkit.records.validate import Report
from shardkit.store.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SUMS_NAME,
    check_rel_name,
    now_iso,
    scan_file,
    tool_name,
    totals,
    write_manifest,
)
from shardkit.store.outdir import (
    check_same_run,
    check_same_sizes,
    prepare,
    rejects_outside,
    unlink_if_exists,
)

OVERSIZE_POLICIES = ("own-shard", "reject", "error")
DEFAULT_NAME = "{stem}-{index:05d}.jsonl"
DEFAULT_PARQUET_NAME = "{stem}-{index:05d}.parquet"
FORMATS = ("jsonl", "parquet")
PARQUET_PIECE = 1 << 20  # JSONL bytes fed to a Parquet shard between size checks
# A Parquet run whose schema snapshot grows starts again with the new snapshot this many
# times, while it has committed no shard and wasted at most this many bytes; after that
# it infers the rest of the input first (see Splitter._start_again).
_SNAPSHOT_ATTEMPTS = 8
_SNAPSHOT_BYTES = 64 << 20
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
        if self.oversize not in OVERSIZE_POLICIES:
            raise UsageError(f"--oversize must be one of {', '.join(OVERSIZE_POLICIES)} (got {self.oversize!r})")
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
            **{k: m[k] for k in ("duplicates", "excluded") if k in m},
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

    def __init__(self, out: Path, name: str) -> None:
        self.fd, self.tmp = create_temp(out, name)
        self.hasher = BackgroundHasher(lane=1)
        self.final = out / name

    def write(self, data) -> None:
        try:
            write_all(self.fd, data)
        except OSError as e:
            raise env_error(e, self.final) from None
        self.hasher.update(data)
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

    def write(self, data) -> None:  # the sink of ParquetShardWriter
        super().write(data)
        if self.fd >= 0:
            start_writeback(self.fd)

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


# ---------------------------------------------------------------- the splitter


@dataclass
class _Checkpoint:
    """Where a run stands after its last committed shard: enough to resume exactly there."""

    input: int = 0
    offset: int = 0
    line: int = 1
    records: int = 0
    blank: int = 0
    rejected: int = 0
    next_index: int = 0
    rejects_records: int = 0
    rejects_bytes: int = 0
    # Parquet shards written with a schema that then grew, to delete before going on
    discard: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        if not d["discard"]:
            del d["discard"]  # the usual case: manifests stay as they were
        return d


class _Never(Exception):
    """Raised by nothing (what a JSONL run catches in place of parquet.SchemaChanged)."""


class Splitter:
    def __init__(
        self,
        specs: list[InputSpec],
        out: Path,
        options: SplitOptions,
        *,
        dry_run: bool,
        adopt_identical: bool,
        progress: Progress | None,
        warn: Warn,
        checks: Checks | None = None,
    ) -> None:
        self.specs = specs
        self.checks = checks
        self.report = Report(max_examples=checks.options.examples) if checks else None
        self.invalid = 0
        self.schema = None  # parquet.InferredSchema for --format parquet
        # Parquet in one pass: the schema is a snapshot of what the builder has seen and
        # grows (the run starting again) when records do not fit it; None once it is final
        self.builder = None
        self._closing: tuple | None = None  # the shard being committed: (file, future, entry, checkpoint)
        self._attempts = 0
        self._fed = 0  # bytes given to shards, over all attempts: all wasted if one more is needed
        self._progressed = 0
        self.stems = input_stems([s.path for s in specs])
        self.out = out
        self.opts = options
        self.dry_run = dry_run
        self.adopt_identical = adopt_identical
        self.progress = progress
        self._warn_to = warn
        self._warned: set[str] = set()
        self.files: list[dict] = []
        self.sources: list[dict] = []
        self.cp = _Checkpoint()
        target = rejects_target(out, options.rejects)
        self.rejects = RejectsFile(target, dry_run, rejects_entry_path(out, target))
        self.created_at = now_iso()
        self.oversize_rejected = 0
        self.absolute_sources = False
        # per-input state
        self._i = 0
        self._spec: InputSpec = specs[0] if specs else InputSpec("-", "<stdin>", None, None)
        self._quota: Callable[[int], int | None] = lambda i: None
        self._file: ShardFile | None = None
        self._index = 0
        self._records = 0
        self._bytes = 0
        self._first_line = 0
        self._last_line = 0
        self._read = self._blank = self._rejected = 0

    def warn(self, msg: str) -> None:
        """Pass a warning on, once: a run that starts again (the Parquet schema grew) meets
        the same things twice."""
        if msg not in self._warned:
            self._warned.add(msg)
            self._warn_to(msg)

    # ----- manifest

    def manifest(self, complete: bool) -> dict:
        read = sum(s["records"] + s["blank"] for s in self.sources)
        blank = sum(s["blank"] for s in self.sources)
        rejected = sum(s["rejected"] for s in self.sources)
        if not complete:
            read += self._read + self._blank
            blank += self._blank
            rejected += self._rejected
        written = sum(f["records"] for f in self.files)
        m = {
            "shardkit_manifest": FORMAT_VERSION,
            "type": "shards",
            "complete": complete,
            "created_at": self.created_at,
            "tool": tool_name(),
            "params": self.opts.params(),
            "sources": self.sources if complete else self.sources + self._pending_sources(),
            "files": self.files,
            "rejects": None,
            "counts": {"read": read, "written": written, "rejected": rejected, "blank": blank},
            "totals": totals(self.files),
        }
        if self.schema is not None:
            m["parquet"] = {"json_fields": self.schema.json_fields, "schema": self.schema.to_json()}
            if self.builder is not None and not complete:
                m["parquet"]["inference"] = self.builder.state()  # the schema is still a snapshot
        if not complete:
            m["rejects"] = {"path": self.rejects.entry_path, "records": self.rejects.records}
            m["resume"] = self.cp.to_dict()
        return m

    def _pending_sources(self) -> list[dict]:
        return [
            {"path": self.source_path(s), "bytes": s.size, "sha256": None}
            for s in self.specs[len(self.sources):]
        ]

    def source_path(self, spec: InputSpec) -> str:
        # absolute_sources: the manifest will live elsewhere (an object store)
        return source_path(spec, None if self.absolute_sources else self.out)

    def _save(self, complete: bool = False) -> None:
        if not self.dry_run:
            write_manifest(self.out / MANIFEST_NAME, self.manifest(complete))

    # ----- resume

    def restore(self, old: dict) -> None:
        """Continue from an incomplete manifest written by the same inputs and options."""
        cp = _Checkpoint(**old["resume"])
        self._discard(cp)
        self.cp = cp
        self.created_at = old.get("created_at", self.created_at)
        self.sources = [s for s in old["sources"] if s.get("sha256")][: cp.input]
        self.files = list(old["files"])
        for entry in self.files:
            target = self.out / entry["path"]
            if not target.is_file() or target.stat().st_size != entry["bytes"]:
                raise DataError(
                    f"{target}: listed in the manifest but missing or changed; cannot resume (use --overwrite)"
                )
        self.rejects.restore(cp.rejects_records, cp.rejects_bytes)
        if self.opts.format == "parquet" and old.get("parquet"):
            from shardkit.pipeline.parquet import InferredSchema, SchemaBuilder

            self.schema = InferredSchema.from_json(old["parquet"]["schema"])
            inference = old["parquet"].get("inference")
            if inference is not None:
                self.builder = SchemaBuilder.from_state(inference, self.opts.parquet, warn=self.warn)
                self.schema = self.builder.snapshot()

    def _discard(self, cp: _Checkpoint) -> None:
        """Delete the shards a checkpoint names as written with a schema that grew."""
        if not cp.discard or self.dry_run:
            return
        for name in cp.discard:
            unlink_if_exists(self.out / check_rel_name(name))
        fsync_dir(self.out)
        cp.discard = []

    # ----- the run

    def run(self) -> None:
        if self.opts.format == "parquet":
            from shardkit.pipeline.parquet import SchemaChanged
        else:  # JSONL never imports pyarrow
            SchemaChanged = _Never  # noqa: N806
        if self.opts.format == "parquet" and self.schema is None:
            self._start_schema()
            self._save()  # the schema is part of what --resume needs
        while True:
            try:
                start = self.cp.input
                for i in range(start, len(self.specs)):
                    resuming = i == start and (self.cp.offset > 0 or self.cp.next_index > 0)
                    self._split_input(i, self.cp if resuming else _Checkpoint(input=i))
                break
            except SchemaChanged as e:
                self._start_again(e.schema)
        if self.builder is not None:  # every record fitted the last snapshot: it is final
            final = self.builder.result()  # reports fields that only ever held empty objects
            if not final.same_snapshot(self.schema):
                raise AssertionError("the final schema differs from the one the shards were written with")
            self.schema, self.builder = final, None
        self.rejects.sync()
        with deferred_signals():
            self._finish()

    def _finish(self) -> None:
        entry = self.rejects.publish()
        if self.invalid:
            self.warn(f"{self.invalid} invalid record(s) written to {self.rejects.final.name}")
        if self.oversize_rejected:
            self.warn(
                f"{self.oversize_rejected} record(s) larger than --max-bytes written to {self.rejects.final.name}"
            )
        self.final = self.manifest(complete=True)
        self.final["rejects"] = entry
        refuse_unless_gates_pass(self.out, self.final, self.opts, dry_run=self.dry_run,
                                 write=lambda m: write_manifest(self.out / MANIFEST_NAME, m))
        if not self.dry_run:
            write_manifest(self.out / MANIFEST_NAME, self.final)

    def _split_input(self, i: int, cp: _Checkpoint) -> None:
        self._i = i
        spec = self._spec = self.specs[i]
        self._quota = self._quota_for(spec)
        self._index = cp.next_index
        self._read, self._blank, self._rejected = cp.records, cp.blank, cp.rejected
        self._reset_shard()
        src_hash = BackgroundHasher(lane=0) if not self.dry_run else None
        with open_input(spec, on_raw=src_hash.update if src_hash else None) as stream:
            reader = BlockReader(stream, self.opts.block_size, start_offset=cp.offset, start_line=cp.line)
            seen = stream.raw_bytes
            checked = self.checks.checked(reader, spec.display) if self.checks else ((b, None) for b in reader)
            try:
                for block, verdict in checked:
                    self._feed_block(block, verdict)
                    if self.progress:
                        self.progress(stream.raw_bytes - seen)
                        self._progressed += stream.raw_bytes - seen
                    seen = stream.raw_bytes
            except EOFError:
                raise DataError(f"{spec.display}: shorter than when the run was interrupted; cannot resume (use --overwrite)") from None
            if reader.added_newline:
                self.warn(f"{spec.display}:{reader.line - 1}: no newline at end of file; one was added to the last record")
            self._commit(reader.offset, reader.line)
            self._settle()
            self.sources.append(
                {
                    "path": self.source_path(spec),
                    "bytes": stream.raw_bytes,
                    "sha256": src_hash.hexdigest() if src_hash else None,
                    "records": self._read,
                    "blank": self._blank,
                    "rejected": self._rejected,
                }
            )
        if self._blank:
            self.warn(f"{spec.display}: {self._blank} blank line(s) skipped")
        self.cp = _Checkpoint(input=i + 1, rejects_records=self.rejects.records, rejects_bytes=self.rejects.bytes)
        self._read = self._blank = self._rejected = 0
        faults.hit("after:input_done")
        self._save()

    def _start_schema(self) -> None:
        """The Parquet schema to start with: --schema-from's; or, with no file to check
        records against it (--dry-run), the whole input's (a pass of its own); or a
        snapshot that grows as records need (the run starts again when it does)."""
        from shardkit.pipeline.parquet import SchemaBuilder, schema_from_parquet

        popts = self.opts.parquet
        if popts.schema_from:
            self.schema = schema_from_parquet(popts.schema_from)
            return
        for spec in self.specs:
            if not spec.rereadable:
                raise UsageError("--format parquet may read its input twice (if the schema grows, the run starts "
                                 "again): give a file, not stdin, or give --schema-from FILE.parquet")
        if self.dry_run:
            self.schema = self._infer_schema()
            return
        self.builder = SchemaBuilder(popts, warn=self.warn)
        self._feed_builder(self.builder, _Checkpoint(), limit=popts.parse_chunk_bytes)  # a first guess
        self.schema = self.builder.snapshot()

    def _start_again(self, schema) -> None:
        """Records did not fit the schema snapshot: drop what was written with it and start
        from the first record with the grown one. Early on (nothing committed, little
        read) the new snapshot is used as it is; otherwise the rest of the input is
        inferred first, so that the run starts again at most once more."""
        self._settle()  # listed, then deleted with the others
        if self._file is not None:
            self._file.abort()
            self._file = None
        self._attempts += 1
        if self.files or self._attempts > _SNAPSHOT_ATTEMPTS or self._fed > _SNAPSHOT_BYTES:
            self._feed_builder(self.builder, self.cp)  # the records before cp fitted; go on from there
            self.schema, self.builder = self.builder.result(), None
        else:
            self.schema = schema
        written = [f["path"] for f in self.files]
        self.files, self.sources = [], []
        self.rejects.close()
        self.rejects.restore(0, 0)
        self.invalid = self.oversize_rejected = 0
        if self.report is not None:
            self.report.__init__(max_examples=self.checks.options.examples)
        self._reset_shard()
        self._read = self._blank = self._rejected = 0
        if self.progress and self._progressed:
            self.progress(-self._progressed)
        self._progressed = 0
        self.cp = _Checkpoint(discard=written)
        self._save()  # lists no shard; --resume deletes the ones it names
        faults.hit("after:schema_grew")
        self._discard(self.cp)
        self._save()

    def _infer_schema(self):
        """The schema of every record that will be written, in a pass of its own."""
        from shardkit.pipeline.parquet import SchemaBuilder

        builder = SchemaBuilder(self.opts.parquet, warn=self.warn)
        self._feed_builder(builder, _Checkpoint())
        return builder.result()

    def _feed_builder(self, builder, start: _Checkpoint, limit: int | None = None) -> None:
        """Feed the builder every valid record from `start` (input, offset, line) on, or
        the blocks holding the first `limit` bytes of them."""
        fed = 0
        for i in range(start.input, len(self.specs)):
            spec = self.specs[i]
            offset, line = (start.offset, start.line) if i == start.input else (0, 1)
            with open_input(spec) as stream:
                blocks = BlockReader(stream, self.opts.block_size, start_offset=offset, start_line=line)
                checked = self.checks.checked(blocks, spec.display) if self.checks else ((b, None) for b in blocks)
                for block, verdict in checked:
                    runs, _ = nonblank_runs(block)
                    for s, e, first, n in _valid_pieces(block, runs, verdict.bad if verdict else ()):
                        builder.add_block(memoryview(block.buf)[s:e], first, spec.display, lines=n)
                        fed += e - s
                    if limit is not None and fed >= limit:
                        return

    def _quota_for(self, spec: InputSpec) -> Callable[[int], int | None]:
        n, cap = self.opts.num_shards, self.opts.max_records
        if n is None:
            return lambda i: cap
        total = count_records(spec, self.opts.block_size)
        if 0 < total < n:
            self.warn(f"{spec.display}: only {total} record(s); writing {total} shard(s) instead of {n}")
        q, r = divmod(total, n)
        return lambda i: min(q + (i < r), cap) if cap else q + (i < r)

    def _feed_block(self, block: Block, verdict: Verdict | None = None) -> None:
        runs, trailing = nonblank_runs(block)
        if verdict is not None:
            self.report.merge(verdict.report)
            if verdict.bad:
                self._feed_checked(block, runs, verdict.bad)
                self._blank += trailing
                return
        for run in runs:
            self._blank += run.blanks_before
            self._feed_run(block, run.start, run.end, run.first_line, run.lines)
        self._blank += trailing

    def _feed_checked(self, block: Block, runs: list, bad: list[Bad]) -> None:
        """Runs of records with the invalid ones cut out and sent to the rejects file."""
        for piece in _pieces(block, runs, bad):
            if piece[0] == "run":
                self._blank += piece[1]
            elif piece[0] == "ok":
                self._feed_run(block, *piece[1:])
            else:
                self._reject_invalid(block, piece[1])

    def _reject_invalid(self, block: Block, b: Bad) -> None:
        raw = block.buf[block.start + b.start : block.start + b.end]
        self.rejects.add(reject_record(self._spec.display, b.line, block.offset + b.start, b.code, b.reason, raw))
        self._read += 1
        self._rejected += 1
        self.invalid += 1

    def _feed_run(self, block: Block, pos: int, end: int, line: int, lines: int) -> None:
        if self.opts.format == "parquet":
            self._feed_run_parquet(block, pos, end, line, lines)
            return
        buf = block.buf
        last_line = line + lines  # one past the run's last line
        max_bytes = self.opts.max_bytes
        while pos < end:
            if self._records and self._full():
                self._commit(block.offset + pos - block.start, line)
            cut = end
            if max_bytes is not None and end - pos > max_bytes - self._bytes:
                nl = buf.rfind(NL, pos, pos + max_bytes - self._bytes)
                if nl < 0:
                    if self._records:
                        self._commit(block.offset + pos - block.start, line)
                        continue
                    line_end = buf.find(NL, pos) + 1
                    self._oversize(block, pos, line_end, line)
                    pos, line = line_end, line + 1
                    continue
                cut = nl + 1
            n = last_line - line if cut == end else buf.count(NL, pos, cut)
            room = self._room()
            if room is not None and n > room:
                cut, n = nth_line_end(buf, pos, room), room
            self._write(memoryview(buf)[pos:cut], n, line)
            pos, line = cut, line + n

    def _feed_run_parquet(self, block: Block, pos: int, end: int, line: int, lines: int) -> None:
        """Records in pieces of about PARQUET_PIECE bytes with --max-bytes, checking the
        shard's size between pieces (its on-disk size is known only as row groups are
        written: estimated_bytes); else the whole run, cut only where a shard is full."""
        buf = block.buf
        last_line = line + lines  # one past the run's last line
        piece = PARQUET_PIECE if self.opts.max_bytes is not None else None
        while pos < end:
            if self._records and self._full():
                self._commit(block.offset + pos - block.start, line)
            cut = end
            if piece is not None and end - pos > piece:
                cut = buf.rfind(NL, pos, pos + piece) + 1
                if cut <= pos:
                    cut = buf.find(NL, pos) + 1
            n = last_line - line if cut == end else buf.count(NL, pos, cut)
            room = self._room()
            if room is not None and n > room:
                cut, n = nth_line_end(buf, pos, room), room
            self._write(memoryview(buf)[pos:cut], n, line)
            pos, line = cut, line + n

    def _room(self) -> int | None:
        quota = self._quota(self._index)
        return None if quota is None else quota - self._records

    def _full(self) -> bool:
        room = self._room()
        if room is not None and room <= 0:
            return True
        if self.opts.max_bytes is None:
            return False
        if isinstance(self._file, ParquetShardFile):
            return self._file.estimated_bytes >= self.opts.max_bytes
        return self._bytes >= self.opts.max_bytes

    def _write(self, data: memoryview, n: int, line: int) -> None:
        if not self._records:
            self._first_line = line
            if not self.dry_run:
                if self.opts.format == "parquet":
                    self._file = ParquetShardFile(self.out, self._name(), self.schema, self.opts.parquet,
                                                   self.builder, self._index)
                else:
                    self._file = ShardFile(self.out, self._name())
        if isinstance(self._file, ParquetShardFile):
            self._file.add(data, n, line, self._spec.display)
        elif self._file is not None:
            self._file.write(data)
        self._records += n
        self._bytes += len(data)
        self._fed += len(data)
        self._read += n
        self._last_line = line + n - 1

    def _oversize(self, block: Block, pos: int, line_end: int, line: int) -> None:
        size = line_end - pos
        where = f"{self._spec.display}:{line}"
        limit = self.opts.max_bytes
        if self.opts.oversize == "error":
            raise DataError(
                f"{where}: record is {size} bytes, larger than --max-bytes {limit} "
                "(use --oversize own-shard or --oversize reject)"
            )
        if self.opts.oversize == "reject":
            reason = f"record is {size} bytes, larger than --max-bytes {limit}"
            self.rejects.add(reject_record(self._spec.display, line, block.offset + pos - block.start, "oversize", reason, block.buf[pos:line_end]))
            self._read += 1
            self._rejected += 1
            self.oversize_rejected += 1
            return
        self.warn(f"{where}: record is {size} bytes, larger than --max-bytes {limit}; written to its own shard {self._name()}")
        self._write(memoryview(block.buf)[pos:line_end], 1, line)

    def _name(self) -> str:
        return shard_name(self.opts.name, self.stems[self._i], self._index)

    def _commit(self, offset: int, line: int) -> None:
        """Publish the current shard (if it has records) and checkpoint at (offset, line)."""
        if not self._records:
            return
        with deferred_signals():
            self._commit_held(offset, line)

    def _commit_held(self, offset: int, line: int) -> None:
        """Close the shard, rename it to its final name, then list it in the manifest with
        the checkpoint. A Parquet shard's last row groups, fsync and rename happen in the
        background while the next shard is read; _settle() lists it (before the next
        shard is committed, an input is done, or the run ends)."""
        self._settle()
        parquet = self.opts.format == "parquet"
        entry = {
            "path": self._name(),
            "format": self.opts.format,
            "compression": self.opts.parquet.compression if parquet else None,
            "records": self._records,
            "bytes": self._bytes,
            "sha256": None,
            "source": self.source_path(self._spec),
            "first_line": self._first_line,
            "last_line": self._last_line,
        }
        cp = _Checkpoint(
            input=self._i,
            offset=offset,
            line=line,
            records=self._read,
            blank=self._blank,
            rejected=self._rejected,
            next_index=self._index + 1,
            rejects_records=self.rejects.records,
            rejects_bytes=self.rejects.bytes,
        )
        file = self._file
        if isinstance(file, ParquetShardFile):
            self._closing = (file, file.commit_async(adopt_identical=self.adopt_identical), entry, cp)
        else:
            if file is not None:
                entry["sha256"] = file.commit(adopt_identical=self.adopt_identical)
            self._closing = (None, None, entry, cp)
        self._file = None
        self._index += 1
        self._reset_shard()
        if file is None or not parquet:
            self._settle()

    def _settle(self) -> None:
        """List the shard committed last in the manifest, once it is under its final name."""
        if self._closing is None:
            return
        file, done, entry, cp = self._closing
        self._closing = None
        if file is not None:
            try:
                entry["sha256"] = done.result()
            except BaseException:
                file.abort()
                raise
            entry["bytes"] = file.writer.bytes_written
        with deferred_signals():
            self.files.append(entry)
            self.rejects.sync()
            self.cp = cp
            try:
                self._save()
            except BaseException:
                # the manifest could not list it (disk full...): a shard no manifest lists must not stay
                if entry["sha256"] is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.out / entry["path"])
                    fsync_dir(self.out)
                raise

    def _reset_shard(self) -> None:
        self._records = self._bytes = 0

    def abort(self) -> None:
        if self._closing is not None:
            try:
                self._settle()  # a shard being committed is listed, if it can be
            except BaseException:  # noqa: BLE001 - the run is failing anyway; the file is cleaned up
                pass
        if self._file is not None:
            self._file.abort()
            self._file = None
        self.rejects.close()


def _pieces(block: Block, runs: list, bad) -> Iterator[tuple]:
    """In input order: ("run", blanks_before) per run, ("ok", start, end, first_line, lines)
    for consecutive valid records, ("bad", Bad) for an invalid one."""
    s, k = block.start, 0
    for run in runs:
        yield ("run", run.blanks_before)
        pos, line, stop = run.start, run.first_line, run.first_line + run.lines
        while k < len(bad) and s + bad[k].start < run.end:
            b = bad[k]
            if s + b.start > pos:
                yield ("ok", pos, s + b.start, line, b.line - line)
            yield ("bad", b)
            pos, line = s + b.end, b.line + 1
            k += 1
        if pos < run.end:
            yield ("ok", pos, run.end, line, stop - line)


def _valid_pieces(block: Block, runs: list, bad) -> Iterator[tuple[int, int, int, int]]:
    """(start, end, first_line, lines) of the valid records of `runs`."""
    for piece in _pieces(block, runs, bad):
        if piece[0] == "ok":
            yield piece[1:]


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
                     arrays: bool = False) -> list[InputSpec]:
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
    if not arrays:
        for spec in specs:
            _refuse_json_array(spec)
    return specs


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


def split(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: SplitOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    warn: Warn | None = None,
    jobs: int | None = None,
    staging: str | os.PathLike | None = None,
) -> SplitResult:
    """Split JSONL inputs into shards in `out`, with manifest.json and SHA256SUMS.

    Inputs and `out` may be object-store URLs (remote.py); a URL `out` is prepared in the
    local `staging` folder and published object by object, manifest last.
    Raises UsageError, InputError, DataError, ConflictError or Interrupted (each with
    its exit code); whatever happens, no partial file appears under a final name.
    """
    from shardkit.core import objects

    specs = check_run_inputs(inputs, resume=resume, overwrite=overwrite)
    check_names(options, specs)
    check_rejects_path(options.rejects, resume=resume)
    warnings: list[str] = []
    _warn = collecting_warn(warnings, warn)

    with ExitStack() as stack:
        checks = start_checks(stack, options.check, specs, jobs)
        kw = dict(resume=resume, overwrite=overwrite, dry_run=dry_run, progress=progress, warn=_warn, warnings=warnings)
        if objects.is_url(os.fspath(out)):
            return _split_to_url(specs, os.fspath(out), options, checks, staging=staging, **kw)
        return split_specs(specs, Path(objects.local_path(os.fspath(out))), options, checks, **kw)


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


def _split_to_url(specs, url: str, options, checks, *, staging, resume, overwrite, dry_run, warnings, **kw) -> SplitResult:
    def same_run(old: dict) -> None:
        check_same_run(url, old, options.params(), [source_path(s, None) for s in specs])

    def run(stage: Path) -> SplitResult:
        return split_specs(specs, stage, options, checks, resume=resume, overwrite=overwrite,
                           dry_run=dry_run, warnings=warnings, absolute_sources=True, **kw)

    result = run_staged(url, staging, resume=resume, overwrite=overwrite, dry_run=dry_run, same_run=same_run, run=run)
    result.warnings = warnings
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


def check_names(options: SplitOptions, specs: Sequence[InputSpec]) -> None:
    """Every name the run will write is valid, checked before anything is written."""
    stems = input_stems([s.path for s in specs])
    for stem in stems:
        shard_name(options.name, stem, 0)
    if not rejects_outside(options.rejects):
        check_rel_name(options.rejects)
        refuse_side_name_clashes(options.name, stems, (), {"--rejects": options.rejects})


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


def split_specs(specs, out, options, checks, *, resume, overwrite, dry_run, progress, warn, warnings,
           absolute_sources=False, stems=None, schema=None) -> SplitResult:
    splitter = Splitter(specs, out, options, dry_run=dry_run, adopt_identical=resume, progress=progress,
                         warn=warn, checks=checks)
    splitter.absolute_sources = absolute_sources
    if stems is not None:  # engine.py: one input of many, named as in the whole run
        splitter.stems = list(stems)
    if schema is not None:  # engine.py: the Parquet schema of all the inputs, inferred once
        splitter.schema = schema
    result = SplitResult(out=out, manifest={}, dry_run=dry_run, warnings=warnings, validation=splitter.report)
    old = _prepare_out(out, splitter, resume=resume, overwrite=overwrite, dry_run=dry_run, result=result)
    if old is not None and old.get("complete"):
        result.manifest, result.already_complete = old, True
        return result
    if old is not None:
        splitter.restore(old)
        result.resumed = True
    if resume and any(s.is_stdin for s in specs) and result.resumed:
        raise UsageError("cannot resume a run that read stdin: its data is gone; use --overwrite")
    try:
        splitter._save()
        splitter.run()
    except KeyboardInterrupt:
        splitter.abort()
        raise Interrupted(
            f"interrupted; no partial file was left under a final name in {out}; rerun with --resume to continue"
        ) from None
    except BaseException:
        splitter.abort()
        raise
    result.manifest = splitter.final
    return result


def _prepare_out(out: Path, splitter: Splitter, *, resume: bool, overwrite: bool, dry_run: bool, result: SplitResult) -> dict | None:
    """Check OUT against the rules; return the old manifest to resume from, if any."""

    def clean() -> list[str]:
        unlink_if_exists(splitter.rejects.partial)
        return [p.name for p in remove_stale_temps(out)]

    old, result.removed_temps = prepare(
        out, splitter.specs, resume=resume, overwrite=overwrite, dry_run=dry_run, rejects=splitter.opts.rejects,
        same_run=lambda old: _check_same_run(out, old, splitter), clean=clean,
    )
    if old is not None and not dry_run:
        result.removed_temps = [p.name for p in remove_stale_temps(out)]
    return old


def _check_same_run(out: Path, old: dict, splitter: Splitter) -> None:
    check_same_run(out, old, splitter.opts.params(), [splitter.source_path(s) for s in splitter.specs])
    check_same_sizes(out, old, splitter.specs)
    if not old.get("complete") and not isinstance(old.get("resume"), dict):
        raise DataError(f"{out / MANIFEST_NAME}: incomplete but has no resume checkpoint; use --overwrite")
