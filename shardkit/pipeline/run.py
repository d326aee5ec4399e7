"""The split driver: one run of a plan over some inputs into one output folder.

Every split goes through `Run`, whatever its options, executor or store::

    Source        each input opened once (plain, .gz, .zst, stdin, Parquet, JSON array),
                  hashed as read, cut into blocks of whole lines, --validate'd by blocks
    flow          what happens between the source and the shards, chosen by the plan:
                    no record stage -> `cutter.StreamFlow`: runs of valid lines are copied
                    into shards whole (no per-record Python work), with a checkpoint per
                    shard so --resume continues mid-input;
                    a record stage (--shuffle/--holdout/--dedup/--exclude/--to, or a JSON
                    array input) -> `transform.RecordFlow`: each record through the steps
                    (convert, exclude, dedup, route, size gate) to the order stage (input
                    order or the external shuffle); --resume runs it again from the start
    sinks         shard files (JSONL byte-exact, Parquet), side files (rejects,
                  duplicates, excluded), committed atomically
    Run           OUT's rules (resume, overwrite, lock), the per-input tallies, the
                  manifest (rewritten `"complete": false` after each shard, complete last),
                  conservation, gates, and cleanup when the run fails or is interrupted

An executor (`engine.py`) runs this same driver in its tasks; a store (`shard.run_staged`)
publishes the folder it wrote. The shards, side files and manifest depend only on the
inputs and the plan.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from shardkit.core import faults, objects
from shardkit.core.blocks import BlockReader
from shardkit.core.errors import ConflictError, DataError, Interrupted, UsageError
from shardkit.core.io import (
    BackgroundHasher,
    InputSpec,
    deferred_signals,
    fsync_dir,
    remove_stale_temps,
)
from shardkit.pipeline.cutter import StreamFlow
from shardkit.pipeline.shard import (
    ParquetShardFile,
    Progress,
    RejectsFile,
    ShardFile,
    SplitResult,
    Warn,
    check_rejects_path,
    check_run_inputs,
    collecting_warn,
    holds_json_array,
    input_stems,
    open_input,
    refuse_side_name_clashes,
    refuse_unless_gates_pass,
    reject_record,
    rejects_entry_path,
    rejects_target,
    source_path,
    start_checks,
)
from shardkit.pipeline.transform import (
    SHUFFLED_STEM,
    SIDES,
    TEMP_DIR,
    TRAIN,
    VALIDATION,
    ConservationError,
    PipelineOptions,
    RecordFlow,
    input_check,
)
from shardkit.records.check import Checks, auto_jobs
from shardkit.records.validate import Report
from shardkit.store.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    check_rel_name,
    now_iso,
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

ALL_SIDES = (*SIDES, "near_duplicates", "contaminated")  # every side file a manifest may list


@dataclass
class Tally:
    """Per input: what came in and where it went (the manifest's `sources` entry)."""

    path: str
    bytes: int | None = None
    sha256: str | None = None
    records: int = 0
    blank: int = 0
    rejected: int = 0
    duplicates: int = 0
    excluded: int = 0
    routed: dict[str, int] = field(default_factory=lambda: {TRAIN: 0, VALIDATION: 0})
    container: str | None = None  # "json-array": one array, written one compact record a line

    def to_dict(self) -> dict:
        d = {
            "path": self.path, "bytes": self.bytes, "sha256": self.sha256, "records": self.records,
            "blank": self.blank, "rejected": self.rejected, "duplicates": self.duplicates,
            "excluded": self.excluded, TRAIN: self.routed[TRAIN], VALIDATION: self.routed[VALIDATION],
        }
        if self.container:
            d["container"] = self.container
        return d

    def restore(self, d: dict) -> None:
        """Take the counts of a manifest's `sources` entry (a resumed run)."""
        self.bytes, self.sha256 = d.get("bytes"), d.get("sha256")
        for key in ("records", "blank", "rejected", "duplicates", "excluded"):
            setattr(self, key, d.get(key, 0))
        self.routed = {TRAIN: d.get(TRAIN, 0), VALIDATION: d.get(VALIDATION, 0)}


class Run:
    """One split run: the plan's flow between the inputs and OUT, and everything around it."""

    def __init__(
        self,
        specs: list[InputSpec],
        out: Path,
        plan: PipelineOptions,
        checks: Checks | None,
        *,
        dry_run: bool,
        adopt_identical: bool,
        progress: Progress | None,
        warn: Warn,
        absolute_sources: bool = False,
        stems: Sequence[str] | None = None,
        jobs: int = 1,
    ) -> None:
        self.specs, self.out, self.opts, self.checks = specs, out, plan, checks
        self.jobs = jobs  # worker processes a record stage may use (--near-dedup's signatures)
        self.absolute_sources = absolute_sources  # the manifest goes to an object store
        self.dry_run, self.adopt_identical, self.progress = dry_run, adopt_identical, progress
        self._warn_to, self._warned = warn, set()
        if stems is None:  # shards that may span inputs are named like --shuffle's: part-00000...
            stems = [SHUFFLED_STEM] * len(specs) if plan.spans_inputs(len(specs)) else input_stems([s.path for s in specs])
        self.stems = list(stems)
        self.arrays = [holds_json_array(s) for s in specs]  # inputs that are one JSON array
        self.tallies = [Tally(self.source_path(s), s.size) for s in specs]
        for tally, is_array in zip(self.tallies, self.arrays, strict=True):
            tally.container = "json-array" if is_array else None
        self.report = Report(max_examples=checks.options.examples) if checks else None
        target = rejects_target(out, plan.split.rejects)
        self.rejects = RejectsFile(target, dry_run, rejects_entry_path(out, target))
        self.duplicates = RejectsFile(out / plan.duplicates, dry_run)
        self.excluded = RejectsFile(out / plan.excluded, dry_run)
        self.contaminated = RejectsFile(out / plan.contaminated, dry_run)
        self.near_duplicates = RejectsFile(out / plan.near_duplicates, dry_run)
        self.files: list[dict] = []
        self.created_at = now_iso()
        self.schema = None  # parquet.InferredSchema with --format parquet
        self.flow: StreamFlow | RecordFlow = (
            StreamFlow(self) if plan.streams and not any(self.arrays) else RecordFlow(self)
        )

    def warn(self, msg: str) -> None:
        """Pass a warning on, once (a Parquet run that starts again meets things twice)."""
        if msg not in self._warned:
            self._warned.add(msg)
            self._warn_to(msg)

    def source_path(self, spec: InputSpec) -> str:
        return source_path(spec, None if self.absolute_sources else self.out)

    def shard_file(self, name: str, index: int, builder=None) -> ShardFile:
        """A new shard under a temp name in OUT: JSONL, or Parquet with the run's schema (a
        snapshot of `builder`'s while the schema may still grow)."""
        if self.opts.split.format == "parquet":
            return ParquetShardFile(self.out, name, self.schema, self.opts.split.parquet, builder, index)
        return ShardFile(self.out, name)

    def scout(self) -> Run:
        """A dry run of the same plan, warning nobody (a scout pass: the Parquet schema)."""
        return Run(self.specs, self.out, self.opts, self.checks, dry_run=True, adopt_identical=False, progress=None,
                   warn=lambda _msg: None, absolute_sources=self.absolute_sources, stems=self.stems)

    # ----- the source stage

    @contextmanager
    def opened(self, i: int, *, hashed: bool = True):
        """Input `i` as a stream of JSONL bytes; with `hashed`, its size and sha256 go to its
        tally once it is read to the end."""
        spec = self.specs[i]
        src_hash = BackgroundHasher(lane=0) if hashed and not self.dry_run else None
        stream = open_input(spec, on_raw=src_hash.update if src_hash else None)
        with stream:
            yield stream
        if hashed:
            self.tallies[i].bytes = stream.raw_bytes
            self.tallies[i].sha256 = src_hash.hexdigest() if src_hash else None

    def blocks(self, i: int, stream, *, offset: int = 0, line: int = 1, report: bool = True,
               progress: bool = True) -> Blocks:
        """The blocks of an opened input, from `offset`/`line` on (see `Blocks`)."""
        return Blocks(self, i, stream, offset, line, report=report, progress=progress)

    def reject(self, i: int, line: int, offset: int, code: str, reason: str, raw: bytes) -> None:
        self.rejects.add(reject_record(self.specs[i].display, line, offset, code, reason, raw))
        self.tallies[i].rejected += 1

    # ----- the manifest

    def committed(self, entry: dict) -> None:
        """A shard is under its final name: list it (the manifest is rewritten)."""
        self.files.append(entry)
        self.save()

    def counts(self) -> dict:
        t = self.tallies
        # records, not rows: a packed token shard (split --tokenize --pack) holds several per row
        by_split = {s: sum(f.get("examples", f["records"]) for f in self.files if f.get("split", TRAIN) == s)
                    for s in (TRAIN, VALIDATION)}
        blank = sum(x.blank for x in t)
        return {
            "read": sum(x.records for x in t) + blank,
            "written": by_split[TRAIN] + by_split[VALIDATION],
            TRAIN: by_split[TRAIN],
            VALIDATION: by_split[VALIDATION],
            "rejected": sum(x.rejected for x in t),
            "duplicates": sum(x.duplicates for x in t),
            "excluded": sum(x.excluded for x in t),
            "blank": blank,
        }

    def manifest(self, complete: bool, sides: dict | None = None) -> dict:
        m = {
            "shardkit_manifest": FORMAT_VERSION,
            "type": "shards",
            "complete": complete,
            "created_at": self.created_at,
            "tool": tool_name(),
            "params": self.flow.params(),
            "sources": [t.to_dict() for t in self.tallies],
            "files": self.files,
        }
        for key in self.opts.sides:
            side = getattr(self, key)
            m[key] = (sides or {}).get(key) if complete else {"path": side.entry_path, "records": side.records}
        m["counts"] = self.counts()
        m["totals"] = totals(self.files)
        m.update(self.flow.manifest_extra(complete))
        return m

    def save(self, m: dict | None = None) -> None:
        """SHA256SUMS, then manifest.json, each atomically (not in a dry run)."""
        if not self.dry_run:
            write_manifest(self.out / MANIFEST_NAME, m or self.manifest(complete=False))

    # ----- the run

    def execute(self) -> dict:
        """Run the flow, publish the side files, write the complete manifest; on any failure
        leave nothing but whole, listed files."""
        try:
            self.save()
            self.flow.process()
            if self.flow.scouting:
                return {}
            self.rejects.sync()
            with deferred_signals():
                return self._finish()
        except KeyboardInterrupt:
            self.abort()
            raise Interrupted(f"interrupted; no partial file was left under a final name in {self.out}; "
                              f"rerun with --resume {self.flow.resume_hint}") from None
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> dict:
        sides = {key: getattr(self, key).publish() for key in self.opts.sides}
        faults.hit("after:sides_published")
        self.flow.finish_warnings(sides)
        final = self.manifest(complete=True, sides=sides)
        check_conservation(final["counts"])
        for split in (TRAIN, VALIDATION):
            routed = sum(t.routed[split] for t in self.tallies)
            if routed != final["counts"][split]:
                raise ConservationError(f"internal error: {routed} record(s) routed to {split}, "
                                        f"{final['counts'][split]} written; please report it")
        refuse_unless_gates_pass(self.out, final, self.opts.split, dry_run=self.dry_run, write=self.save)
        self.save(final)
        return final

    def model_path(self, model: str) -> str:
        """How the manifest names a model folder: relative to OUT, as the sources are (absolute
        when OUT is an object store)."""
        if self.absolute_sources or objects.is_url(model):
            return model if objects.is_url(model) else os.path.abspath(model)
        return os.path.relpath(os.path.abspath(model), os.path.abspath(self.out))

    def side_files(self) -> list[RejectsFile]:
        """The side files of this plan (rejects, duplicates, excluded[, contaminated])."""
        return [getattr(self, key) for key in self.opts.sides]

    def abort(self) -> None:
        """Leave nothing behind but whole, listed files (best effort: the original error wins)."""
        with suppress(OSError):
            self.flow.abort()
        for side in self.side_files():
            with suppress(OSError):
                side.close()
        if not self.dry_run and self.out.is_dir():
            # a temp shard whose name was not recorded yet (interrupted inside create_temp);
            # OUT is locked by this run, so every temp file in it is this run's or stale
            with suppress(OSError):
                remove_stale_temps(self.out)

    # ----- OUT

    def prepare(self, *, resume: bool, overwrite: bool, stack: ExitStack, result: SplitResult) -> dict | None:
        """Check OUT against the rules (`outdir.prepare`), lock it for this run (not in a dry
        run), clean what a killed run left; return the old manifest when resuming (complete:
        nothing to do; incomplete: the flow takes it up, `flow.resume(old)`)."""
        old, result.removed_temps = prepare(
            self.out, self.specs, resume=resume, overwrite=overwrite, dry_run=self.dry_run,
            rejects=self.opts.split.rejects, same_run=self._check_same_run, clean=self.clean,
            lock=lambda: stack.enter_context(_locked(self.out)),  # before anything is looked at or cleaned
        )
        if old is None or old.get("complete"):
            return old
        if any(s.is_stdin for s in self.specs):
            raise UsageError("cannot resume a run that read stdin: its data is gone; use --overwrite")
        self.created_at = old.get("created_at", self.created_at)
        removed = self.flow.resume(old)
        if not self.dry_run:
            result.removed_temps = removed + [p.name for p in remove_stale_temps(self.out)]
        return old

    def _check_same_run(self, old: dict) -> None:
        check_same_run(self.out, old, self.flow.params(), [t.path for t in self.tallies])
        check_same_sizes(self.out, old, self.specs)
        if not old.get("complete") and not isinstance(old.get("resume"), dict):
            raise DataError(f"{self.out / MANIFEST_NAME}: incomplete but has no resume checkpoint; use --overwrite")

    def clean(self) -> list[str]:
        """What a killed run leaves under hidden names: temp shards, partial side files, buckets."""
        removed = [q.name for q in remove_stale_temps(self.out)]
        for side in self.side_files():
            if side.partial.exists():
                unlink_if_exists(side.partial)
                removed.append(side.partial.name)
        folder = self.out / TEMP_DIR
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
            removed.append(TEMP_DIR)
        return removed

    def remove_listed_sides(self, old: dict) -> None:
        """The side files an interrupted run's manifest lists inside OUT (a run that starts
        again rewrites them)."""
        for key in ALL_SIDES:
            entry = old.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("path"), str) and not os.path.isabs(entry["path"]):
                unlink_if_exists(self.out / check_rel_name(entry["path"]))  # never a file outside OUT
        fsync_dir(self.out)


