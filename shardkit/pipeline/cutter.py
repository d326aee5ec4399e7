"""The flow of a plan with no record stage: runs of lines copied into shards whole.

With no step that needs records one by one (only cutting, --validate and --format), the
run never touches a record in Python: the valid runs of each block (the invalid records
cut out to the rejects file) are written into the current shard as they are, cut where a
shard is full (--max-records, --max-bytes, --num-shards). The shards, concatenated in
manifest order, equal the inputs' valid non-blank lines.

Each shard is committed atomically and listed in the manifest together with a checkpoint
(input, offset, line, counts, rejects length), so a killed run resumes from the record
after its last committed shard and ends with exactly the files an uninterrupted run writes.

Parquet in one pass: the schema is a snapshot of a SchemaBuilder's, grown when records do
not fit it; the run then starts again with the grown schema (and deletes what it wrote with
the old one), at most a few times before it infers the rest of the input first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardkit.core import faults
from shardkit.core.blocks import NL, Block, nonblank_runs, nth_line_end
from shardkit.core.errors import ConflictError, DataError, UsageError
from shardkit.core.io import deferred_signals, fsync_dir
from shardkit.pipeline.shard import ParquetShardFile, ShardFile, count_records, shard_quota
from shardkit.pipeline.transform import TRAIN
from shardkit.records.check import Bad
from shardkit.store.manifest import check_rel_name
from shardkit.store.outdir import unlink_if_exists

if TYPE_CHECKING:
    from shardkit.pipeline.run import Run

PARQUET_PIECE = 1 << 20  # JSONL bytes fed to a Parquet shard between size checks
# A Parquet run whose schema snapshot grows starts again with the new snapshot this many
# times, while it has committed no shard and wasted at most this many bytes; after that
# it infers the rest of the input first (see StreamFlow._start_again).
_SNAPSHOT_ATTEMPTS = 8
_SNAPSHOT_BYTES = 64 << 20


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


def input_stamp(spec) -> list[int] | None:
    """[size, mtime_ns] of a local input file as the run begins, else None: saved beside each
    checkpoint, a resume refuses an input that changed since (`check_unchanged`)."""
    if spec.is_stdin or spec.remote:
        return None
    try:
        st = os.stat(spec.path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def check_unchanged(specs, stamps: list | None, now: list, upto: int) -> None:
    """The inputs read so far (up to input `upto`) are the ones the interrupted run read:
    same size and modification time (what make and rsync trust). Sizes alone let an edit
    that keeps the size resume into shards that no longer match the input."""
    for i, (old, new) in enumerate(zip(stamps or (), now, strict=False)):
        if i > upto:
            break
        if old is not None and new is not None and old != new:
            raise ConflictError(
                f"{specs[i].display}: changed since the interrupted run (modified "
                f"{'at another time' if old[0] == new[0] else 'to another size'}); its shards would not match it: "
                "cannot resume (use --overwrite to start again)"
            )


class _Never(Exception):
    """Raised by nothing (what a JSONL run catches in place of parquet.SchemaChanged)."""


class StreamFlow:
    """Inputs in order, each from its checkpoint, through the cutter; the Parquet schema."""

    scouting = False
    resume_hint = "to continue"

    def __init__(self, run: Run) -> None:
        self.run = run
        self.opts = run.opts.split
        self.stamps = [input_stamp(spec) for spec in run.specs]  # saved beside the checkpoint
        self.cp = _Checkpoint()
        self.cutter = _Cutter(self)
        # Parquet in one pass: the schema is a snapshot of what the builder has seen and
        # grows (the run starting again) when records do not fit it; None once it is final
        self.builder = None
        self._attempts = 0
        self._progressed = 0

    # ----- what the manifest says of this flow

    def params(self) -> dict:
        return self.run.opts.params([])

    def manifest_extra(self, complete: bool) -> dict:
        m: dict = {}
        schema = self.run.schema
        if schema is not None:
            m["parquet"] = {"json_fields": schema.json_fields, "schema": schema.to_json()}
            if self.builder is not None and not complete:
                m["parquet"]["inference"] = self.builder.state()  # the schema is still a snapshot
        if not complete:
            m["resume"] = {**self.cp.to_dict(), "stamps": self.stamps}
        return m

    def finish_warnings(self, sides: dict) -> None:
        name = self.opts.rejects  # as given: a NAME inside OUT, or a PATH anywhere
        to = "would go to" if self.run.dry_run else "written to"
        if self.cutter.invalid:
            self.run.warn(f"{self.cutter.invalid} invalid record(s) {to} {name}")
        if self.cutter.oversize_rejected:
            self.run.warn(f"{self.cutter.oversize_rejected} record(s) larger than --max-bytes {to} {name}")

    def progressed(self, n: int) -> None:
        self._progressed += n

    # ----- resume

    def resume(self, old: dict) -> list[str]:
        """Continue from an incomplete manifest written by the same inputs and options."""
        run = self.run
        state = dict(old["resume"])
        stamps = state.pop("stamps", None)  # None: written by shardkit before 2026-12 (sizes were checked)
        cp = _Checkpoint(**state)
        check_unchanged(run.specs, stamps, self.stamps, cp.input)
        self._discard(cp)
        self.cp = cp
        for tally, entry in zip(run.tallies[: cp.input], old["sources"], strict=False):
            tally.restore(entry)
            tally.routed[TRAIN] = entry.get(TRAIN, entry["records"] - entry["rejected"])
        run.files = list(old["files"])
        for entry in run.files:
            target = run.out / entry["path"]
            if not target.is_file() or target.stat().st_size != entry["bytes"]:
                raise DataError(
                    f"{target}: listed in the manifest but missing or changed; cannot resume (use --overwrite)"
                )
        run.rejects.restore(cp.rejects_records, cp.rejects_bytes)
        if self.opts.format == "parquet" and old.get("parquet"):
            from shardkit.pipeline.parquet import InferredSchema, SchemaBuilder

            run.schema = InferredSchema.from_json(old["parquet"]["schema"])
            inference = old["parquet"].get("inference")
            if inference is not None:
                self.builder = SchemaBuilder.from_state(inference, self.opts.parquet, warn=run.warn)
                run.schema = self.builder.snapshot()
        return []

    def _discard(self, cp: _Checkpoint) -> None:
        """Delete the shards a checkpoint names as written with a schema that grew."""
        if not cp.discard or self.run.dry_run:
            return
        for name in cp.discard:
            unlink_if_exists(self.run.out / check_rel_name(name))
        fsync_dir(self.run.out)
        cp.discard = []

    # ----- the run

    def process(self) -> None:
        run = self.run
        if self.opts.format == "parquet":
            from shardkit.pipeline.parquet import SchemaChanged
        else:  # JSONL never imports pyarrow
            SchemaChanged = _Never  # noqa: N806
        if self.opts.format == "parquet" and run.schema is None:
            self._start_schema()
            run.save()  # the schema is part of what --resume needs
        spans = run.opts.spans_inputs(len(run.specs))
        quota = self._total_quota() if spans else None
        while True:
            try:
                start = self.cp.input
                for i in range(start, len(run.specs)):
                    resuming = i == start and (self.cp.offset > 0 or self.cp.next_index > 0)
                    cp = self.cp if resuming else _Checkpoint(input=i)
                    if spans and i > start:  # the shard being written goes on into this input
                        self._split_input(i, cp, carry=True)
                    else:
                        self._split_input(i, cp, quota=quota)
                break
            except SchemaChanged as e:
                self._start_again(e.schema)
        if self.builder is not None:  # every record fitted the last snapshot: it is final
            final = self.builder.result()  # reports fields that only ever held empty objects
            if not final.same_snapshot(run.schema):
                raise AssertionError("the final schema differs from the one the shards were written with")
            run.schema, self.builder = final, None

    def _split_input(self, i: int, cp: _Checkpoint, *, quota=None, carry: bool = False) -> None:
        """Input `i` from `cp` through the cutter. `carry`: the shard being written (the
        inputs taken together, --num-shards) goes on into this input; it is committed once
        full, and the checkpoint stays at the last commit until it is."""
        run = self.run
        tally = run.tallies[i]
        tally.records, tally.blank, tally.rejected = cp.records, cp.blank, cp.rejected
        tally.routed[TRAIN] = cp.records - cp.rejected  # every record before cp is in a listed shard
        if carry:
            self.cutter.continue_input(i)
        else:
            self.cutter.start_input(i, cp.next_index, quota or self._quota_for(i))
        last = i == len(run.specs) - 1
        spans = run.opts.spans_inputs(len(run.specs))
        with run.opened(i) as stream:
            blocks = run.blocks(i, stream, offset=cp.offset, line=cp.line)
            for block, bad in blocks:
                self.cutter.feed_block(block, bad)
            if not spans or last or self.cutter.full():
                self.cutter.commit(blocks.offset, blocks.line)
            self.cutter.settle()
        if tally.blank:
            run.warn(f"{run.specs[i].display}: {tally.blank} blank line(s) skipped")
        if not self.cutter.holding():  # else the checkpoint stays at the last commit
            self.cp = _Checkpoint(input=i + 1, rejects_records=run.rejects.records, rejects_bytes=run.rejects.bytes,
                                  next_index=self.cutter.next_index if spans else 0)
        faults.hit("after:input_done")
        run.save()

    def checkpoint(self, i: int, offset: int, line: int, next_index: int) -> _Checkpoint:
        """Where the run stands once the shard being committed is listed."""
        tally = self.run.tallies[i]
        return _Checkpoint(input=i, offset=offset, line=line, records=tally.records, blank=tally.blank,
                           rejected=tally.rejected, next_index=next_index,
                           rejects_records=self.run.rejects.records, rejects_bytes=self.run.rejects.bytes)

    def _total_quota(self) -> Callable[[int], int | None]:
        """--num-shards N over the inputs taken together: N shards balanced by record count."""
        n = self.opts.num_shards
        total = sum(count_records(spec, self.opts.block_size) for spec in self.run.specs)
        if 0 < total < n:
            self.run.warn(f"only {total} record(s) in all inputs; writing {total} shard(s) instead of {n}")
        return shard_quota(total, n, self.opts.max_records)

    def _quota_for(self, i: int) -> Callable[[int], int | None]:
        n = self.opts.num_shards
        if n is None:
            return shard_quota(None, None, self.opts.max_records)
        spec = self.run.specs[i]
        total = count_records(spec, self.opts.block_size)
        if 0 < total < n:
            self.run.warn(f"{spec.display}: only {total} record(s); writing {total} shard(s) instead of {n}")
        return shard_quota(total, n, self.opts.max_records)

    # ----- the Parquet schema

    def _start_schema(self) -> None:
        """The Parquet schema to start with: --schema-from's; or, with no file to check
        records against it (--dry-run), the whole input's (a pass of its own); or a
        snapshot that grows as records need (the run starts again when it does)."""
        from shardkit.pipeline.parquet import SchemaBuilder, schema_from_parquet

        run, popts = self.run, self.opts.parquet
        if popts.schema_from:
            run.schema = schema_from_parquet(popts.schema_from)
            return
        for spec in run.specs:
            if not spec.rereadable:
                raise UsageError("--format parquet may read its input twice (if the schema grows, the run starts "
                                 "again): give a file, not stdin, or give --schema-from FILE.parquet")
        if run.dry_run:
            run.schema = self.infer_schema()
            return
        self.builder = SchemaBuilder(popts, warn=run.warn)
        self._feed_builder(self.builder, _Checkpoint(), limit=popts.parse_chunk_bytes)  # a first guess
        run.schema = self.builder.snapshot()

    def _start_again(self, schema) -> None:
        """Records did not fit the schema snapshot: drop what was written with it and start
        from the first record with the grown one. Early on (nothing committed, little
        read) the new snapshot is used as it is; otherwise the rest of the input is
        inferred first, so that the run starts again at most once more."""
        run = self.run
        self.cutter.settle()  # listed, then deleted with the others
        self.cutter.abort_file()
        self._attempts += 1
        if run.files or self._attempts > _SNAPSHOT_ATTEMPTS or self.cutter.fed > _SNAPSHOT_BYTES:
            self._feed_builder(self.builder, self.cp)  # the records before cp fitted; go on from there
            run.schema, self.builder = self.builder.result(), None
        else:
            run.schema = schema
        written = [f["path"] for f in run.files]
        run.files = []
        for tally, spec in zip(run.tallies, run.specs, strict=True):
            tally.restore({"bytes": spec.size})
        run.rejects.close()
        run.rejects.restore(0, 0)
        self.cutter.invalid = self.cutter.oversize_rejected = 0
        if run.report is not None:
            run.report.__init__(max_examples=run.checks.options.examples)
        if run.progress and self._progressed:
            run.progress(-self._progressed)
        self._progressed = 0
        self.cp = _Checkpoint(discard=written)
        run.save()  # lists no shard; --resume deletes the ones it names
        faults.hit("after:schema_grew")
        self._discard(self.cp)
        run.save()

    def infer_schema(self):
        """The schema of every record that will be written, in a pass of its own."""
        from shardkit.pipeline.parquet import SchemaBuilder

        builder = SchemaBuilder(self.opts.parquet, warn=self.run.warn)
        self._feed_builder(builder, _Checkpoint())
        return builder.result()

    def _feed_builder(self, builder, start: _Checkpoint, limit: int | None = None) -> None:
        """Feed the builder every valid record from `start` (input, offset, line) on, or
        the blocks holding the first `limit` bytes of them."""
        fed, run = 0, self.run
        for i in range(start.input, len(run.specs)):
            offset, line = (start.offset, start.line) if i == start.input else (0, 1)
            display = run.specs[i].display
            with run.opened(i, hashed=False) as stream:
                for block, bad in run.blocks(i, stream, offset=offset, line=line, report=False, progress=False):
                    runs, _ = nonblank_runs(block)
                    for s, e, first, n in _valid_pieces(block, runs, bad):
                        builder.add_block(memoryview(block.buf)[s:e], first, display, lines=n)
                        fed += e - s
                    if limit is not None and fed >= limit:
                        return

    def abort(self) -> None:
        self.cutter.abort()


class _Cutter:
    """The current input's valid runs of lines into shards, each committed atomically and
    listed with the checkpoint after it."""

    def __init__(self, flow: StreamFlow) -> None:
        self.flow, self.run, self.opts = flow, flow.run, flow.opts
        self.invalid = self.oversize_rejected = 0
        self.fed = 0  # bytes given to shards, over all attempts: all wasted if one more is needed
        self._closing: tuple | None = None  # the shard being committed: (file, future, entry, checkpoint)
        self._i = 0
        self._quota: Callable[[int], int | None] = lambda _index: None
        self._file: ShardFile | None = None
        self._index = self._records = self._bytes = self._first_line = self._last_line = self._first_input = 0

    def start_input(self, i: int, next_index: int, quota: Callable[[int], int | None]) -> None:
        self._i, self._index, self._quota = i, next_index, quota
        self._records = self._bytes = 0

    def continue_input(self, i: int) -> None:
        """Go on into input `i` with the shard being written (shards spanning inputs)."""
        self._i = i

    def holding(self) -> bool:
        """A shard with records is open (not committed yet)."""
        return self._records > 0

    def full(self) -> bool:
        return self._records > 0 and self._full()

    @property
    def next_index(self) -> int:
        return self._index

    def feed_block(self, block: Block, bad) -> None:
        tally = self.run.tallies[self._i]
        runs, trailing = nonblank_runs(block)
        if bad:
            for piece in _pieces(block, runs, bad):
                if piece[0] == "run":
                    tally.blank += piece[1]
                elif piece[0] == "ok":
                    self._feed_run(block, *piece[1:])
                else:
                    self._reject_invalid(block, piece[1])
        else:
            for run in runs:
                tally.blank += run.blanks_before
                self._feed_run(block, run.start, run.end, run.first_line, run.lines)
        tally.blank += trailing

    def _reject_invalid(self, block: Block, b: Bad) -> None:
        raw = block.buf[block.start + b.start : block.start + b.end]
        self.run.reject(self._i, b.line, block.offset + b.start, b.code, b.reason, raw)
        self.run.tallies[self._i].records += 1
        self.invalid += 1

    def _feed_run(self, block: Block, pos: int, end: int, line: int, lines: int) -> None:
        """Whole lines [pos, end) of a block, cut where a shard is full. JSONL: cut at the
        byte limit (a record over it alone: --oversize); Parquet: in pieces of about
        PARQUET_PIECE bytes with --max-bytes, checking the shard's size between pieces
        (its on-disk size is known only as row groups are written: estimated_bytes)."""
        buf = block.buf
        last_line = line + lines  # one past the run's last line
        max_bytes = self.opts.max_bytes
        parquet = self.opts.format == "parquet"
        # checked at least 4 times per shard: a small --max-bytes is not overshot by a whole piece
        piece = min(PARQUET_PIECE, max(4096, max_bytes // 4)) if parquet and max_bytes is not None else None
        while pos < end:
            if self._records and self._full():
                self.commit(block.offset + pos - block.start, line)
            cut = end
            if piece is not None and end - pos > piece:
                cut = buf.rfind(NL, pos, pos + piece) + 1
                if cut <= pos:
                    cut = buf.find(NL, pos) + 1
            elif not parquet and max_bytes is not None and end - pos > max_bytes - self._bytes:
                nl = buf.rfind(NL, pos, pos + max_bytes - self._bytes)
                if nl < 0:
                    if self._records:
                        self.commit(block.offset + pos - block.start, line)
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
        run = self.run
        if not self._records:
            self._first_line, self._first_input = line, self._i
            if not run.dry_run:
                self._file = run.shard_file(self._name(), self._index, self.flow.builder)
        if isinstance(self._file, ParquetShardFile):
            self._file.add(data, n, line, run.specs[self._i].display)
        elif self._file is not None:
            self._file.write(data)
        self._records += n
        self._bytes += len(data)
        self.fed += len(data)
        tally = run.tallies[self._i]
        tally.records += n
        tally.routed[TRAIN] += n
        self._last_line = line + n - 1

    def _oversize(self, block: Block, pos: int, line_end: int, line: int) -> None:
        size = line_end - pos
        where = f"{self.run.specs[self._i].display}:{line}"
        limit = self.opts.max_bytes
        if self.opts.oversize == "error":
            raise DataError(
                f"{where}: record is {size} bytes, larger than --max-bytes {limit} "
                "(use --oversize own-shard or --oversize reject)"
            )
        if self.opts.oversize == "reject":
            reason = f"record is {size} bytes, larger than --max-bytes {limit}"
            self.run.reject(self._i, line, block.offset + pos - block.start, "oversize", reason, block.buf[pos:line_end])
            self.run.tallies[self._i].records += 1
            self.oversize_rejected += 1
            return
        self.run.warn(f"{where}: record is {size} bytes, larger than --max-bytes {limit}; "
                      f"written to its own shard {self._name()}")
        self._write(memoryview(block.buf)[pos:line_end], 1, line)

    def _name(self) -> str:
        return self.run.opts.shard_name(self.run.stems[self._i], TRAIN, self._index)

    def commit(self, offset: int, line: int) -> None:
        """Publish the current shard (if it has records) and checkpoint at (offset, line)."""
        if not self._records:
            return
        with deferred_signals():
            self._commit_held(offset, line)

    def _commit_held(self, offset: int, line: int) -> None:
        """Close the shard, rename it to its final name, then list it in the manifest with
        the checkpoint. A Parquet shard's last row groups, fsync and rename happen in the
        background while the next shard is read; settle() lists it (before the next
        shard is committed, an input is done, or the run ends)."""
        self.settle()
        run, parquet = self.run, self.opts.format == "parquet"
        entry = {
            "path": self._name(),
            "format": self.opts.format,
            "compression": self.opts.parquet.compression if parquet else None,
            "records": self._records,
            "bytes": self._bytes,
            "sha256": None,
            "source": run.tallies[self._first_input].path,
            "first_line": self._first_line,
            "last_line": self._last_line,
            "split": TRAIN,
        }
        if self._first_input != self._i:  # it spans inputs (--num-shards over several): where it ends
            entry["last_source"] = run.tallies[self._i].path
        cp = self.flow.checkpoint(self._i, offset, line, self._index + 1)
        file = self._file
        if isinstance(file, ParquetShardFile):
            self._closing = (file, file.commit_async(adopt_identical=run.adopt_identical), entry, cp)
        else:
            if file is not None:
                entry["sha256"] = file.commit(adopt_identical=run.adopt_identical)
            self._closing = (None, None, entry, cp)
        self._file = None
        self._index += 1
        self._records = self._bytes = 0
        if file is None or not parquet:
            self.settle()

    def settle(self) -> None:
        """List the shard committed last in the manifest, once it is under its final name."""
        if self._closing is None:
            return
        file, done, entry, cp = self._closing
        self._closing = None
        run = self.run
        if file is not None:
            try:
                entry["sha256"] = done.result()
            except BaseException:
                file.abort()
                raise
            entry["bytes"] = file.writer.bytes_written
        with deferred_signals():
            run.files.append(entry)
            run.rejects.sync()
            self.flow.cp = cp
            try:
                run.save()
            except BaseException:
                # the manifest could not list it (disk full...): a shard no manifest lists must not stay
                if entry["sha256"] is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(run.out / entry["path"])
                    fsync_dir(run.out)
                raise

    def abort_file(self) -> None:
        if self._file is not None:
            self._file.abort()
            self._file = None
        self._records = self._bytes = 0

    def abort(self) -> None:
        if self._closing is not None:
            try:
                self.settle()  # a shard being committed is listed, if it can be
            except BaseException:  # noqa: BLE001 - the run is failing anyway; the file is cleaned up
                pass
        self.abort_file()


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
