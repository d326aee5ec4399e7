"""Many inputs at once: `--engine local|ray` runs one task per input file, then merges.

Each input is split by its own task into `OUT/.shardkit-parts/NNNNN/`, a complete split run
of its own (manifest, checkpoint, rejects): a task killed half-way resumes like any split.
The parent then merges the parts in input order: it renames each shard into OUT (same
folder tree, no copy), concatenates the rejects, writes manifest.json last and removes
the parts. Shard names, bytes, rejects and manifest are exactly those of a single-process
`split` of the same inputs (only `created_at` differs), whichever engine ran the tasks:
per-input work never depends on which worker did it or when.

`local` runs the tasks in a process pool on this machine; `ray` submits them as Ray tasks
(`shardkit[ray]`), to a local runtime or to the cluster named by RAY_ADDRESS. With Ray on
several machines OUT (or --staging, for an s3:// OUT) must be a folder every node sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from shardkit.core import faults
from shardkit.core.errors import ConflictError, DataError, InputError, ShardkitError, UsageError
from shardkit.core.io import (
    commit_file,
    create_temp,
    fsync_dir,
    rename_noreplace,
    sha256_file,
    write_all,
)
from shardkit.records.validate import Report
from shardkit.store.manifest import (
    MANIFEST_NAME,
    SUMS_NAME,
    now_iso,
    read_manifest,
    totals,
    write_manifest,
)
from shardkit.store.outdir import (
    PARTS_DIR,
    check_same_run,
    refuse_deleting_inputs,
    refuse_foreign_files,
    remove_listed,
    remove_part_files,
    remove_parts,
)

ENGINES = ("local", "ray")


@dataclass
class PartResult:
    index: int
    manifest: dict
    report: Report | None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def split_part(index: int, path: str, display: str, stem: str, part_dir: str, options, schema) -> PartResult:
    """One input, split alone into `part_dir` (resuming what an earlier attempt left there).

    The task body for both engines: a plain function of its arguments. `path` and
    `part_dir` are absolute (a Ray worker runs in a folder of its own); `display` is the
    input as the user named it, for messages and rejects, as in a single-process run."""
    from shardkit.core.io import inspect_input
    from shardkit.pipeline.run import run_specs
    from shardkit.pipeline.shard import start_checks
    from shardkit.pipeline.transform import PipelineOptions

    t0 = time.perf_counter()
    specs = [dataclasses.replace(inspect_input(path), display=display)]
    warnings: list[str] = []
    with ExitStack() as stack:
        checks = start_checks(stack, options.check, specs, 1)
        r = run_specs(specs, Path(part_dir), PipelineOptions(split=options), checks, resume=True, overwrite=False,
                      dry_run=False, progress=None, warn=warnings.append, warnings=warnings, stack=stack,
                      absolute_sources=True, stems=[stem], schema=schema)
    return PartResult(index, r.manifest, r.validation, warnings, time.perf_counter() - t0)


# ---------------------------------------------------------------- running tasks


def _init_local_worker(parent: int) -> None:
    """Ctrl-C goes to the parent, which stops the workers with SIGTERM: they die at once
    (what they leave is temp files, cleared by --resume), without a traceback each."""
    import signal

    from shardkit.records.check import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)
    gc.freeze()  # as the CLI does: what the worker holds now is never garbage


def run_tasks(fn: Callable, tasks: list[tuple], *, engine: str, jobs: int,
              done: Callable[[object], None] | None = None) -> list:
    """fn(*task) for every task, results in task order; the first failure stops the rest."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if engine == "ray":
        return _run_ray(fn, tasks, jobs, done)
    if jobs <= 1 or len(tasks) <= 1:
        results = []
        for t in tasks:
            results.append(fn(*t))
            if done:
                done(results[-1])
        return results
    from shardkit.records.check import mp_context

    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=mp_context(),
                               initializer=_init_local_worker, initargs=(os.getpid(),))
    futures = [pool.submit(fn, *t) for t in tasks]
    finished = False
    try:
        results = []
        for f in futures:
            try:
                results.append(f.result())
            except BrokenProcessPool:
                raise InputError("a worker process died (killed, or out of memory); nothing partial is "
                                 "under a final name: rerun with --resume to continue") from None
            if done:
                done(results[-1])
        finished = True
        return results
    finally:
        if not finished:
            # a failure, Ctrl-C or SIGTERM here: stop the other tasks now rather than let them
            # run to their end (each aborts its partial file; their parts resume later)
            for proc in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(OSError):
                    proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _in_ray_worker(fn: Callable, *task):
    """A task in a Ray worker: leave the objects Ray's worker already holds out of garbage
    collection first (as the CLI does for its own), then run it."""
    gc.freeze()
    return fn(*task)