class Blocks:
    """(block, invalid records) of an opened input: whole lines, --validate'd by blocks (the
    verdicts merged into the run's report unless `report` is False); `offset` and `line`
    say where the next block starts (the end, once iterated)."""

    def __init__(self, run: Run, i: int, stream, offset: int, line: int, *, report: bool, progress: bool) -> None:
        self.run, self.i, self.stream = run, i, stream
        self.report, self.progress = report, progress
        self.reader = BlockReader(stream, run.opts.split.block_size, start_offset=offset, start_line=line)

    @property
    def offset(self) -> int:
        return self.reader.offset

    @property
    def line(self) -> int:
        return self.reader.line

    def __iter__(self) -> Iterator[tuple]:
        run, stream, display = self.run, self.stream, self.run.specs[self.i].display
        checked = run.checks.checked(self.reader, display) if run.checks else ((b, None) for b in self.reader)
        seen = stream.raw_bytes
        try:
            for block, verdict in checked:
                if verdict is not None and self.report:
                    run.report.merge(verdict.report)
                yield block, verdict.bad if verdict is not None else ()
                if self.progress and run.progress:
                    run.progress(stream.raw_bytes - seen)
                    run.flow.progressed(stream.raw_bytes - seen)
                seen = stream.raw_bytes
        except EOFError:
            raise DataError(f"{display}: shorter than when the run was interrupted; cannot resume "
                            "(use --overwrite)") from None
        if self.reader.added_newline and self.report:
            run.warn(f"{display}:{self.reader.line - 1}: no newline at end of file; one was added to the last record")


