"""`split`: one entry point, every option with every format, executor and store.

A run is a plan (the options), run by an executor, published to a store::

    plan        SplitOptions (cut, check, format), or PipelineOptions (those plus shuffle,
                holdout, dedup, exclude, --to): the stages each record goes through
    driver      `run.Run`, the one split driver: source, the plan's flow, sinks, manifest
    executor    inline (engine None), a local process pool or Ray (`engine.run_tasks`)
    store       a local folder, or an object-store URL: the run is written into a local
                staging folder and published object by object, manifest last
                (`shard.run_staged`)

With an engine, a plan with no record stage runs as a map/reduce: one task per input runs
the driver into a scratch folder, and the parts are merged in input order
(`engine.split_many`). A plan with a record stage (whose dedup, holdout and shuffle see
all inputs at once) runs the driver as one task on the executor, its --validate stage
on --jobs worker processes there.

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
from shardkit.pipeline.run import split_local
from shardkit.pipeline.shard import (
    SplitOptions,
    SplitResult,
    check_run_inputs,
    holds_json_array,
    run_staged,
    source_path,
)
from shardkit.pipeline.transform import PipelineOptions
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
    plan = options if isinstance(options, PipelineOptions) else PipelineOptions(split=options)
    paths = [os.fspath(p) for p in inputs]
    if engine is not None and "-" in paths:
        raise UsageError("--engine reads files, not stdin (-): stdin can be read once, by one process")
    url = os.fspath(out) if objects.is_url(os.fspath(out)) else None
    if url is None and staging is not None:
        raise UsageError("--staging is for an s3:// (object store) OUT; this OUT is a local folder")

    def execute(local: Path, absolute: bool) -> SplitResult:
        kw = dict(resume=resume, overwrite=overwrite, jobs=jobs, absolute_sources=absolute)
        if engine is None or dry_run:  # a dry run writes nothing: inline says the same
            return split_local(paths, local, plan, dry_run=dry_run, progress=progress, warn=warn, **kw)
        if plan.streams and not plan.spans_inputs(len(paths)) and not _any_json_array(paths):
            # map: a task per input; reduce: merge in input order
            return split_many(paths, local, plan, engine=engine, progress=progress, warn=warn, **kw)
        task = (os.getcwd(), paths, os.fspath(local), plan, kw)
        [result] = run_tasks(run_plan_task, [task], engine=engine, jobs=1)
        for w in result.warnings:
            if warn is not None:
                warn(w)
        return result

    if url is None:
        return execute(Path(objects.local_path(os.fspath(out))), absolute=False)

    def same_run(old: dict) -> None:
        specs = check_run_inputs(paths, resume=resume, overwrite=overwrite, also=plan.exclude, arrays=True)
        evals = [source_path(inspect_input(p), None) for p in plan.exclude]
        check_same_run(url, old, plan.params(evals), [source_path(s, None) for s in specs])

    return run_staged(url, staging, resume=resume, overwrite=overwrite, dry_run=dry_run, same_run=same_run,
                      run=lambda stage: execute(stage, absolute=True))


def _any_json_array(paths: list[str]) -> bool:
    return any(p != "-" and holds_json_array(inspect_input(p)) for p in paths)


def run_plan_task(cwd: str, inputs: list[str], out: str, plan: PipelineOptions, kw: dict) -> SplitResult:
    """The driver as one executor task. It runs in the caller's folder, so that relative
    paths, and the names the manifest and side files give them, are exactly those of an
    inline run (a Ray worker starts elsewhere; on a cluster the folder must exist on the
    node, as OUT must)."""
    here = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError as e:
        raise UsageError(f"{cwd}: this folder does not exist where the task runs; run from a folder every node "
                         f"sees: {e}") from None
    try:
        return split_local(inputs, out, plan, **kw)
    finally:
        os.chdir(here)


__all__ = ["run_plan_task", "split"]
