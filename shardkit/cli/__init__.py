"""The `shardkit` command: parse arguments, call the library, render, map errors to exit codes.

Nothing here decides anything about data; every command is one library call.
"""


import contextlib
import gc
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from shardkit import __version__
from shardkit.core.errors import ShardkitError, UsageError
from shardkit.core.io import format_size, parse_size

app = typer.Typer(
    help="Keep LLM fine-tuning data healthy: split big JSONL files into shards, with a manifest "
    "and checksums the trainer can trust.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# ---------------------------------------------------------------- plumbing


def _emit_error(message: str) -> None:
    sys.stderr.write(f"shardkit: error: {_safe(message)}\n")


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn library errors into one line on stderr and the documented exit code."""
    try:
        yield
    except ShardkitError as e:
        _emit_error(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _emit_error("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise typer.Exit(0) from None
    except OSError as e:
        _emit_error(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "))
        raise typer.Exit(3) from None


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _warn_printer(quiet: bool):
    def warn(message: str) -> None:
        if not quiet:
            sys.stderr.write(f"shardkit: warning: {message}\n")

    return warn


@contextlib.contextmanager
def _progress(total: int | None, enabled: bool, desc: str) -> Iterator[Any]:
    """A tqdm byte counter on stderr, only on a terminal; None otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr) as bar:
        yield bar.update


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def _safe(text: object) -> str:
    """A file name or message for the terminal: control characters shown as \\xNN, never sent."""
    return str(text).translate(_CONTROL)


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _size_option(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except UsageError as e:
        raise typer.BadParameter(str(e).replace("invalid size", f"{flag}: invalid size")) from None


def _jobs_option(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"expected a positive number or auto, got {value!r}", param_hint="--jobs")
    return n


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shardkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Keep LLM fine-tuning data healthy.

    Exit codes: 0 done; 1 the data is bad (invalid records, checksum mismatch);
    2 usage error; 3 input missing/unreadable or disk full; 4 conflict (output
    exists, name taken); 130 interrupted (nothing partial is left behind).
    """


# ---------------------------------------------------------------- split


@app.command()
def split(
    inputs: Annotated[
        list[str],
        typer.Argument(help="JSONL files to split: plain, .gz or .zst (detected by content); - reads stdin.", show_default=False),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output folder for shards, manifest.json and SHA256SUMS (new or empty), or an s3:// prefix (needs shardkit[s3]).", show_default=False)
    ],
    max_records: Annotated[
        int | None, typer.Option("--max-records", "-n", help="At most N records per shard.", min=1, show_default=False)
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option(
            "--max-bytes",
            "-b",
            help="At most SIZE bytes per shard on disk: 64MB (10^6), 64MiB or 64M (2^20), 1G...",
            show_default=False,
        ),
    ] = None,
    num_shards: Annotated[
        int | None,
        typer.Option("--num-shards", help="Exactly N shards per input, balanced by record count (reads the input twice; not for stdin).", min=1, show_default=False),
    ] = None,
    oversize: Annotated[
        str,
        typer.Option(
            "--oversize",
            help="A single record larger than --max-bytes: own-shard (write it alone, warn), reject (to the rejects file), error (stop, exit 1).",
        ),
    ] = "own-shard",
    name: Annotated[
        str, typer.Option("--name", help="Shard file name template; fields {stem} (input name without extensions), {index}, and {split} with --holdout.")
    ] = "{stem}-{index:05d}.jsonl",
    rejects: Annotated[
        str, typer.Option("--rejects", help="Name of the rejects file inside OUT (original bytes + file, line, reason).")
    ] = "rejects.jsonl",
    validate: Annotated[
        str | None,
        typer.Option(
            "--validate",
            help="Check every record in the same pass: a kind (chat, prompt-completion, alpaca, sharegpt, text), auto, or a JSON Schema file; invalid records go to the rejects file.",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="With --validate: records longer than N tokens are rejected (needs --tokenizer).", min=1, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder holding one, for --max-tokens.", show_default=False)] = None,
    max_line_bytes: Annotated[str, typer.Option("--max-line-bytes", help="With --validate: longer lines are invalid and not decoded.")] = "16MiB",
    jobs: Annotated[str, typer.Option("--jobs", "-j", help="Worker processes (for --validate, or per file with --engine): a number or auto (all cores for inputs over 32 MiB).")] = "auto",
    fmt: Annotated[str, typer.Option("--format", "-f", help="Shard format: jsonl (byte-exact copies) or parquet (schema from the whole input).")] = "jsonl",
    compression: Annotated[str | None, typer.Option("--compression", help="Parquet page codec: zstd (default), snappy, gzip, none.", show_default=False)] = None,
    row_group_bytes: Annotated[str | None, typer.Option("--row-group-bytes", help="Parquet row groups of about SIZE uncompressed (default 64MiB).", show_default=False)] = None,
    schema_from: Annotated[Path | None, typer.Option("--schema-from", help="Use the schema of this Parquet file (e.g. last week's shards); skip inference.", show_default=False)] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle", help="Shuffle all inputs together (two passes, bounded memory); shards are named part-NNNNN.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for --shuffle: same seed and inputs, byte-identical shards.", show_default=False)] = None,
    shuffle_memory: Annotated[str, typer.Option("--shuffle-memory", help="Memory for one shuffle bucket.")] = "256MB",
    holdout: Annotated[float | None, typer.Option("--holdout", help="Fraction of records for a validation split, chosen by a stable hash (same record, same split, whatever else arrives).", min=0.0, max=1.0, show_default=False)] = None,
    holdout_key: Annotated[str | None, typer.Option("--holdout-key", help="Hash this field instead of the whole record (keeps a group together).", show_default=False)] = None,
    holdout_seed: Annotated[int, typer.Option("--holdout-seed", help="Seed of the holdout hash.")] = 0,
    dedup: Annotated[str | None, typer.Option("--dedup", help="exact: drop exact duplicates (normalised JSON) across all inputs, keeping the first; dropped ones go to duplicates.jsonl.", show_default=False)] = None,
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", help="Drop records that appear in this eval file (repeatable); they go to excluded.jsonl.", show_default=False)] = None,
    exclude_key: Annotated[str, typer.Option("--exclude-key", help="Match --exclude by: record, first-user, prompt or a FIELD.")] = "record",
    to: Annotated[str | None, typer.Option("--to", help="chat: convert alpaca, sharegpt and prompt/completion records to chat messages.", show_default=False)] = None,
    on_conflict: Annotated[str, typer.Option("--on-conflict", help="Parquet: a field with two incompatible types: json-string (store it as JSON text, warn) or error.")] = "json-string",
    engine: Annotated[
        str | None, typer.Option("--engine", help="Run on an executor: local (a process pool) or ray (Ray tasks; RAY_ADDRESS names a cluster). Same shards and manifest as without it. Without --shuffle/--holdout/--dedup/--exclude/--to: one task per input file, --jobs workers; with them: the whole plan as one task.", show_default=False)
    ] = None,
    staging: Annotated[
        Path | None, typer.Option("--staging", help="With an s3:// OUT: local folder where shards are prepared before upload (default: one per OUT under the temp dir, or $SHARDKIT_STAGING).", show_default=False)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in OUT from its last committed shard (same inputs and options).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a previous run in OUT: deletes exactly the files its manifest lists, nothing else.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read the inputs and print the shards that would be written; write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON summary on stdout and nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, summary or warnings; errors only.")] = False,
) -> None:
    """Split JSONL (or Parquet) files into JSONL or Parquet shards of at most N records or SIZE bytes.

    Records are copied byte for byte: the shards, concatenated in manifest order,
    equal the inputs' non-blank lines. Each shard appears atomically, and
    manifest.json + SHA256SUMS are rewritten after every shard, so an interrupted
    run continues with --resume.

    Example: shardkit split big.jsonl -o shards/ --max-records 50000 --validate chat
    """
    from shardkit.pipeline.driver import split as run_split
    from shardkit.pipeline.shard import DEFAULT_NAME, SplitOptions
    from shardkit.records.check import CheckOptions

    with exit_on_error():
        check = None
        if validate is not None:
            check = CheckOptions.from_spec(
                validate, max_tokens=max_tokens, tokenizer=str(tokenizer) if tokenizer else None,
                max_line_bytes=_size_option(max_line_bytes, "--max-line-bytes"),
            )
        elif max_tokens is not None or tokenizer is not None:
            raise UsageError("--max-tokens and --tokenizer work with --validate KIND")
        parquet = None
        if fmt == "parquet":
            from shardkit.pipeline.parquet import ParquetOptions

            _freeze_heap()  # pyarrow's objects too
            parquet = ParquetOptions(
                compression=compression or "zstd",
                row_group_bytes=_size_option(row_group_bytes, "--row-group-bytes") or 64 * 2**20,
                on_conflict=on_conflict, schema_from=str(schema_from) if schema_from else None,
            )
        elif compression not in (None, "none") or row_group_bytes or schema_from or on_conflict != "json-string":
            raise UsageError("--compression, --row-group-bytes, --schema-from and --on-conflict apply to --format parquet "
                             "(JSONL shards are plain, byte-exact copies)")
        pipeline = bool(shuffle or holdout is not None or dedup or exclude or to)
        if seed is not None and not shuffle:
            raise UsageError("--seed goes with --shuffle (the holdout has its own --holdout-seed)")
        options = SplitOptions(
            max_records=max_records,
            max_bytes=_size_option(max_bytes, "--max-bytes"),
            num_shards=num_shards,
            oversize=oversize,
            name=DEFAULT_NAME if pipeline else name,
            rejects=rejects,
            check=check,
            format=fmt,
            parquet=parquet,
        )
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        if pipeline:
            from shardkit.pipeline.transform import PipelineOptions

            options = PipelineOptions(
                split=options, name=None if name == DEFAULT_NAME else name, shuffle=shuffle, seed=seed or 0,
                shuffle_memory=_size_option(shuffle_memory, "--shuffle-memory"), holdout=holdout,
                holdout_key=holdout_key, holdout_seed=holdout_seed, dedup=dedup,
                exclude=tuple(str(p) for p in exclude or ()), exclude_key=exclude_key, to=to,
            )
        with _progress(total, not (quiet or json_output), "split") as progress:
            result = run_split(
                inputs,
                out,
                options,
                engine=engine,
                resume=resume,
                overwrite=overwrite,
                dry_run=dry_run,
                progress=progress,
                warn=_warn_printer(quiet or json_output),
                jobs=_jobs_option(jobs),
                staging=staging,
            )
    if json_output:
        _print_json(result.summary())
    elif not quiet:
        _render_split(result)


def _render_split(result) -> None:
    m = result.manifest
    c, t = m["counts"], m["totals"]
    if result.already_complete:
        typer.echo(f"{result.out}: already complete ({t['files']} shards, {t['records']:,} records); nothing to do")
        return
    verb = "would write" if result.dry_run else ("resumed and wrote" if result.resumed else "wrote")
    files = m["files"]
    for f in files[:10]:
        where = f"  lines {f['first_line']}-{f['last_line']}" if f.get("first_line") is not None else ""
        typer.echo(f"  {f['path']}  {f['records']:>10,} records  {format_size(f['bytes']):>10}{where}")
    if len(files) > 10:
        typer.echo(f"  ... and {len(files) - 10} more")
    typer.echo(
        f"{verb} {t['files']} shard(s), {t['records']:,} records, {format_size(t['bytes'])} in {result.out}"
    )
    extra = "".join(f" + {c[k]:,} {k}" for k in ("duplicates", "excluded") if k in c)
    typer.echo(
        f"records: {c['read']:,} lines read = {c['written']:,} written + {c['rejected']:,} rejected{extra} + {c['blank']:,} blank"
    )
    if result.validation is not None:
        note = " (this resumed part only)" if result.resumed else ""
        typer.echo(f"validation{note}:")
        for line in result.validation.lines():
            typer.echo(f"  {line}")
    if result.dry_run:
        return
    if isinstance(result.out, str):  # an object-store URL
        typer.echo(f"manifest: {result.out.rstrip('/')}/manifest.json  (check: shardkit verify {result.out})")
    else:
        typer.echo(f"manifest: {result.out / 'manifest.json'}  (check: cd {result.out} && sha256sum -c SHA256SUMS)")


# ---------------------------------------------------------------- manifest / verify


@app.command("manifest")
def manifest_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder of shards to describe.", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the manifest (default DIR/manifest.json); SHA256SUMS goes beside it.", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifest on stdout.")] = False,
) -> None:
    """Regenerate manifest.json and SHA256SUMS from the shard files on disk (or of a queue ROOT).

    On a queue root: every queue file with state, priority, records, bytes, sha256 and
    attempts; a rerun rehashes only files whose (inode, size, mtime) changed.
    Entries of an existing manifest whose file is unchanged keep their lineage
    (source, first/last line); new files are added by name; missing ones dropped.

    Example: shardkit manifest shards/
    """
    from shardkit.queue.state import Queue, is_queue_root, queue_manifest
    from shardkit.store.manifest import regenerate

    with exit_on_error():
        if is_queue_root(directory):
            if output is not None:
                raise UsageError("a queue manifest is always ROOT/manifest.json; drop --output")
            m = queue_manifest(Queue(directory))
        else:
            m = regenerate(directory, output)
    if json_output:
        _print_json(m)
    else:
        t = m["totals"]
        typer.echo(f"manifest: {t['files']} file(s), {t['records']:,} records, {format_size(t['bytes'])} -> {output or directory / 'manifest.json'}")


@app.command()
def verify(
    manifest: Annotated[str, typer.Argument(help="manifest.json (or the folder holding it); an s3:// URL works too (needs shardkit[s3]).", show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recompute every listed file's size, sha256 and record count; exit 1 on any mismatch.

    Example: shardkit verify shards/manifest.json
    """
    from shardkit.store.manifest import verify as run_verify

    with exit_on_error():
        result = run_verify(manifest)
    if json_output:
        _print_json(result.to_dict())
    else:
        for problem in result.problems:
            sys.stderr.write(f"shardkit: mismatch: {problem}\n")
        for name in result.extra:
            sys.stderr.write(f"shardkit: note: {name} is not listed in the manifest\n")
        status = "OK" if result.ok else f"FAILED ({len(result.problems)} problem(s))"
        typer.echo(f"{result.manifest}: {result.checked} file(s) checked: {status}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def validate(
    inputs: Annotated[list[str], typer.Argument(help="JSONL files (plain, .gz, .zst, - for stdin) or .json array files.", show_default=False)],
    kind: Annotated[str, typer.Option("--kind", "-k", help="Record kind: chat, prompt-completion, alpaca, sharegpt, text, or auto (detect per record).")] = "auto",
    schema: Annotated[Path | None, typer.Option("--schema", help="Validate against this JSON Schema (Draft 2020-12) instead of a built-in kind.", show_default=False)] = None,
    max_errors: Annotated[int, typer.Option("--max-errors", help="Exit 0 while invalid records are at most N.", min=0)] = 0,
    max_line_bytes: Annotated[str, typer.Option("--max-line-bytes", help="Longer lines are invalid and not decoded (e.g. 16MiB).")] = "16MiB",
    rejects: Annotated[Path | None, typer.Option("--rejects", help="Write invalid records (original bytes, file, line, offset, reason) to this new JSONL file.", show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Records longer than N tokens are invalid (needs --tokenizer).", min=1, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder holding one (needs shardkit[tokens]).", show_default=False)] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", help="Worker processes: a number, or auto (all cores for inputs over 32 MiB).")] = "auto",
    engine: Annotated[str | None, typer.Option("--engine", help="local or ray: one task per input file (same report and rejects as without it).", show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the exit code and errors.")] = False,
) -> None:
    """Check every record: JSON, UTF-8, kind; report file:line, JSON path and what is wrong.

    Exit 0 when invalid records <= --max-errors, 1 otherwise, 3 for unreadable input.

    Example: shardkit validate data.jsonl --kind chat --rejects bad.jsonl
    """
    from shardkit.pipeline.scan import validate_files

    with exit_on_error():
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        with _progress(total, not (quiet or json_output), "validate") as progress:
            if engine is not None:
                from shardkit.pipeline.engine import validate_many

                result = validate_many(
                    inputs, engine=engine, jobs=_jobs_option(jobs), rejects=rejects, max_errors=max_errors,
                    progress=progress, kind=kind, schema=str(schema) if schema else None,
                    max_line_bytes=_size_option(max_line_bytes, "--max-line-bytes"), max_tokens=max_tokens,
                    tokenizer=str(tokenizer) if tokenizer else None,
                )
            else:
                result = validate_files(
                    inputs, kind=kind, schema=schema, max_errors=max_errors,
                    max_line_bytes=_size_option(max_line_bytes, "--max-line-bytes"),
                    max_tokens=max_tokens, tokenizer=tokenizer,
                    rejects=rejects, jobs=_jobs_option(jobs), progress=progress,
                )
    if json_output:
        _print_json(result.to_dict())
    elif not quiet:
        for line in result.report.lines():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def stats(
    inputs: Annotated[list[str], typer.Argument(help="JSONL files (plain, .gz, .zst).", show_default=False)],
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder holding one (needs shardkit[tokens]).", show_default=False)] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="local or ray: read each input in its own task (same report as without it).", show_default=False)] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", help="With --engine: worker processes, a number or auto.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
) -> None:
    """Records, kinds, messages and turns, length percentiles, histogram, exact duplicates, tokens.

    Example: shardkit stats train.jsonl --tokenizer models/Qwen3-0.6B
    """
    from shardkit.pipeline.stats import compute_stats, render_stats

    with exit_on_error():
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        with _progress(total, not json_output, "stats") as progress:
            if engine is not None:
                from shardkit.pipeline.engine import stats_many

                report = stats_many(inputs, engine=engine, jobs=_jobs_option(jobs),
                                    tokenizer_path=str(tokenizer) if tokenizer else None, progress=progress)
            else:
                report = compute_stats(inputs, tokenizer_path=str(tokenizer) if tokenizer else None, progress=progress)
    if json_output:
        _print_json(report)
    else:
        for line in render_stats(report):
            typer.echo(line)


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")]


@app.command()
def overlap(
    train: Annotated[list[str], typer.Argument(help="Training inputs (JSONL, .gz, .zst, .json arrays).", show_default=False)],
    against: Annotated[list[Path], typer.Option("--against", help="Eval inputs to look for in the training inputs (repeatable).", show_default=False)],
    key: Annotated[str, typer.Option("--key", help="Match by: record (normalised JSON), first-user, prompt, or a FIELD.")] = "record",
    examples: Annotated[int, typer.Option("--examples", help="Pairs of file:line to show.", min=0)] = 10,
    json_output: JsonOpt = False,
) -> None:
    """Report eval records that also appear in the training data (leakage). Exit 1 when any do.

    Example: shardkit overlap train.jsonl --against data/validation/eval.jsonl --key first-user
    """
    from shardkit.pipeline.overlap import find_overlap

    with exit_on_error():
        result = find_overlap(train, [str(p) for p in against], key=key, examples=examples)
    if json_output:
        _print_json(result.to_dict())
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def rotate(
    directory: Annotated[Path, typer.Argument(help="A status or log folder (not recursive).", show_default=False)],
    older_than: Annotated[str | None, typer.Option("--older-than", help="Files not modified for DUR (e.g. 7d).", show_default=False)] = None,
    max_bytes: Annotated[str | None, typer.Option("--max-bytes", help="Keep the newest files that fit in SIZE; act on the older ones.", show_default=False)] = None,
    compress: Annotated[bool, typer.Option("--compress", help="gzip the selected files (NAME.gz, mtime kept; original removed after).")] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the selected files (needs --yes).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Compress or delete old files in a folder that grows without bound (status logs).

    Example: shardkit rotate logs/status --older-than 7d --compress
    """
    from shardkit.queue.journal import Journal
    from shardkit.queue.rotate import rotate as run_rotate
    from shardkit.queue.state import is_queue_root

    with exit_on_error():
        root = next((p for p in [directory.absolute(), *directory.absolute().parents] if is_queue_root(p)), None)
        result = run_rotate(directory, older_than=_duration_option(older_than, "--older-than"),
                            max_bytes=_size_option(max_bytes, "--max-bytes"), compress=compress,
                            delete=delete, yes=yes, dry_run=dry_run,
                            journal=Journal.for_root(root) if root else None)
    if json_output:
        _print_json(result.to_dict())
    else:
        for a in result.actions:
            verb = a.action if result.applied else f"would {a.action}"
            typer.echo(f"{verb}: {a.name} ({format_size(a.bytes_before)}){' ' + a.status if a.status == 'skipped' else ''}")
        if result.why_not_applied:
            typer.echo(f"nothing changed: {result.why_not_applied}")
    _summary({"files": len(result.actions), "freed": format_size(result.bytes_freed)})


# ---------------------------------------------------------------- queue

queue_app = typer.Typer(
    help="The training queue: ingest drops, claim/complete/fail, retry, requeue, hold, prune, doctor.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(queue_app, name="queue")

RootArg = Annotated[
    Path | None, typer.Argument(help="Queue root (default: $SHARDKIT_ROOT, then the current folder).", show_default=False)
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Queue root (default: $SHARDKIT_ROOT, then the current folder).", show_default=False)
]


def _open_queue(root: Path | None, **overrides: Any):
    from shardkit.queue.settings import load_settings, resolve_root
    from shardkit.queue.state import Queue

    path = resolve_root(root)
    return Queue(path, load_settings(path, overrides={k: v for k, v in overrides.items() if v is not None}))


def _root_of(path: str, root: Path | None) -> Path | None:
    """heartbeat/complete/fail PATH: the root is three folders up from queue/processing/NAME."""
    if root is not None or os.sep not in path:
        return root
    p = Path(path).absolute()
    if p.parent.name == "processing" and p.parent.parent.name == "queue":
        return p.parent.parent.parent
    return root


def _duration_option(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    from shardkit.queue.settings import parse_duration

    try:
        return parse_duration(value)
    except UsageError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None


def _summary(counts: dict) -> None:
    sys.stderr.write("shardkit: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")


def _moved(entries, verb: str, dry_run: bool, json_output: bool) -> None:
    rows = [{"name": e.name, "to": e.state, "path": str(e.path)} for e in entries]
    if json_output:
        _print_json({"dry_run": dry_run, "moved": rows})
    else:
        for r in rows:
            typer.echo(_safe(f"{'would move' if dry_run else verb}: {r['name']} -> {r['to']}"))
    _summary({("would move" if dry_run else "moved"): len(rows)})


@queue_app.command("init")
def queue_init(root: RootArg = None) -> None:
    """Create the queue folders under ROOT (idempotent; existing files are left alone).

    Example: shardkit queue init /data/train-queue
    """
    from shardkit.queue.settings import resolve_root
    from shardkit.queue.state import Queue

    with exit_on_error():
        q = Queue(resolve_root(root), create=True)
    typer.echo(f"queue ready at {q.root}")


@queue_app.command("status")
def queue_status(
    root: RootArg = None,
    json_output: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when something needs a person (stale leases, dead or quarantined files, low disk, oversize files).")] = False,
    watch: Annotated[float | None, typer.Option("--watch", help="Refresh every N seconds until Ctrl-C.", show_default=False)] = None,
) -> None:
    """Files, records, bytes and oldest age per state; stale leases; disk; what needs a person.

    Example: shardkit queue status --check   (for cron: exit 1 means look)
    """
    with exit_on_error():
        q = _open_queue(root)
        while True:
            st = q.status()
            if json_output:
                _print_json(st)
            else:
                if watch:
                    sys.stdout.write("\x1b[H\x1b[2J")
                _render_status(st)
            if not watch:
                break
            time.sleep(watch)
    if check and not st["ok"]:
        raise typer.Exit(1)


def _render_status(st: dict) -> None:
    typer.echo(f"queue {st['root']}")
    typer.echo(f"  {'state':<12} {'files':>6} {'records':>10} {'bytes':>10}  oldest")
    for state, s in st["states"].items():
        age = _age(s["oldest_age_s"]) if s["oldest_age_s"] is not None else "-"
        typer.echo(f"  {state:<12} {s['files']:>6} {s['records']:>10,} {format_size(s['bytes']):>10}  {age}")
    d = st["disk"]
    typer.echo(f"  disk free {format_size(d['free'])} of {format_size(d['total'])} (reserve {format_size(d['reserve'])}); journal {format_size(st['journal_bytes'])}")
    for name in st["unleased_processing"]:
        typer.echo(_safe(f"  processing/{name}: no lease (moved by hand?)"))
    for p in st["problems"]:
        typer.echo(_safe(f"  needs a person: {p}"))
    if st["ok"]:
        typer.echo("  ok")


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f}{unit}"
    return f"{seconds:.0f}s"


@queue_app.command("list")
def queue_list(
    state: Annotated[str | None, typer.Argument(help="Only this state (inbox, high, normal, low, processing, completed, failed, dead, held, quarantine, split).", show_default=False)] = None,
    root: RootOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """List queue files with state, size and attempts.

    Example: shardkit queue list failed
    """
    from shardkit.queue.state import STATES

    with exit_on_error():
        q = _open_queue(root)
        entries = q.entries([q.dir(state) and state] if state else STATES)
    rows = [{"state": e.state, "name": e.name, "bytes": e.size, "attempts": e.item.attempts if e.item else None,
             "records": e.item.records if e.item else None} for e in entries]
    if json_output:
        _print_json(rows)
        return
    for r in rows:
        typer.echo(_safe(f"{r['state']:<11} {r['name']}  {format_size(r['bytes'])}  attempts {r['attempts'] if r['attempts'] is not None else '-'}"))


@queue_app.command("show")
def queue_show(name: Annotated[str, typer.Argument(help="File name (or STATE/NAME).", show_default=False)], root: RootOpt = None) -> None:
    """Show one file's record: state, attempts, history, lineage, lease.

    Example: shardkit queue show batch.jsonl
    """
    with exit_on_error():
        _print_json(_open_queue(root).show(name))


@queue_app.command("ingest")
def queue_ingest(
    root: RootArg = None,
    priority: Annotated[str | None, typer.Option("--priority", "-p", help="high, normal or low (default from shardkit.toml, else normal).", show_default=False)] = None,
    watch: Annotated[float | None, typer.Option("--watch", help="Keep ingesting: look again every N seconds until Ctrl-C.", show_default=False)] = None,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Validate complete inbox drops and route them: pending, split into shards, or quarantine.

    Files modified within the settle window, dotfiles, *.tmp and *.part are left alone.

    Example: shardkit queue ingest /data/train-queue --priority high
    """
    from shardkit.queue.ingest import ingest

    with exit_on_error():
        q = _open_queue(root, priority=priority)
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        while True:
            result = ingest(q, priority=priority, dry_run=dry_run, warn=_warn_printer(json_output))
            if json_output:
                _print_json(result.to_dict())
            else:
                for r in result.routed:
                    extra = f" ({r.reason})" if r.reason else ""
                    kids = f": {len(r.children)} shard(s)" if r.children else ""
                    typer.echo(_safe(f"{'would route' if dry_run else 'routed'}: {r.name} -> {r.to}{kids}{extra}"))
                for name, why in result.skipped:
                    typer.echo(_safe(f"skipped: {name}: {why}"))
            _summary(result.counts())
            if not watch:
                break
            time.sleep(watch)


@queue_app.command("claim")
def queue_claim(
    root: RootArg = None,
    worker: Annotated[str, typer.Option("--worker", "-w", help="Who claims (shown in the lease and journal).")] = "worker",
    wait: Annotated[str | None, typer.Option("--wait", help="Wait up to DUR for a file (e.g. 30s, 5m).", show_default=False)] = None,
    owner_pid: Annotated[int | None, typer.Option("--owner-pid", help="Process whose death frees the file (default: the caller, shardkit's parent).", show_default=False)] = None,
    json_output: JsonOpt = False,
) -> None:
    """Claim the oldest pending file (high priority first); print its path. Exit 1 if none.

    attempts += 1 at claim. Example: f=$(shardkit queue claim --worker gpu0) && train "$f" && shardkit queue complete "$f"
    """
    with exit_on_error():
        q = _open_queue(root)
        claimed = q.claim(worker, owner_pid=owner_pid or os.getppid(), wait=_duration_option(wait, "--wait") or 0.0)
    if claimed is None:
        if json_output:
            _print_json(None)
        sys.stderr.write("shardkit: nothing pending\n")
        raise typer.Exit(1)
    if json_output:
        _print_json(claimed.to_dict())
    else:
        typer.echo(str(claimed.path))


TokenOpt = Annotated[str | None, typer.Option("--token", help="The lease token from `claim --json`; refused (exit 4) if the lease was taken over.", show_default=False)]
PathArg = Annotated[str, typer.Argument(help="The claimed file (path or name).", show_default=False)]


@queue_app.command("heartbeat")
def queue_heartbeat(path: PathArg, token: TokenOpt = None, root: RootOpt = None) -> None:
    """Renew the lease of a claimed file (so requeue-stale leaves it alone)."""
    with exit_on_error():
        _open_queue(_root_of(path, root)).heartbeat(path, token)


@queue_app.command("complete")
def queue_complete(path: PathArg, token: TokenOpt = None, root: RootOpt = None, dry_run: DryRunOpt = False) -> None:
    """Move a claimed file to recently_completed and release its lease."""
    with exit_on_error():
        e = _open_queue(_root_of(path, root)).complete(path, token, dry_run=dry_run)
    _moved([e], "completed", dry_run, False)


@queue_app.command("fail")
def queue_fail(
    path: PathArg, token: TokenOpt = None, root: RootOpt = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the record and journal).", show_default=False)] = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Move a claimed file to failed (retry sends it back, or to dead at max_attempts)."""
    with exit_on_error():
        e = _open_queue(_root_of(path, root)).fail(path, token, reason=reason, dry_run=dry_run)
    _moved([e], "failed", dry_run, False)


@queue_app.command("retry")
def queue_retry(
    names: Annotated[list[str] | None, typer.Argument(help="Failed files to retry.", show_default=False)] = None,
    all_failed: Annotated[bool, typer.Option("--all", help="Every failed file.")] = False,
    reset_attempts: Annotated[bool, typer.Option("--reset-attempts", help="Start counting attempts again (else: dead at max_attempts).")] = False,
    split_records: Annotated[int | None, typer.Option("--split", help="Re-shard into N-record files (for a file that failed for size); the parent goes to split/.", min=1, show_default=False)] = None,
    root: RootOpt = None, dry_run: DryRunOpt = False, json_output: JsonOpt = False,
) -> None:
    """failed -> pending (its priority), or -> dead once attempts reach max_attempts.

    Example: shardkit queue retry --all --dry-run;  shardkit queue retry big.jsonl --split 50000
    """
    with exit_on_error():
        q = _open_queue(root)
        if split_records is not None:
            from shardkit.queue.ingest import resplit

            routed = resplit(q, names or [], split_records, all_failed=all_failed, dry_run=dry_run)
        else:
            moved = q.retry(names or [], all_failed=all_failed, reset_attempts=reset_attempts, dry_run=dry_run)
    if split_records is not None:
        if json_output:
            _print_json({"dry_run": dry_run, "split": [r.to_dict() for r in routed]})
        else:
            for r in routed:
                typer.echo(f"{'would split' if dry_run else 'split'}: {r.name} -> {len(r.children)} shard(s)")
        _summary({"split": len(routed)})
        return
    _moved(moved, "retried", dry_run, json_output)


@queue_app.command("requeue-stale")
def queue_requeue_stale(
    root: RootArg = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Stale after DUR without heartbeat (default stale_after, 15m).", show_default=False)] = None,
    dry_run: DryRunOpt = False, json_output: JsonOpt = False,
) -> None:
    """processing -> pending (or dead) when the lease expired AND its owner process is gone.

    Example: shardkit queue requeue-stale --older-than 30m --dry-run
    """
    with exit_on_error():
        out = _open_queue(root).requeue_stale(older_than=_duration_option(older_than, "--older-than"), dry_run=dry_run)
    _moved([e for e, _ in out], "requeued", dry_run, json_output)


PAST = {"hold": "held", "release": "released", "redrive": "redriven", "quarantine": "quarantined"}


def _names_cmd(method: str, help_text: str):
    def cmd(
        names: Annotated[list[str], typer.Argument(help="File names (or STATE/NAME).", show_default=False)],
        reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the record and journal).", show_default=False)] = None,
        root: RootOpt = None, dry_run: DryRunOpt = False, json_output: JsonOpt = False,
    ) -> None:
        with exit_on_error():
            q = _open_queue(root)
            fn = getattr(q, method)
            moved = fn(names, reason=reason, dry_run=dry_run) if method in ("hold", "quarantine") else fn(names, dry_run=dry_run)
        _moved(moved, PAST.get(method, f"{method}ed"), dry_run, json_output)

    cmd.__doc__ = help_text
    return cmd


queue_app.command("hold")(_names_cmd("hold", "Park pending, failed or dead files in held/ (never expires)."))
queue_app.command("release")(_names_cmd("release", "Return held files to where they were held from."))
queue_app.command("redrive")(_names_cmd("redrive", "Send dead or quarantined files back to the inbox (re-validated on the next ingest)."))
queue_app.command("quarantine")(_names_cmd("quarantine", "Put files aside in quarantine/ by hand."))


@queue_app.command("prune")
def queue_prune(
    root: RootArg = None,
    keep: Annotated[int | None, typer.Option("--keep", help="Keep the N most recently completed files.", min=0, show_default=False)] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Delete completed files older than DUR (e.g. 7d).", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete. Without it, only the plan is printed.")] = False,
    dry_run: DryRunOpt = False, json_output: JsonOpt = False,
) -> None:
    """Delete completed files by completion time (never held, leased or dead). Needs --yes.

    Example: shardkit queue prune --keep 100 --older-than 7d --yes
    """
    with exit_on_error():
        plan = _open_queue(root).prune(keep=keep, older_than=_duration_option(older_than, "--older-than"), yes=yes and not dry_run)
    doit = yes and not dry_run
    if json_output:
        _print_json({"deleted": plan.deleted, "freed": plan.freed, "plan": [e.name for e in plan.delete], "kept": len(plan.keep), "dry_run": not doit})
    else:
        for e in plan.delete:
            typer.echo(_safe(f"{'deleted' if doit else 'would delete'}: {e.state}/{e.name} ({format_size(e.size)})"))
        if not doit and plan.delete:
            typer.echo("nothing deleted: add --yes to delete these files")
    _summary({"deleted" if doit else "would delete": plan.deleted if doit else len(plan.delete), "kept": len(plan.keep)})


@queue_app.command("doctor")
def queue_doctor(
    root: RootArg = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is safe (idempotent); report the rest.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Check the queue: temp leftovers, records vs files, leases, duplicates, unfinished operations.

    Exit 1 when problems remain. Example: shardkit queue doctor --repair
    """
    from shardkit.queue.doctor import doctor

    with exit_on_error():
        report = doctor(_open_queue(root), repair=repair)
    if json_output:
        _print_json(report.to_dict())
    else:
        for f in report.findings:
            tag = "repaired" if f.repaired else ("info" if f.code == "external_processing" else "problem")
            typer.echo(_safe(f"{tag}: {f.code}: {f.message}"))
        typer.echo("ok" if report.ok else f"{len(report.problems)} problem(s) remain")
    if not report.ok:
        raise typer.Exit(1)


def _freeze_heap() -> None:
    """Leave the objects made so far (modules, typer's tree) out of garbage collection: a
    long run allocates much, and each full collection would walk them all again (on a
    Parquet split that was 5-10% of the time). Called again after a big lazy import."""
    gc.freeze()


def _arrow_pool() -> None:
    """Arrow's jemalloc pool, unless $ARROW_DEFAULT_MEMORY_POOL chooses (Linux, where the
    pyarrow wheels have it; set before pyarrow is imported, so every Arrow allocation
    uses it). Measured on a 290 MB Parquet split: peak RSS 455 MB against 520 MB with
    the default mimalloc, and no slower (bench/parquet.py)."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


def main() -> None:
    """Console entry point."""
    _arrow_pool()
    _freeze_heap()
    try:
        app()
    except KeyboardInterrupt:
        _emit_error("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: one line, traceback on request
        if os.environ.get("SHARDKIT_DEBUG"):
            raise
        _emit_error(f"internal error: {e.__class__.__name__}: {e} (set SHARDKIT_DEBUG=1 for a traceback and please report it)")
        sys.exit(1)