def check_conservation(counts: dict) -> None:
    """read = written + rejected + duplicates + excluded + blank, and written = train + validation."""
    c = counts
    accounted = c["written"] + c["rejected"] + c["duplicates"] + c["excluded"] + c["blank"]
    if c["read"] != accounted or c["written"] != c[TRAIN] + c[VALIDATION]:
        raise ConservationError(
            f"internal error: records do not add up (read {c['read']} != written {c['written']} + rejected "
            f"{c['rejected']} + duplicates {c['duplicates']} + excluded {c['excluded']} + blank {c['blank']}); "
            "please report it"
        )


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive flock on OUT while writing: a second run into it is refused."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConflictError(f"{out}: another shardkit run is writing here; wait for it to finish") from None
            raise
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- entry points


def check_plan(plan: PipelineOptions, specs: Sequence[InputSpec], *, resume: bool) -> None:
    """Every name the run will write is valid and no side file can take a shard's name:
    checked before anything is written."""
    cut = plan.split
    if cut.format == "parquet" and not cut.parquet.schema_from and any(not s.rereadable for s in specs):
        # before OUT is touched: refused later, it left an interrupted manifest a rerun could not resume
        raise UsageError("--format parquet may read its input twice (for the schema): give a file, not stdin, "
                         "or give --schema-from FILE.parquet")
    spans = plan.shuffle or plan.spans_inputs(len(specs))
    stems = [SHUFFLED_STEM] if spans else input_stems([s.path for s in specs])
    firsts: dict[str, str] = {}
    for stem in stems:
        for split in plan.splits:
            name = plan.shard_name(stem, split, 0)
            if firsts.setdefault(name, stem) != stem:
                raise UsageError(f"--name {plan.name_template()!r} gives the inputs {firsts[name]!r} and {stem!r} the same "
                                 f"shard names ({name}); put {{stem}} in it")
    sides = {"--duplicates": plan.duplicates, "--excluded": plan.excluded} if not plan.streams else {}
    if plan.decontaminate:
        sides["contaminated"] = plan.contaminated
    if plan.near_dedup is not None:
        sides["near-duplicates"] = plan.near_duplicates
    if not rejects_outside(plan.split.rejects):
        check_rel_name(plan.split.rejects)
        sides["--rejects"] = plan.split.rejects
    refuse_side_name_clashes(plan.name_template(), stems, plan.splits, sides)
    check_rejects_path(plan.split.rejects, resume=resume)