# Ray settings for the driver shardkit connects, read by Ray's core worker when ray.init
# starts it (a variable the user set wins). Task events: the driver's reports of the tasks
# it submits, for the dashboard's task list; a driver that reports them waits for their
# last flush in ray.shutdown(), 0.25 s in most runs here (measured on fresh heads: shutdown
# took 0.28 s in 9 of 12 runs with them, in 3 of 11 without; else 0.03 s).
_RAY_DRIVER_ENV = {"RAY_task_events_report_interval_ms": "0"}


@contextlib.contextmanager
def _driver_env(values: dict[str, str]):
    """Set the variables not already set for the block, then restore the environment (the
    runtime a local ray.init starts inherits them: it is this run's own)."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _run_ray(fn: Callable, tasks: list[tuple], jobs: int, done) -> list:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs the ray extra: pip install 'shardkit[ray]'") from None
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        # RAY_ADDRESS names a running cluster; without it, a new local runtime of --jobs CPUs
        # ("local": never a cluster that happens to run on this machine, sized otherwise)
        with _driver_env(_RAY_DRIVER_ENV):
            ray.init(address=address or "local", num_cpus=None if address else jobs, include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
        started = True
    try:
        remote_fn = ray.remote(num_cpus=1, max_retries=0)(_in_ray_worker)
        refs = [remote_fn.remote(fn, *t) for t in tasks]
        results = []
        try:
            for ref in refs:
                results.append(ray.get(ref))
                if done:
                    done(results[-1])
        except ray.exceptions.RayError as e:
            for r in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(r)
            cause = getattr(e, "cause", None)
            if isinstance(cause, ShardkitError):
                raise cause from None
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise InputError(f"a Ray task failed ({e.__class__.__name__}: {first}); nothing partial is "
                             "under a final name: rerun with --resume to continue") from None
        return results
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- split


def split_many(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options,
    *,
    engine: str = "local",
    jobs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    absolute_sources: bool = False,
):
    """A plan with no record stage, one map task per input into the local folder `out`,
    reduced by a merge in input order (see the module doc); returns a SplitResult.
    `shardkit.split` calls it for --engine (and adds dry runs and object stores)."""
    from shardkit.pipeline.run import check_plan
    from shardkit.pipeline.shard import SplitResult, check_run_inputs, collecting_warn, source_path
    from shardkit.pipeline.transform import PipelineOptions

    plan = options if isinstance(options, PipelineOptions) else PipelineOptions(split=options)
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if not plan.streams:
        raise UsageError("split_many runs plans with no record stage; shardkit.split runs the others")
    paths = [os.fspath(p) for p in inputs]
    if "-" in paths:
        raise UsageError("--engine reads files, not stdin (-): stdin can be read once, by one process")
    specs = check_run_inputs(paths, resume=resume, overwrite=overwrite)
    check_plan(plan, specs, resume=resume)
    options = plan.split
    warnings: list[str] = []
    local = Path(out)
    sources = [source_path(s, None if absolute_sources else local) for s in specs]
    result = SplitResult(out=local, manifest={}, warnings=warnings)
    old = _prepare(local, specs, options, sources, resume=resume, overwrite=overwrite)
    if old is not None:
        result.manifest, result.already_complete = old, True
        return result
    result.resumed = resume and (local / PARTS_DIR).exists()
    _run_split(specs, local, plan, sources, engine=engine, jobs=jobs, progress=progress,
               warn=collecting_warn(warnings, warn), result=result)
    return result


def _abs_check(options):
    """The options as a task on another machine (another folder) must see them: the schema
    and tokenizer paths absolute. The manifest keeps the paths as given (`options.params()`)."""
    check = options.check
    if check is None:
        return options
    changes = {k: os.path.abspath(v) for k in ("schema", "tokenizer")
               if isinstance(v := getattr(check, k, None), str) and not _is_url(v) and os.path.exists(v)}
    return dataclasses.replace(options, check=dataclasses.replace(check, **changes)) if changes else options


def _run_split(specs, out: Path, plan, sources: list[str], *, engine, jobs, progress, warn, result) -> None:
    from shardkit.pipeline.run import infer_schema
    from shardkit.pipeline.shard import input_stems, start_checks
    from shardkit.records.check import auto_jobs

    options = plan.split
    created_at = now_iso()
    stems = input_stems([s.path for s in specs])
    schema = None
    if options.format == "parquet":
        # one schema for all the inputs, as a single-process run infers it
        with ExitStack() as stack:
            checks = start_checks(stack, options.check, specs, jobs)
            schema = infer_schema(specs, out, plan, checks, warn)
    if jobs is None:
        sizes = [s.size for s in specs]
        jobs = auto_jobs(None if None in sizes else sum(sizes))
    parts = out / PARTS_DIR
    _start_parts(parts, options, sources)
    # the gates judge the whole run; parts keep their rejects inside (merged to --rejects PATH)
    from shardkit.pipeline.shard import DEFAULT_REJECTS, rejects_outside

    task_options = dataclasses.replace(_abs_check(options), allow_empty=True, max_errors=None, max_reject_ratio=None,
                                       rejects=DEFAULT_REJECTS if rejects_outside(options.rejects) else options.rejects)
    tasks = [(i, spec.path if spec.remote else os.path.abspath(spec.path), spec.display, stems[i],
              os.path.abspath(parts / f"{i:05d}"), task_options, schema) for i, spec in enumerate(specs)]
    sizes = {i: spec.size or 0 for i, spec in enumerate(specs)}

    def done(part: PartResult) -> None:
        for w in part.warnings:
            if not _PART_SUMMARY.search(w):  # per-part totals: the run's total is said once, below
                warn(w)
        if progress:
            progress(sizes[part.index])

    results = run_tasks(split_part, tasks, engine=engine, jobs=jobs, done=done)
    report = None
    if options.check is not None:
        report = Report(max_examples=options.check.examples)
        for part in results:
            if part.report is not None:
                report.merge(part.report)
    result.validation = report
    result.manifest = _merge(out, parts, results, options, created_at, sources)
    rejected = result.manifest["counts"]["rejected"]
    if rejected:
        warn(f"{rejected} record(s) written to {options.rejects} (invalid, or larger than --max-bytes)")


_PART_SUMMARY = re.compile(r"^\d+ (invalid )?record\(s\) (larger than --max-bytes )?written to ")
RUN_FILE = "run.json"


def _start_parts(parts: Path, options, sources: list[str]) -> None:
    """Create the parts folder with what the run is (checked by --resume), or check it."""
    from shardkit.core.io import atomic_write

    run = {"params": options.params(), "sources": [{"path": p} for p in sources]}
    marker = parts / RUN_FILE
    if marker.exists():
        try:
            old = orjson.loads(marker.read_bytes())
        except (OSError, orjson.JSONDecodeError) as e:
            raise DataError(f"{marker}: unreadable ({e}); start again with --overwrite") from None
        check_same_run(parts.parent, old, options.params(), sources)
        return
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, orjson.dumps(run, option=orjson.OPT_INDENT_2), replace=False)


def _merge(out: Path, parts: Path, results: list[PartResult], options, created_at: str, sources_as: list[str]) -> dict:
    """The parts, in input order, as one run: shards renamed in, rejects concatenated,
    manifest written last (crash-safe: a rerun with --resume finishes an interrupted merge)."""
    taken: dict[str, int] = {}
    for part in results:  # the names first: a clash must stop the merge before any move
        for entry in part.manifest["files"]:
            name = entry["path"]
            if name in taken or name in (options.rejects, MANIFEST_NAME, SUMS_NAME):
                raise ConflictError(f"{out / name}: two inputs give this shard name; refusing to replace it "
                                    "(put {stem} in --name)")
            taken[name] = part.index
    files: list[dict] = []
    sources: list[dict] = []
    counts = dict.fromkeys(results[0].manifest["counts"], 0)
    for src, part in zip(sources_as, results, strict=True):
        pdir = parts / f"{part.index:05d}"
        for entry in part.manifest["files"]:
            _move_in(pdir / entry["path"], out / entry["path"], entry)
            faults.hit("after:merge_move")
            files.append({**entry, "source": src})
        sources += [{**s, "path": src} for s in part.manifest["sources"]]
        for k in counts:
            counts[k] += part.manifest["counts"][k]
    fsync_dir(out)
    from shardkit.pipeline.shard import rejects_entry_path, rejects_target

    target = rejects_target(out, options.rejects)
    rejects = _merge_rejects(target, [(parts / f"{p.index:05d}", p.manifest.get("rejects")) for p in results],
                             rejects_entry_path(out, target))
    from shardkit.pipeline.run import check_conservation
    from shardkit.pipeline.shard import GateError, refuse_unless_gates_pass

    check_conservation(counts)
    # the first part's manifest gives the shape (keys in the order an inline run writes them)
    m = {**results[0].manifest, "complete": True, "created_at": created_at, "params": options.params(),
         "sources": sources, "files": files, "rejects": rejects, "counts": counts, "totals": totals(files)}

    try:
        refuse_unless_gates_pass(out, m, options, dry_run=False, write=lambda m: write_manifest(out / MANIFEST_NAME, m))
    except GateError:
        remove_parts(parts)  # the run is over (refused): its files are listed, the scratch goes
        raise
    faults.hit("before:merge_manifest")
    write_manifest(out / MANIFEST_NAME, m)
    faults.hit("after:merge_manifest")
    remove_parts(parts)
    return m


def _move_in(src: Path, dst: Path, entry: dict) -> None:
    """Rename a part's shard into OUT; after an interrupted merge it may be there already."""
    if src.exists():
        try:
            rename_noreplace(src, dst)
            return
        except ConflictError:
            if sha256_file(dst) != entry["sha256"]:
                raise ConflictError(f"{dst}: exists with other content; not replaced (use --overwrite)") from None
            src.unlink()
            return
    if not dst.exists() or dst.stat().st_size != entry["bytes"] or sha256_file(dst) != entry["sha256"]:
        raise DataError(f"{src}: listed by its part's manifest but missing; rerun with --overwrite")


