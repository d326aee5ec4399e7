"""Record-by-record passes over inputs: choose the source (JSONL or JSON array), validate,
write rejects with their original bytes, and report. `shardkit validate` is one call here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shardkit.core.blocks import BlockReader, LineSource
from shardkit.core.errors import ConflictError, DataError
from shardkit.core.io import (
    InputStream,
    commit_file,
    create_temp,
    env_error,
    inspect_input,
    write_all,
)
from shardkit.core.jsonarray import ARRAY_BATCH, JsonArraySource, is_json_array
from shardkit.pipeline.shard import is_parquet, open_input, reject_record
from shardkit.records.check import POOL_MIN_BYTES, CheckOptions, Checks, SchemaValidator, auto_jobs
from shardkit.records.validate import DEFAULT_MAX_LINE_BYTES, Report

__all__ = ["SchemaValidator", "ValidationResult", "open_records", "validate_files"]

_HEAD = 4096


class _HeadFirst:
    """A reader that returns an already-read head before the rest of the stream."""

    def __init__(self, head: bytes, stream: InputStream) -> None:
        self._head, self._stream = head, stream

    def readinto(self, view: memoryview) -> int:
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._stream.readinto(view)

    def read(self, n: int) -> bytes:
        view = memoryview(bytearray(n))
        return bytes(view[: self.readinto(view)])


def open_records(path: str, stream: InputStream):
    """LineSource for JSONL, JsonArraySource for a `.json` file holding one array."""
    head = stream.read(_HEAD)
    reader = _HeadFirst(head, stream)
    if is_json_array(path, head):
        return JsonArraySource(reader)
    return LineSource(reader)


@dataclass
class ValidationResult:
    report: Report
    max_errors: int
    rejects: Path | None = None
    error_lines: list[str] = field(default_factory=list)
    max_reject_ratio: float | None = None

    @property
    def ok(self) -> bool:
        return self.gate_failure() is None

    def gate_failure(self) -> str | None:
        """Why the inputs fail the quality gates (--max-errors, --max-reject-ratio), or None."""
        invalid, records = self.report.invalid, self.report.records
        if invalid > self.max_errors:
            return f"{invalid} invalid record(s), more than --max-errors {self.max_errors}"
        ratio = self.max_reject_ratio
        if ratio is not None and records and invalid / records > ratio:
            return (f"{invalid} of {records} record(s) invalid ({invalid / records:.1%}), "
                    f"more than --max-reject-ratio {ratio:g}")
        return None

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "ok": self.ok, "max_errors": self.max_errors,
                "max_reject_ratio": self.max_reject_ratio, "failed": self.gate_failure(),
                "rejects": str(self.rejects) if self.rejects else None}


def validate_files(
    inputs: Sequence[str],
    *,
    kind: str = "auto",
    schema: str | os.PathLike | None = None,
    max_errors: int = 0,
    max_reject_ratio: float | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_tokens: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    rejects: str | os.PathLike | None = None,
    examples: int = 5,
    jobs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ValidationResult:
    """Validate every record of every input; never stops at a bad record.

    records read = valid + invalid (blank lines are counted apart, as warnings).
    Invalid records go to `rejects` (JSONL: source, line, offset, reasons, original bytes),
    streamed to a temporary file and published under its name only at the end.
    `jobs`: worker processes (None: all cores for inputs over 32 MiB, else one).
    """
    options = CheckOptions(
        kind=kind, schema=os.fspath(schema) if schema is not None else None,
        max_line_bytes=max_line_bytes, max_tokens=max_tokens,
        tokenizer=os.fspath(tokenizer) if tokenizer is not None else None, examples=examples,
    )
    specs = [inspect_input(p) for p in inputs]
    if jobs is None:
        sizes = [s.size for s in specs]
        jobs = auto_jobs(None if None in sizes else sum(sizes))
    report = Report(max_examples=examples)
    result = ValidationResult(report, max_errors, Path(rejects) if rejects else None,
                              max_reject_ratio=max_reject_ratio)
    sink = RejectsSink(Path(rejects)) if rejects is not None else None
    try:
        with Checks(options, jobs) as checks:
            for spec in specs:
                validate_one(spec, checks, report, sink, progress)
        if sink is not None:
            sink.publish()
    finally:
        if sink is not None:
            sink.abort()
    return result


def validate_one(spec, checks: Checks, report: Report, sink: RejectsSink | None, progress) -> None:
    display = spec.display
    parquet = is_parquet(spec)
    with open_input(spec) as stream:  # JSONL, or Parquet read as JSONL
        head = stream.read(_HEAD)
        if (
            checks.jobs > 1
            and spec.compression is None
            and not spec.is_stdin
            and not spec.remote
            and not parquet
            and spec.size is not None
            and spec.size >= POOL_MIN_BYTES
            and not is_json_array(spec.path, head)
        ):
            _validate_ranges(spec, checks, report, sink, progress)
            return
        reader = _HeadFirst(head, stream)
        seen = 0
        try:
            if is_json_array(spec.path, head):
                source = JsonArraySource(reader)
                batch: list[tuple[int, int, bytes]] = []
                for record in source:
                    batch.append(record)
                    if len(batch) >= ARRAY_BATCH:
                        _take(checks.local.check_records(batch, display), report, sink, display, batch_raw(batch))
                        batch = []
                _take(checks.local.check_records(batch, display), report, sink, display, batch_raw(batch))
                return
            blocks = BlockReader(reader)
            for block, verdict in checks.checked(blocks, display):
                _take(verdict, report, sink, display, block_raw(block))
                if progress and stream.raw_bytes - seen > 1 << 20:
                    progress(stream.raw_bytes - seen)
                    seen = stream.raw_bytes
        except DataError as e:
            raise DataError(f"{display}: {e}") from None


def _validate_ranges(spec, checks: Checks, report: Report, sink: RejectsSink | None, progress) -> None:
    """A large plain file: workers read and check byte ranges of it in parallel."""
    for part in checks.checked_file(spec.path, spec.display, spec.size, want_raw=sink is not None):
        report.merge(part.report, line_shift=part.line_shift)
        if sink is not None:
            for bad, raw in zip(part.bad, part.raws, strict=True):
                sink.add(reject_record(spec.display, bad.line, bad.start, bad.code, bad.reason, raw))
        if progress:
            progress(part.end - part.start)


def block_raw(block):
    """For a checked block: a Bad's positions are relative to the block's start."""
    buf, s, base = block.buf, block.start, block.offset
    return lambda b: (base + b.start, buf[s + b.start : s + b.end])


def batch_raw(batch: list[tuple[int, int, bytes]]):
    """For records checked one by one: a Bad's start is the record's offset."""
    raws = {offset: raw for _, offset, raw in batch}
    return lambda b: (b.start, raws[b.start])


def _take(verdict, report: Report, sink: RejectsSink | None, display: str, where) -> None:
    report.merge(verdict.report)
    if sink is not None:
        for bad in verdict.bad:
            offset, raw = where(bad)
            sink.add(reject_record(display, bad.line, offset, bad.code, bad.reason, raw))


class RejectsSink:
    """Rejected records streamed to a temp file beside `final`; published (never replacing
    an existing file) only when the run finishes, so a reader never sees half of it."""

    def __init__(self, final: Path) -> None:
        self.final = final
        if final.exists() or final.is_symlink():
            raise ConflictError(f"{final}: already exists; choose another --rejects path (nothing is overwritten)")
        self.records = 0
        self._fd = -1
        self._tmp: Path | None = None

    def add(self, record: dict) -> None:
        if self._fd < 0:
            self._fd, self._tmp = create_temp(self.final.parent, self.final.name)
        try:
            write_all(self._fd, orjson.dumps(record) + b"\n")
        except OSError as e:
            raise env_error(e, self.final) from None
        self.records += 1

    def add_raw(self, line: bytes) -> None:
        """A reject line already encoded (one task's rejects, merged by engine.py)."""
        if self._fd < 0:
            self._fd, self._tmp = create_temp(self.final.parent, self.final.name)
        try:
            write_all(self._fd, line)
        except OSError as e:
            raise env_error(e, self.final) from None
        self.records += 1

    def publish(self) -> None:
        if self._fd >= 0 and self._tmp is not None:
            fd, self._fd = self._fd, -1
            commit_file(fd, self._tmp, self.final, replace=False)
            self._tmp = None

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None
