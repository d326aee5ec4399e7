"""`split`: one entry point, every option with every format, executor and store.

A run is a plan (the options), run by an executor, published to a store::

    plan        SplitOptions (cut, check, format) or PipelineOptions (plus shuffle, holdout,
                dedup, exclude, --to): the stages each record goes through
    executor    inline (engine None), a local process pool or Ray (`engine.run_tasks`)
    store       a local folder, or an object-store URL: the run is written into a local
                staging folder and published object by object, manifest last
                (`shard.run_staged`)

Which stages run decides how the records flow:

- no record stage (cut, --validate, --format): the byte-streaming splitter (`shard`), which
  copies whole runs of lines without touching records one by one and resumes from the
  record after the last committed shard. With an engine, one task per input, merged in
  input order (`engine.split_many`).
- a record stage (shuffle, holdout, dedup, exclude, --to), or an input that is one JSON
  array (its elements are parsed out, each written as one compact line): the record pipeline
  (`transform`), whose dedup, holdout and shuffle see all inputs at once. With an
  engine, the whole plan runs as one task on the executor (its --validate stage uses
  --jobs worker processes there); see docs/ARCHITECTURE.md for why it is not split
  into per-input tasks yet.

Either way the shards, side files and manifest are byte-identical (except `created_at`)
whichever executor ran the plan and whichever store it was published to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from shardkit.core import objects
from shardkit.core.errors import UsageError
from shardkit.core.io import inspect_input
from shardkit.pipeline.engine import ENGINES, run_tasks, split_many
from shardkit.pipeline.shard import (
    SplitOptions,
    SplitResult,
    check_run_inputs,
    holds_json_array,
    run_staged,
    source_path,
)
from shardkit.pipeline.shard import split as split_streaming
from shardkit.pipeline.transform import PipelineOptions, run_pipeline
from shardkit.store.outdir import check_same_run

Progress = Callable[[int], None]
Warn = Callable[[str], None]


def split(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    options: SplitOptions | PipelineOptions,
    *,
    engine: str | None = None,
    jobs: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    warn: Warn | None = None,
    staging: str | os.PathLike | None = None,
) -> SplitResult:
    """Split JSONL inputs into shards in `out` (a folder or an object-store URL), with
    manifest.json and SHA256SUMS. `options` is the plan; `engine` (None, "local" or "ray")
    the executor. Raises UsageError, InputError, DataError, ConflictError or Interrupted
    (each with its exit code); whatever happens, no partial file appears under a final name.
    """
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if isinstance(options, SplitOptions) and _any_json_array(inputs):
        options = PipelineOptions(split=options)  # records are parsed out of the array: the record pipeline
    if isinstance(options, SplitOptions):
        if engine is not None:
            return split_many(inputs, out, options, engine=engine, jobs=jobs, resume=resume, overwrite=overwrite,
                              dry_run=dry_run, progress=progress, warn=warn, staging=staging)
        return split_streaming(inputs, out, options, resume=resume, overwrite=overwrite, dry_run=dry_run,
                               progress=progress, warn=warn, jobs=jobs, staging=staging)
    return _split_records(inputs, out, options, engine=engine, jobs=jobs, resume=resume, overwrite=overwrite,
                          dry_run=dry_run, progress=progress, warn=warn, staging=staging)


def _any_json_array(inputs) -> bool:
    paths = [os.fspath(p) for p in inputs]
    return any(p != "-" and holds_json_array(inspect_input(p)) for p in paths)


def _split_records(inputs, out, options: PipelineOptions, *, engine, jobs, resume, overwrite, dry_run, progress,
                   warn, staging) -> SplitResult:
    paths = [os.fspath(p) for p in inputs]
    if engine is not None and "-" in paths:
        raise UsageError("--engine reads files, not stdin (-): stdin can be read once, by one process")
    url = os.fspath(out) if objects.is_url(os.fspath(out)) else None
    if url is None and staging is not None:
        raise UsageError("--staging is for an s3:// (object store) OUT; this OUT is a local folder")

    def run(local: Path, absolute: bool) -> SplitResult:
        kw = dict(resume=resume, overwrite=overwrite, dry_run=dry_run, jobs=jobs, absolute_sources=absolute)
        if engine is None or dry_run:  # a dry run writes nothing: inline says the same
            return run_pipeline(paths, local, options, progress=progress, warn=warn, **kw)
        task = (os.getcwd(), paths, os.fspath(local), options, kw)
        [result] = run_tasks(run_pipeline_task, [task], engine=engine, jobs=1)
        for w in result.warnings:
            if warn is not None:
                warn(w)
        return result

    if url is None:
        return run(Path(objects.local_path(os.fspath(out))), absolute=False)

    def same_run(old: dict) -> None:
        specs = check_run_inputs(paths, resume=resume, overwrite=overwrite, also=options.exclude, arrays=True)
        evals = [source_path(inspect_input(p), None) for p in options.exclude]
        check_same_run(url, old, options.params(evals), [source_path(s, None) for s in specs])

    return run_staged(url, staging, resume=resume, overwrite=overwrite, dry_run=dry_run, same_run=same_run,
                      run=lambda stage: run(stage, absolute=True))


def run_pipeline_task(cwd: str, inputs: list[str], out: str, options: PipelineOptions, kw: dict) -> SplitResult:
    """The record pipeline as one executor task. It runs in the caller's folder, so that
    relative paths, and the names the manifest and side files give them, are exactly those
    of an inline run (a Ray worker starts elsewhere; on a cluster the folder must exist on
    the node, as OUT must)."""
    here = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError as e:
        raise UsageError(f"{cwd}: this folder does not exist where the task runs; run from a folder every node "
                         f"sees: {e}") from None
    try:
        return run_pipeline(inputs, out, options, **kw)
    finally:
        os.chdir(here)


__all__ = ["run_pipeline_task", "split"]