def _merge_rejects(final: Path, parts: list[tuple[Path, dict | None]], entry_path: str) -> dict | None:
    listed = [(d / e["path"], e) for d, e in parts if e]
    if not listed:
        return None
    records = sum(e["records"] for _, e in listed)
    h = hashlib.sha256()
    size = 0
    fd, tmp = create_temp(final.parent, final.name)
    try:
        for path, _ in listed:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    write_all(fd, chunk)
                    h.update(chunk)
                    size += len(chunk)
        sha = h.hexdigest()
        if final.exists():  # an interrupted merge got this far: same bytes, or a conflict
            if sha256_file(final) != sha:
                raise ConflictError(f"{final}: exists with other content; not replaced (use --overwrite)")
            os.close(fd)
            tmp.unlink()
        else:
            commit_file(fd, tmp, final, replace=False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return {"path": entry_path, "records": records, "bytes": size, "sha256": sha}


def _prepare(out: Path, specs, options, sources: list[str], *, resume: bool, overwrite: bool) -> dict | None:
    """OUT's rules for an engine run; returns the manifest of a run already complete."""
    from shardkit.core.io import remove_stale_temps

    if out.exists() and not out.is_dir():
        raise ConflictError(f"{out}: exists and is not a directory")
    parts = out / PARTS_DIR
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        old = read_manifest(manifest)
        if overwrite:
            refuse_deleting_inputs(out, old, specs)
            remove_listed(out, old)
            remove_part_files(out, parts, options.rejects)
            remove_stale_temps(out)
            return None
        if not resume:
            raise ConflictError(
                f"{out}: already holds a shardkit run ({MANIFEST_NAME}); use --resume to keep it, "
                "or --overwrite to replace the files it lists"
            )
        if not old.get("complete"):
            raise ConflictError(f"{out}: holds an interrupted run made without --engine; resume it the same way")
        check_same_run(out, old, options.params(), sources)
        remove_parts(parts)  # a merge killed after its manifest: only the scratch is left
        remove_stale_temps(out)
        return old
    if parts.exists():
        if overwrite:
            remove_part_files(out, parts, options.rejects)
        elif not resume:
            raise ConflictError(f"{out}: holds an interrupted --engine run ({PARTS_DIR}); "
                                "use --resume to continue it, or --overwrite to start again")
        remove_stale_temps(out)
        return None
    if out.exists():
        refuse_foreign_files(out)
        remove_stale_temps(out)
    return None


# ---------------------------------------------------------------- validate and stats


def _task_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[str, str]]:
    """(path a worker can open, name the user gave) for each input; stdin refused."""
    from shardkit.core.io import inspect_input

    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise UsageError("give at least one input file")
    if "-" in paths:
        raise UsageError("--engine reads files, not stdin (-): stdin can be read once, by one process")
    specs = [inspect_input(p) for p in paths]  # missing inputs fail here, before any task
    return [(s.path if s.remote else os.path.abspath(s.path), s.display) for s in specs]