def run_specs(specs: list[InputSpec], out: Path, plan: PipelineOptions, checks: Checks | None, *, resume: bool,
              overwrite: bool, dry_run: bool, progress: Progress | None, warn: Warn, warnings: list[str],
              stack: ExitStack, absolute_sources: bool = False, stems: Sequence[str] | None = None,
              schema=None, jobs: int = 1) -> SplitResult:
    """One run of `plan` over checked inputs into the local folder `out`."""
    # A shard committed just before a kill is not listed yet; a rerun writes the same bytes
    # under that name and adopts the file when it is identical.
    run = Run(specs, out, plan, checks, dry_run=dry_run, adopt_identical=resume or overwrite, progress=progress,
              warn=warn, absolute_sources=absolute_sources, stems=stems, jobs=jobs)
    if schema is not None:  # engine.py: the Parquet schema of all the inputs, inferred once
        run.schema = schema
    result = SplitResult(out=out, manifest={}, dry_run=dry_run, warnings=warnings, validation=run.report)
    old = run.prepare(resume=resume, overwrite=overwrite, stack=stack, result=result)
    if old is not None and old.get("complete"):
        result.manifest, result.already_complete = old, True
        return result
    result.resumed = old is not None
    result.manifest = run.execute()
    return result


def split_local(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    plan: PipelineOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    warn: Warn | None = None,
    jobs: int | None = None,
    absolute_sources: bool = False,
) -> SplitResult:
    """Split inputs into shards in the local folder `out`, inline (`shardkit.split` adds
    executors and object stores). Raises UsageError, InputError, DataError, ConflictError
    or Interrupted; whatever happens, no partial file appears under a final name."""
    specs = check_run_inputs(inputs, resume=resume, overwrite=overwrite, also=plan.exclude, arrays=True)
    check_plan(plan, specs, resume=resume)
    warnings: list[str] = []
    _warn = collecting_warn(warnings, warn)
    with ExitStack() as stack:
        checks = start_checks(stack, input_check(plan), specs, jobs)
        if jobs is None:
            sizes = [s.size for s in specs]
            jobs = auto_jobs(None if None in sizes else sum(sizes))
        return run_specs(specs, Path(out), plan, checks, resume=resume, overwrite=overwrite, dry_run=dry_run,
                         progress=progress, warn=_warn, warnings=warnings, stack=stack,
                         absolute_sources=absolute_sources, jobs=jobs)


def infer_schema(specs: list[InputSpec], out: Path, plan: PipelineOptions, checks: Checks | None, warn: Warn):
    """The Parquet schema of every record a plan writes from these inputs (engine.py infers
    it once for all its tasks)."""
    run = Run(specs, out, plan, checks, dry_run=True, adopt_identical=False, progress=None, warn=warn)
    return run.flow.infer_schema()


run_pipeline = split_local  # the name 0.1 gave it (`shardkit.run_pipeline`)

__all__ = ["Run", "Tally", "check_conservation", "infer_schema", "run_pipeline", "run_specs", "split_local"]