def validate_part(index: int, path: str, display: str, options, rejects_dir: str | None, token: str) -> tuple:
    """One input validated alone: (its Report, the file holding its rejects or None)."""
    from shardkit.core.io import inspect_input
    from shardkit.pipeline.scan import RejectsSink, validate_one
    from shardkit.records.check import Checks

    spec = dataclasses.replace(inspect_input(path), display=display)
    report = Report(max_examples=options.examples)
    sink = None
    if rejects_dir is not None:
        sink = RejectsSink(Path(rejects_dir) / f".shardkit-part-{token}-{index:05d}.jsonl")
    try:
        with Checks(options, 1) as checks:
            validate_one(spec, checks, report, sink, None)
        if sink is not None and sink.records:
            sink.publish()
            return report, str(sink.final)
        return report, None
    finally:
        if sink is not None:
            sink.abort()


def validate_many(inputs, *, engine: str, jobs: int | None = None, rejects: str | os.PathLike | None = None,
                  max_errors: int = 0, max_reject_ratio: float | None = None, progress: Callable[[int], None] | None = None, **check_options):
    """`validate` with one task per input: the same report and rejects file, in input order."""
    from shardkit.pipeline.scan import RejectsSink, ValidationResult
    from shardkit.records.check import CheckOptions, auto_jobs

    tasks_in = _task_inputs(inputs)
    options = CheckOptions(**check_options)
    if rejects is not None and not Path(rejects).resolve().parent.is_dir():
        raise InputError(f"{rejects}: its folder does not exist")
    sink = RejectsSink(Path(rejects)) if rejects is not None else None  # refuses an existing file now
    task_options = dataclasses.replace(options, **{
        k: os.path.abspath(v) for k in ("schema", "tokenizer")
        if isinstance(v := getattr(options, k), str) and not _is_url(v) and os.path.exists(v)})
    if jobs is None:
        jobs = auto_jobs(sum(os.path.getsize(p) for p, _ in tasks_in if not _is_url(p)))
    rdir = str(Path(rejects).resolve().parent) if rejects is not None else None
    sizes = [0 if _is_url(p) else os.path.getsize(p) for p, _ in tasks_in]
    token = secrets.token_hex(6)
    tasks = [(i, p, d, task_options, rdir, token) for i, (p, d) in enumerate(tasks_in)]
    try:
        results = run_tasks(validate_part, tasks, engine=engine, jobs=jobs)
    except BaseException:
        if rdir is not None:  # the rejects of the tasks that did finish
            for leftover in Path(rdir).glob(f".shardkit-part-{token}-*.jsonl"):
                leftover.unlink(missing_ok=True)
        raise
    report = Report(max_examples=options.examples)
    try:
        for (part_report, part_rejects), size in zip(results, sizes, strict=True):
            report.merge(part_report)
            if progress:
                progress(size)
            if part_rejects is not None and sink is not None:
                with open(part_rejects, "rb") as f:
                    for line in f:
                        sink.add_raw(line)
        if sink is not None:
            sink.publish()
    finally:
        for _, part_rejects in results:
            if part_rejects is not None:
                Path(part_rejects).unlink(missing_ok=True)
        if sink is not None:
            sink.abort()
    return ValidationResult(report, max_errors, Path(rejects) if rejects else None, max_reject_ratio=max_reject_ratio)


def _is_url(path: str) -> bool:
    from shardkit.core.objects import is_url

    return is_url(path)


def stats_part(index: int, path: str, display: str, tokenizer_path: str | None, examples: int,
               shingle: int | None = None) -> tuple:
    """One input's rows and tally, as compute_stats gathers them (file index = `index`)."""
    from shardkit.core.io import inspect_input
    from shardkit.pipeline.stats import StatsColumns, scan_input
    from shardkit.records.template import load_chat_template
    from shardkit.records.tokens import load_tokenizer

    spec = dataclasses.replace(inspect_input(path), display=display)
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path is not None else None
    template = load_chat_template(tokenizer_path) if tokenizer_path is not None else None
    columns = StatsColumns(with_tokens=tokenizer is not None, shingle=shingle)
    tally = scan_input(index, spec, columns, tokenizer, examples, None, template)
    return columns, tally


def stats_many(inputs, *, engine: str, jobs: int | None = None, tokenizer_path: str | None = None,
               seq_len: int | None = None, near_dup: float | None = None, shingle: int = 5, examples: int = 3,
               progress: Callable[[int], None] | None = None) -> dict:
    """`stats` with one task per input: the same report as compute_stats."""
    from shardkit.pipeline.stats import StatsColumns, stats_report
    from shardkit.records.check import auto_jobs

    tasks_in = _task_inputs(inputs)
    if jobs is None:
        jobs = auto_jobs(sum(os.path.getsize(p) for p, _ in tasks_in if not _is_url(p)))
    if tokenizer_path is not None:
        from shardkit.records.tokens import load_tokenizer

        load_tokenizer(tokenizer_path)  # a bad tokenizer fails before any task
    task_tokenizer = os.path.abspath(tokenizer_path) if tokenizer_path and os.path.exists(tokenizer_path) else tokenizer_path
    task_shingle = shingle if near_dup is not None else None
    tasks = [(i, p, d, task_tokenizer, examples, task_shingle) for i, (p, d) in enumerate(tasks_in)]
    results = run_tasks(stats_part, tasks, engine=engine, jobs=jobs)
    merged = StatsColumns(with_tokens=tokenizer_path is not None, shingle=task_shingle)
    tallies = []
    for (columns, tally), (p, _) in zip(results, tasks_in, strict=True):
        tally.first_row = len(merged.kind)
        for name in ("file", "line", "kind", "chars", "messages", "turns", "tokens"):
            getattr(merged, name).extend(getattr(columns, name))
        merged.hashes += columns.hashes
        merged.signatures += columns.signatures
        merged.signed += columns.signed
        tallies.append(tally)
        if progress and not _is_url(p):
            progress(os.path.getsize(p))
    return stats_report(merged, tallies, examples, tokenizer_path, seq_len, near_dup)
