"""Data commands: split, manifest, verify, validate, stats, overlap, rotate."""

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from shardkit.cli.common import (
    DryRunOpt,
    GroupedHelpCommand,
    JsonOpt,
    app,
    duration_option,
    exit_on_error,
    freeze_heap,
    jobs_option,
    print_json,
    progress_bar,
    raise_on_sigterm,
    size_option,
    summary,
    warn_printer,
)
from shardkit.core.errors import UsageError
from shardkit.core.io import format_size

# ---------------------------------------------------------------- split


@app.command(cls=GroupedHelpCommand)
def split(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Files to split: JSON Lines (plain, .gz or .zst, detected by content), .json arrays, Parquet, or s3:// objects; - reads stdin.", show_default=False),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output folder for shards, manifest.json and SHA256SUMS (new or empty), or an s3:// prefix (needs shardkit[s3]).", show_default=False)
    ],
    max_records: Annotated[
        int | None, typer.Option("--max-records", "-n", rich_help_panel="Cut", help="At most N records per shard.", min=1, show_default=False)
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option(
            "--max-bytes",
            "-b",
            rich_help_panel="Cut",
            help="At most SIZE bytes per shard on disk: 64MB (10^6), 64MiB or 64M (2^20), 1G...",
            show_default=False,
        ),
    ] = None,
    num_shards: Annotated[
        int | None,
        typer.Option("--num-shards", rich_help_panel="Cut", help="Exactly N shards in total, balanced by record count over the inputs taken together, in order (reads the inputs twice; not for stdin). With several inputs a shard may span two of them, and shards are named part-NNNNN unless --name says otherwise.", min=1, show_default=False),
    ] = None,
    oversize: Annotated[
        str,
        typer.Option(
            "--oversize",
            rich_help_panel="Cut",
            help="A single record larger than --max-bytes: own-shard (write it alone, warn), reject (to the rejects file), error (stop, exit 1).",
        ),
    ] = "own-shard",
    name: Annotated[
        str, typer.Option("--name", rich_help_panel="Cut", help="Shard file name template; fields {stem} (input name without extensions), {index}, and {split} with --holdout.")
    ] = "{stem}-{index:05d}.jsonl",
    rejects: Annotated[
        str, typer.Option("--rejects", rich_help_panel="Check", help="Where rejected records go (original bytes + file, line, reason): a bare NAME inside OUT, or a PATH anywhere (must not exist yet; not in SHA256SUMS; never deleted by --overwrite).")
    ] = "rejects.jsonl",
    validate: Annotated[
        str | None,
        typer.Option(
            "--validate",
            rich_help_panel="Check",
            help="Check every record in the same pass: a kind (chat, prompt-completion, alpaca, sharegpt, text, preference, kto), auto, or a JSON Schema file; invalid records go to the rejects file.",
            show_default=False,
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", rich_help_panel="Check", help="With --validate: records longer than N tokens are rejected (needs --tokenizer).", min=1, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", rich_help_panel="Check", help="tokenizer.json or a model folder holding one, for --max-tokens.", show_default=False)] = None,
    max_line_bytes: Annotated[str, typer.Option("--max-line-bytes", rich_help_panel="Check", help="With --validate: longer lines are invalid and not decoded.")] = "16MiB",
    jobs: Annotated[str, typer.Option("--jobs", "-j", rich_help_panel="Run", help="Worker processes (for --validate, or per file with --engine): a number or auto (all cores for inputs over 32 MiB).")] = "auto",
    fmt: Annotated[str | None, typer.Option("--format", "-f", rich_help_panel="Format", help="Shard format: jsonl (byte-exact copies) or parquet (schema from the whole input). Default: jsonl; parquet with --tokenize.", show_default=False)] = None,
    compression: Annotated[str | None, typer.Option("--compression", rich_help_panel="Format", help="Parquet page codec: zstd (default), snappy, gzip, none.", show_default=False)] = None,
    row_group_bytes: Annotated[str | None, typer.Option("--row-group-bytes", rich_help_panel="Format", help="Parquet row groups of about SIZE uncompressed (default 64MiB).", show_default=False)] = None,
    schema_from: Annotated[Path | None, typer.Option("--schema-from", rich_help_panel="Format", help="Use the schema of this Parquet file (e.g. last week's shards); skip inference.", show_default=False)] = None,
    shuffle: Annotated[bool, typer.Option("--shuffle", rich_help_panel="Transform", help="Shuffle all inputs together (two passes, bounded memory); shards are named part-NNNNN.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", rich_help_panel="Transform", help="Seed for --shuffle: same seed and inputs, byte-identical shards.", show_default=False)] = None,
    shuffle_memory: Annotated[str, typer.Option("--shuffle-memory", rich_help_panel="Transform", help="Memory for one shuffle bucket.")] = "256MB",
    holdout: Annotated[float | None, typer.Option("--holdout", rich_help_panel="Transform", help="Fraction of records for a validation split, chosen by a stable hash (same record, same split, whatever else arrives).", min=0.0, max=1.0, show_default=False)] = None,
    holdout_key: Annotated[str | None, typer.Option("--holdout-key", rich_help_panel="Transform", help="What --holdout hashes: first-user (default: the prompt - first user message, alpaca instruction + input, the prompt field - so a prompt with several answers stays in one split), prompt (all before the first answer), record (the whole record) or a FIELD (keeps a group together).", show_default=False)] = None,
    holdout_seed: Annotated[int, typer.Option("--holdout-seed", rich_help_panel="Transform", help="Seed of the holdout hash.")] = 0,
    dedup: Annotated[str | None, typer.Option("--dedup", rich_help_panel="Transform", help="exact: drop exact duplicates (normalised JSON) across all inputs, keeping the first; dropped ones go to duplicates.jsonl.", show_default=False)] = None,
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", rich_help_panel="Transform", help="Drop records that appear in this eval file (repeatable); they go to excluded.jsonl.", show_default=False)] = None,
    exclude_key: Annotated[str, typer.Option("--exclude-key", rich_help_panel="Transform", help="Match --exclude by: record, first-user, prompt or a FIELD.")] = "record",
    decontaminate: Annotated[list[Path] | None, typer.Option("--decontaminate", rich_help_panel="Transform", help="Set aside records that share a word N-gram (--ngram, case-folded, punctuation removed) with a record of this eval file (repeatable); they go to contaminated.jsonl with the eval record and the n-gram.", show_default=False)] = None,
    ngram: Annotated[int, typer.Option("--ngram", rich_help_panel="Transform", help="The n-gram length for --decontaminate.", min=1, max=64)] = 13,
    near_dedup: Annotated[float | None, typer.Option("--near-dedup", rich_help_panel="Transform", help="Set aside records whose estimated Jaccard similarity (MinHash over word --shingle-grams, LSH) to an earlier kept record is >= THRESHOLD (e.g. 0.8) into near-duplicates.jsonl, each with the record it resembles (needs shardkit[neardup]).", min=0.0, max=1.0, show_default=False)] = None,
    shingle: Annotated[int, typer.Option("--shingle", rich_help_panel="Transform", help="Words per shingle for --near-dedup.", min=1, max=64)] = 5,
    to: Annotated[str | None, typer.Option("--to", rich_help_panel="Transform", help="chat: convert alpaca, sharegpt and prompt/completion records to chat messages.", show_default=False)] = None,
    tokenize: Annotated[Path | None, typer.Option("--tokenize", rich_help_panel="Transform", help="Write token rows instead of records: input_ids and labels (-100 outside the assistant turns), rendered with this model folder's chat template and tokenizer (needs shardkit[tokens]).", show_default=False)] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", rich_help_panel="Transform", help="With --tokenize: the longest row, in tokens.", min=1, show_default=False)] = None,
    overflow: Annotated[str, typer.Option("--overflow", rich_help_panel="Transform", help="With --tokenize, a record longer than --seq-len: reject (to the rejects file), truncate, or drop (to excluded.jsonl).")] = "reject",
    pack: Annotated[bool, typer.Option("--pack", rich_help_panel="Transform", help="With --tokenize: lay examples whole into rows of at most --seq-len tokens, with position_ids restarting per example and seq_lens (flash-attention varlen / DataCollatorWithFlattening layout); -n counts rows.")] = False,
    on_conflict: Annotated[str, typer.Option("--on-conflict", rich_help_panel="Format", help="Parquet: a field with two incompatible types: json-string (store it as JSON text, warn) or error.")] = "json-string",
    engine: Annotated[
        str | None, typer.Option("--engine", rich_help_panel="Run", help="Run on an executor: local (a process pool) or ray (Ray tasks; RAY_ADDRESS names a cluster). Same shards and manifest as without it. Without --shuffle/--holdout/--dedup/--exclude/--to: one task per input file, --jobs workers; with them: the whole plan as one task.", show_default=False)
    ] = None,
    staging: Annotated[
        Path | None, typer.Option("--staging", rich_help_panel="Run", help="With an s3:// OUT: local folder where shards are prepared before upload (default: one per OUT under the temp dir, or $SHARDKIT_STAGING).", show_default=False)
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", rich_help_panel="Run", help="Continue an interrupted run in OUT from its last committed shard (same inputs and options).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", rich_help_panel="Run", help="Replace a previous run in OUT: deletes exactly the files its manifest lists, nothing else.")
    ] = False,
    max_errors: Annotated[int | None, typer.Option("--max-errors", rich_help_panel="Check", envvar="SHARDKIT_MAX_ERRORS", min=0, help="Quality gate: more than N rejected records (invalid, or set aside by --oversize reject/--to), and the run exits 1 with its manifest left incomplete (\"failed\" says why). Every record is still read, so the rejects file lists them all.", show_default=False)] = None,
    max_reject_ratio: Annotated[float | None, typer.Option("--max-reject-ratio", rich_help_panel="Check", envvar="SHARDKIT_MAX_REJECT_RATIO", min=0.0, max=1.0, help="Quality gate: more than this share of the records read rejected (0.05 = 5%), and the run exits 1 with its manifest left incomplete.", show_default=False)] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", rich_help_panel="Check", help="Accept a run that writes no record (an empty input, or every record set aside); without it that run exits 1 and its manifest stays incomplete.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel="Run", help="Read the inputs and print the shards that would be written; write nothing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", rich_help_panel="Run", help="Print one JSON summary on stdout and nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel="Run", help="No progress bar, summary or warnings; errors only.")] = False,
    report: Annotated[Path | None, typer.Option("--report", rich_help_panel="Run", help="After the run, write an HTML report of the inputs and the run (rejects, duplicates, holdout sizes) here (needs shardkit[report]).", show_default=False)] = None,
) -> None:
    """Split JSONL (or Parquet) files into JSONL or Parquet shards of at most N records or SIZE bytes.

    Records are copied byte for byte: the shards, concatenated in manifest order,
    equal the inputs' non-blank lines. Each shard appears atomically, and
    manifest.json + SHA256SUMS are rewritten after every shard, so an interrupted
    run continues with --resume.

    Example: shardkit split big.jsonl -o shards/ --max-records 50000 --validate chat
    """
    from shardkit.pipeline.driver import split as run_split

    with exit_on_error():
        options = _split_plan(
            max_records=max_records, max_bytes=max_bytes, num_shards=num_shards, oversize=oversize, name=name,
            rejects=rejects, validate=validate, max_tokens=max_tokens, tokenizer=tokenizer,
            max_line_bytes=max_line_bytes, fmt=fmt, compression=compression, row_group_bytes=row_group_bytes,
            schema_from=schema_from, on_conflict=on_conflict, shuffle=shuffle, seed=seed,
            shuffle_memory=shuffle_memory, holdout=holdout, holdout_key=holdout_key, holdout_seed=holdout_seed,
            dedup=dedup, exclude=exclude, exclude_key=exclude_key, decontaminate=decontaminate, ngram=ngram,
            near_dedup=near_dedup, shingle=shingle, to=to, max_errors=max_errors,
            max_reject_ratio=max_reject_ratio, allow_empty=allow_empty,
            tokenize=str(tokenize) if tokenize else None, seq_len=seq_len, overflow=overflow, pack=pack,
        )
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        with progress_bar(total, not (quiet or json_output), "split") as progress:
            result = run_split(
                inputs,
                out,
                options,
                engine=engine,
                resume=resume,
                overwrite=overwrite,
                dry_run=dry_run,
                progress=progress,
                warn=warn_printer(quiet or json_output),
                jobs=jobs_option(jobs),
                staging=staging,
            )
        if report is not None and not dry_run:
            from shardkit.pipeline.report import build_report, write_report

            write_report(build_report(inputs, manifest=result.manifest, validation=result.validation,
                                      kind=validate if validate and not validate.endswith(".json") else "auto"), report)
    if json_output:
        print_json(result.summary())
    elif not quiet:
        _render_split(result)


def _split_plan(*, max_records, max_bytes, num_shards, oversize, name, rejects, validate, max_tokens, tokenizer,
                max_line_bytes, fmt, compression, row_group_bytes, schema_from, on_conflict, shuffle, seed,
                shuffle_memory, holdout, holdout_key, holdout_seed, dedup, exclude, exclude_key, decontaminate,
                ngram, near_dedup, shingle, to, max_errors, max_reject_ratio, allow_empty, record_plan=False,
                tokenize=None, seq_len=None, overflow="reject", pack=False):
    """The plan `split` (and `mix`) options describe: SplitOptions, or PipelineOptions when a
    record stage is asked for (or `record_plan`)."""
    from shardkit.pipeline.shard import DEFAULT_NAME, SplitOptions
    from shardkit.records.check import CheckOptions

    if fmt is None:
        fmt = "parquet" if tokenize else "jsonl"
    if tokenize is None and (seq_len is not None or overflow != "reject" or pack):
        raise UsageError("--seq-len, --overflow and --pack go with --tokenize MODEL_DIR")
    check = None
    if validate is not None:
        check = CheckOptions.from_spec(
            validate, max_tokens=max_tokens, tokenizer=str(tokenizer) if tokenizer else None,
            max_line_bytes=size_option(max_line_bytes, "--max-line-bytes"),
        )
    elif max_tokens is not None or tokenizer is not None:
        raise UsageError("--max-tokens and --tokenizer work with --validate KIND")
    parquet = None
    if fmt == "parquet":
        from shardkit.pipeline.parquet import ParquetOptions

        freeze_heap()  # pyarrow's objects too
        parquet = ParquetOptions(
            compression=compression or "zstd",
            row_group_bytes=size_option(row_group_bytes, "--row-group-bytes") or 64 * 2**20,
            on_conflict=on_conflict, schema_from=str(schema_from) if schema_from else None,
        )
    elif compression not in (None, "none") or row_group_bytes or schema_from or on_conflict != "json-string":
        raise UsageError("--compression, --row-group-bytes, --schema-from and --on-conflict apply to --format parquet "
                         "(JSONL shards are plain, byte-exact copies)")
    pipeline = record_plan or bool(shuffle or holdout is not None or dedup or exclude or decontaminate
                                   or near_dedup is not None or to or tokenize)
    if seed is not None and not shuffle:
        raise UsageError("--seed goes with --shuffle (the holdout has its own --holdout-seed)")
    options = SplitOptions(
        max_records=max_records,
        max_bytes=size_option(max_bytes, "--max-bytes"),
        num_shards=num_shards,
        oversize=oversize,
        name=DEFAULT_NAME if pipeline else name,
        rejects=rejects,
        check=check,
        format=fmt,
        parquet=parquet,
        allow_empty=allow_empty,
        max_errors=max_errors,
        max_reject_ratio=max_reject_ratio,
    )
    if pipeline:
        from shardkit.pipeline.transform import PipelineOptions

        options = PipelineOptions(
            split=options, name=None if name == DEFAULT_NAME else name, shuffle=shuffle, seed=seed or 0,
            shuffle_memory=size_option(shuffle_memory, "--shuffle-memory"), holdout=holdout,
            holdout_key=holdout_key, holdout_seed=holdout_seed, dedup=dedup,
            exclude=tuple(str(p) for p in exclude or ()), exclude_key=exclude_key, to=to,
            decontaminate=tuple(str(p) for p in decontaminate or ()), ngram=ngram,
            near_dedup=near_dedup, shingle=shingle, tokenize=tokenize, seq_len=seq_len, overflow=overflow, pack=pack,
        )
    return options


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
        if f.get("last_source"):  # it spans two inputs (--num-shards over several)
            where = (f"  {os.path.basename(f['source'])}:{f['first_line']} to "
                     f"{os.path.basename(f['last_source'])}:{f['last_line']}")
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
    directory: Annotated[Path, typer.Argument(help="Folder of shards (or a queue ROOT) to describe.", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the manifest (default DIR/manifest.json); SHA256SUMS goes beside it.", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the manifest on stdout.")] = False,
    accept_changes: Annotated[bool, typer.Option("--accept-changes", help="A shards folder that differs from its manifest (a file changed, missing or added; a cut last line) is refused (exit 1) and nothing rewritten; with this, the manifest describes the files as they are now.")] = False,
) -> None:
    """Regenerate manifest.json and SHA256SUMS from the shard files on disk (or of a queue ROOT).

    On a queue root: every queue file with state, priority, records, bytes, sha256 and
    attempts; a rerun rehashes only files whose (inode, size, mtime, ctime) changed
    (ctime catches an in-place edit whose mtime was put back; a move changes it too).
    On a shards folder, entries whose file is unchanged keep their lineage (source,
    first/last line); any difference from the existing manifest is reported and nothing
    rewritten (exit 1) unless --accept-changes.

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
            m = regenerate(directory, output, accept_changes=accept_changes)
    if json_output:
        print_json(m)
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
        print_json(result.to_dict())
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
    kind: Annotated[str, typer.Option("--kind", "-k", help="Record kind: chat, prompt-completion, alpaca, sharegpt, text, preference (prompt, chosen, rejected), kto (prompt, completion, label), or auto (detect per record).")] = "auto",
    schema: Annotated[Path | None, typer.Option("--schema", help="Validate against this JSON Schema (Draft 2020-12) instead of a built-in kind.", show_default=False)] = None,
    max_errors: Annotated[int | None, typer.Option("--max-errors", envvar="SHARDKIT_MAX_ERRORS", help="Quality gate: exit 0 while invalid records are at most N (default 0; no limit when only --max-reject-ratio is given).", min=0, show_default=False)] = None,
    max_reject_ratio: Annotated[float | None, typer.Option("--max-reject-ratio", envvar="SHARDKIT_MAX_REJECT_RATIO", min=0.0, max=1.0, help="Quality gate: exit 1 when more than this share of the records is invalid (0.05 = 5%); with it, --max-errors defaults to no limit.", show_default=False)] = None,
    max_line_bytes: Annotated[str, typer.Option("--max-line-bytes", help="Longer lines are invalid and not decoded (e.g. 16MiB).")] = "16MiB",
    rejects: Annotated[Path | None, typer.Option("--rejects", help="Write invalid records (original bytes, file, line, offset, reason) to this new JSONL file (not created when every record is valid).", show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Records longer than N tokens are invalid (needs --tokenizer).", min=1, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder holding one (needs shardkit[tokens]).", show_default=False)] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", help="Worker processes: a number, or auto (all cores for inputs over 32 MiB).")] = "auto",
    engine: Annotated[str | None, typer.Option("--engine", help="local or ray: one task per input file (same report and rejects as without it).", show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the exit code and errors.")] = False,
) -> None:
    """Check every record: JSON, UTF-8, kind; report file:line, JSON path and what is wrong.

    Exit 0 when the records pass the gates (invalid records <= --max-errors, and their
    share <= --max-reject-ratio when given), 1 otherwise, 3 for unreadable input.

    Example: shardkit validate data.jsonl --kind chat --rejects bad.jsonl
    """
    from shardkit.pipeline.scan import validate_files

    if max_errors is None:
        max_errors = sys.maxsize if max_reject_ratio is not None else 0  # the ratio alone is the gate
    with exit_on_error():
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        with progress_bar(total, not (quiet or json_output), "validate") as progress:
            if engine is not None:
                from shardkit.pipeline.engine import validate_many

                result = validate_many(
                    inputs, engine=engine, jobs=jobs_option(jobs), rejects=rejects, max_errors=max_errors,
                    max_reject_ratio=max_reject_ratio,
                    progress=progress, kind=kind, schema=str(schema) if schema else None,
                    max_line_bytes=size_option(max_line_bytes, "--max-line-bytes"), max_tokens=max_tokens,
                    tokenizer=str(tokenizer) if tokenizer else None,
                )
            else:
                result = validate_files(
                    inputs, kind=kind, schema=schema, max_errors=max_errors, max_reject_ratio=max_reject_ratio,
                    max_line_bytes=size_option(max_line_bytes, "--max-line-bytes"),
                    max_tokens=max_tokens, tokenizer=tokenizer,
                    rejects=rejects, jobs=jobs_option(jobs), progress=progress,
                )
    if json_output:
        print_json(result.to_dict())
    elif not quiet:
        for line in result.report.lines():
            typer.echo(line)
        if not result.ok:
            typer.echo(f"failed the quality gate: {result.gate_failure()}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def head(
    inputs: Annotated[list[str], typer.Argument(help="JSONL (plain, .gz, .zst, - for stdin, s3://...), a .json array or Parquet.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--records", min=0, help="How many records.")] = 10,
    pretty: Annotated[bool, typer.Option("--pretty", help="Indent each record (a line that is not JSON is printed as it is).")] = False,
) -> None:
    """Print the first N records (blank lines skipped; reads no further than needed).

    JSONL lines come out byte for byte; a JSON-array element as compact JSON; a Parquet
    row as the JSON line split writes.

    Example: shardkit head data.jsonl.zst -n 3 --pretty
    """
    from shardkit.pipeline.peek import head as peek_head

    with exit_on_error():
        _print_records(peek_head(inputs, n), pretty)


@app.command()
def sample(
    inputs: Annotated[list[str], typer.Argument(help="JSONL (plain, .gz, .zst, - for stdin, s3://...), .json arrays or Parquet.", show_default=False)],
    n: Annotated[int, typer.Option("-n", "--records", min=1, help="How many records.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Same inputs, N and seed: the same sample.")] = 0,
    pretty: Annotated[bool, typer.Option("--pretty", help="Indent each record (a line that is not JSON is printed as it is).")] = False,
) -> None:
    """Print a uniform random sample of N records over all inputs, in input order.

    One pass, memory for N records (reservoir sampling): fine on files of any size.

    Example: shardkit sample a.jsonl b.jsonl.gz -n 20 --seed 1
    """
    from shardkit.pipeline.peek import sample as peek_sample

    with exit_on_error():
        _print_records(peek_sample(inputs, n, seed), pretty)


def _print_records(records, pretty: bool) -> None:
    out = sys.stdout.buffer
    for p in records:
        if pretty:
            try:
                out.write(orjson.dumps(orjson.loads(p.raw), option=orjson.OPT_INDENT_2) + b"\n")
                continue
            except orjson.JSONDecodeError:
                pass
        out.write(p.raw + b"\n")
    out.flush()


@app.command()
def stats(
    inputs: Annotated[list[str], typer.Argument(help="JSON Lines (plain, .gz, .zst), .json arrays, Parquet or s3:// objects.", show_default=False)],
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder holding one (needs shardkit[tokens]); with a chat template in the folder, tokens are counted after it.", show_default=False)] = None,
    near_dup: Annotated[float | None, typer.Option("--near-dup", help="Report near-duplicate clusters: records whose estimated Jaccard similarity (MinHash, word --shingle-grams) to an earlier record is >= THRESHOLD; nothing is written (needs shardkit[neardup]).", min=0.0, max=1.0, show_default=False)] = None,
    shingle: Annotated[int, typer.Option("--shingle", help="Words per shingle for --near-dup.", min=1, max=64)] = 5,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="With --tokenizer: the token plan at this sequence length: sequences an epoch makes with and without greedy packing, and the padding share of each.", show_default=False)] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="local or ray: read each input in its own task (same report as without it).", show_default=False)] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", help="With --engine: worker processes, a number or auto.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
) -> None:
    """Records, kinds, messages and turns, length percentiles, histogram, exact duplicates, tokens.

    Example: shardkit stats train.jsonl --tokenizer models/Qwen3-0.6B --seq-len 4096
    """
    from shardkit.pipeline.stats import compute_stats, render_stats

    with exit_on_error():
        from shardkit.pipeline.stats import check_seq_len

        check_seq_len(seq_len, str(tokenizer) if tokenizer else None)
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        with progress_bar(total, not json_output, "stats") as progress:
            if engine is not None:
                from shardkit.pipeline.engine import stats_many

                report = stats_many(inputs, engine=engine, jobs=jobs_option(jobs), seq_len=seq_len, near_dup=near_dup, shingle=shingle,
                                    tokenizer_path=str(tokenizer) if tokenizer else None, progress=progress)
            else:
                report = compute_stats(inputs, tokenizer_path=str(tokenizer) if tokenizer else None, seq_len=seq_len,
                                       near_dup=near_dup, shingle=shingle,
                                       progress=progress)
    if json_output:
        print_json(report)
    else:
        for line in render_stats(report):
            typer.echo(line)




@app.command()
def overlap(
    train: Annotated[list[str], typer.Argument(help="Training inputs (JSONL, .gz, .zst, .json arrays).", show_default=False)],
    against: Annotated[list[Path], typer.Option("--against", help="Eval inputs to look for in the training inputs (repeatable).", show_default=False)],
    key: Annotated[str, typer.Option("--key", help="Match by: record (normalised JSON), first-user, prompt, or a FIELD.")] = "record",
    ngram: Annotated[int | None, typer.Option("--ngram", help="Decontamination instead: training records that share any word N-gram (case-folded, punctuation removed) with an eval record; 13 is the usual N.", min=1, max=64, show_default=False)] = None,
    examples: Annotated[int, typer.Option("--examples", help="Pairs of file:line to show.", min=0)] = 10,
    json_output: JsonOpt = False,
) -> None:
    """Report eval records that also appear in the training data (leakage). Exit 1 when any do.

    Example: shardkit overlap train.jsonl --against data/validation/eval.jsonl --key first-user

    Example: shardkit overlap train.jsonl --against mmlu.jsonl --ngram 13
    """
    from shardkit.pipeline.overlap import find_contamination, find_overlap

    with exit_on_error():
        if ngram is not None:
            if key != "record":
                raise UsageError("--ngram compares the text of whole records; it does not take --key")
            result = find_contamination(train, [str(p) for p in against], ngram=ngram, examples=examples)
        else:
            result = find_overlap(train, [str(p) for p in against], key=key, examples=examples)
    if json_output:
        print_json(result.to_dict())
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def mix(
    sources: Annotated[list[str], typer.Argument(help="Sources as PATH=WEIGHT (JSONL, .gz, .zst, .json arrays); a bare PATH takes its weight from --weights.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder for shards, manifest.json and SHA256SUMS (new or empty), or an s3:// prefix.", show_default=False)],
    records: Annotated[int | None, typer.Option("--records", help="Size of the mix in records (give this or --tokens).", min=1, show_default=False)] = None,
    tokens: Annotated[int | None, typer.Option("--tokens", help="Size of the mix in tokens (needs --tokenizer; give this or --records).", min=1, show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="tokenizer.json or a model folder: counts --tokens (after its chat template) and --max-tokens.", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="TOML file of path = weight (top level or under [weights]).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw and of the shuffle: same seed and inputs, byte-identical shards.")] = 0,
    max_records: Annotated[int | None, typer.Option("--max-records", "-n", rich_help_panel="Cut", help="At most N records per shard.", show_default=False)] = None,
    max_bytes: Annotated[str | None, typer.Option("--max-bytes", "-b", rich_help_panel="Cut", help="At most SIZE per shard.", show_default=False)] = None,
    num_shards: Annotated[int | None, typer.Option("--num-shards", rich_help_panel="Cut", help="Exactly N shards.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option("--name", rich_help_panel="Cut", help="Shard file name template ({stem} is 'part', {index}).", show_default=False)] = None,
    validate: Annotated[str | None, typer.Option("--validate", rich_help_panel="Filter", help="Check each source's records (a kind, auto or a JSON Schema); invalid ones go to the rejects file.", show_default=False)] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", rich_help_panel="Filter", help="With --validate: records longer than N tokens are rejected (needs --tokenizer).", min=1, show_default=False)] = None,
    dedup: Annotated[str | None, typer.Option("--dedup", rich_help_panel="Filter", help="exact: drop exact duplicates within each source.", show_default=False)] = None,
    near_dedup: Annotated[float | None, typer.Option("--near-dedup", rich_help_panel="Filter", help="Set aside near-duplicates within each source (estimated Jaccard >= THRESHOLD).", min=0.0, max=1.0, show_default=False)] = None,
    shingle: Annotated[int, typer.Option("--shingle", rich_help_panel="Filter", help="Words per shingle for --near-dedup.", min=1, max=64)] = 5,
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", rich_help_panel="Filter", help="Drop records that appear in this eval file (repeatable).", show_default=False)] = None,
    exclude_key: Annotated[str, typer.Option("--exclude-key", rich_help_panel="Filter", help="Match --exclude by: record, first-user, prompt or a FIELD.")] = "record",
    decontaminate: Annotated[list[Path] | None, typer.Option("--decontaminate", rich_help_panel="Filter", help="Set aside records sharing a word --ngram with this eval file (repeatable).", show_default=False)] = None,
    ngram: Annotated[int, typer.Option("--ngram", rich_help_panel="Filter", help="The n-gram length for --decontaminate.", min=1, max=64)] = 13,
    to: Annotated[str | None, typer.Option("--to", rich_help_panel="Filter", help="chat: convert alpaca, sharegpt and prompt/completion records to chat messages.", show_default=False)] = None,
    holdout: Annotated[float | None, typer.Option("--holdout", rich_help_panel="Filter", help="Hold out this fraction of each source (stable hash, before the draw) for validation shards; held-out records are never drawn or upsampled.", min=0.0, max=1.0, show_default=False)] = None,
    holdout_key: Annotated[str | None, typer.Option("--holdout-key", rich_help_panel="Filter", help="What --holdout hashes: first-user (default), prompt, record or a FIELD.", show_default=False)] = None,
    holdout_seed: Annotated[int, typer.Option("--holdout-seed", rich_help_panel="Filter", help="Seed of the holdout hash.")] = 0,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel="Format", help="Shard format: jsonl or parquet.")] = "jsonl",
    compression: Annotated[str | None, typer.Option("--compression", rich_help_panel="Format", help="Parquet page codec: zstd (default), snappy, gzip, none.", show_default=False)] = None,
    shuffle_memory: Annotated[str, typer.Option("--shuffle-memory", rich_help_panel="Run", help="Memory for one shuffle bucket.")] = "256MB",
    engine: Annotated[str | None, typer.Option("--engine", rich_help_panel="Run", help="Write the mix on an executor: local or ray (same bytes as without it).", show_default=False)] = None,
    jobs: Annotated[str, typer.Option("--jobs", "-j", rich_help_panel="Run", help="Worker processes: a number or auto.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", rich_help_panel="Run", help="Replace a previous run in OUT (deletes exactly the files its manifest lists).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel="Run", help="Filter and draw, print the shards that would be written; write nothing to OUT.")] = False,
    json_output: Annotated[bool, typer.Option("--json", rich_help_panel="Run", help="Print one JSON summary on stdout and nothing else.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", rich_help_panel="Run", help="No summary or warnings; errors only.")] = False,
) -> None:
    """Draw a training mix from weighted sources: each source filtered alone, drawn in
    proportion to its weight (upsampled in further epochs when its share exceeds it), all
    shuffled together by --seed into shards; the manifest records the draw per source.

    Example: shardkit mix chat.jsonl=3 code.jsonl=1 -o mix/ --records 100000 --seed 7 -n 50000
    """
    from shardkit.pipeline.mix import mix as run_mix
    from shardkit.pipeline.mix import parse_sources

    with exit_on_error():
        if max_records is None and max_bytes is None and num_shards is None:
            raise UsageError("say how to cut: give --max-records N, --max-bytes SIZE or --num-shards N")
        plan = _split_plan(
            max_records=max_records, max_bytes=max_bytes, num_shards=num_shards, oversize="own-shard",
            name=name or "{stem}-{index:05d}.jsonl", rejects="rejects.jsonl", validate=validate, max_tokens=max_tokens,
            tokenizer=tokenizer if validate is not None and max_tokens is not None else None, max_line_bytes="16MiB",
            fmt=fmt, compression=compression, row_group_bytes=None, schema_from=None, on_conflict="json-string",
            shuffle=False, seed=None, shuffle_memory=shuffle_memory, holdout=holdout, holdout_key=holdout_key,
            holdout_seed=holdout_seed,
            dedup=dedup, exclude=exclude, exclude_key=exclude_key, decontaminate=decontaminate, ngram=ngram,
            near_dedup=near_dedup, shingle=shingle, to=to, max_errors=None, max_reject_ratio=None,
            allow_empty=False, record_plan=True,
        )
        result = run_mix(
            parse_sources(sources, weights), out, plan, seed=seed, records=records, tokens=tokens,
            tokenizer=str(tokenizer) if tokenizer else None, engine=engine, jobs=jobs_option(jobs),
            overwrite=overwrite, dry_run=dry_run, warn=warn_printer(quiet or json_output),
        )
    if json_output:
        print_json({**result.summary(), "mix": result.manifest.get("mix")})
        return
    if quiet:
        return
    _render_split(result)
    m = result.manifest.get("mix") or {}
    c = m.get("counts")
    if c:
        held = f" + {c['held_out']:,} held out" if c.get("held_out") else ""
        typer.echo(f"mix: {c['read']:,} records read = {c['set_aside']:,} set aside{held} + {c['available']:,} available; "
                   f"{c['drawn']:,} drawn (seed {m['seed']}):")
    for s in m.get("sources", []):
        target = f"{s.get('tokens_drawn', 0):,} tokens, " if "tokens_drawn" in s else ""
        held = f"{s['held_out']:,} held out, " if "held_out" in s else ""
        typer.echo(
            f"  {s['path']}: weight {s['weight']:g}: {s['read']:,} read, {sum(s['set_aside'].values()):,} set aside, "
            f"{held}{s['available']:,} available, {s['drawn']:,} drawn ({target}{s['epochs']:g} epochs)"
        )


@app.command()
def report(
    inputs: Annotated[list[str], typer.Argument(help="JSON Lines (plain, .gz, .zst), .json arrays or Parquet.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write (self-contained: opens with no network).", show_default=False)],
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Also token histograms (after the model's chat template when it has one).", show_default=False)] = None,
    kind: Annotated[str, typer.Option("--kind", "-k", help="Record kind for the reject reasons: a kind or auto.")] = "auto",
    sample: Annotated[int, typer.Option("--sample", help="Records in the sample table.", min=0)] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
    json_output: JsonOpt = False,
) -> None:
    """One HTML page to look at before training: lengths and tokens per kind, turns, reject
    reasons, duplicates, the longest records and a sample, with the numbers of `stats`.

    Example: shardkit report train.jsonl -o report.html --tokenizer models/Qwen3-0.6B
    """
    from shardkit.pipeline.report import build_report, write_report

    with exit_on_error():
        total = sum(os.path.getsize(p) for p in inputs if p != "-" and os.path.isfile(p)) or None
        with progress_bar(total, not json_output, "report") as progress:
            data = build_report(inputs, tokenizer=str(tokenizer) if tokenizer else None, kind=kind, sample=sample,
                                seed=seed, progress=progress)
        path = write_report(data, out)
    if json_output:
        print_json({"out": str(path), **data})
    else:
        typer.echo(f"wrote {path} ({format_size(path.stat().st_size)}): open it in a browser")


@app.command()
def detokenize(
    shard: Annotated[Path, typer.Argument(help="A tokenized shard (split --tokenize): .parquet or .jsonl.", show_default=False)],
    row: Annotated[int, typer.Option("--row", help="Which row (from 0).", min=0)] = 0,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="The model folder (default: the one the manifest beside the shard names).", show_default=False)] = None,
    json_output: JsonOpt = False,
) -> None:
    """Print a tokenized row back as text, the tokens with no loss (labels -100) marked ⟦like this⟧.

    Example: shardkit detokenize shards/part-00000.parquet --row 3
    """
    from shardkit.pipeline.tokenstage import read_row, segments
    from shardkit.records.tokens import load_tokenizer

    with exit_on_error():
        model = tokenizer
        if model is None:
            manifest = shard.parent / "manifest.json"
            try:
                recorded = orjson.loads(manifest.read_bytes()).get("tokenize", {}).get("model")
            except (OSError, orjson.JSONDecodeError):
                recorded = None
            if not recorded:
                raise UsageError(f"{shard}: no manifest beside it names the tokenizer; give --tokenizer MODEL_DIR")
            model = Path(recorded) if Path(recorded).is_absolute() else shard.parent / recorded
        ids, labels, rows = read_row(shard, row)
        parts = segments(load_tokenizer(model), ids, labels)
    learned = sum(1 for x in labels if x != -100)
    if json_output:
        print_json({"shard": str(shard), "row": row, "rows": rows, "tokens": len(ids), "label_tokens": learned,
                    "segments": [{"loss": loss, "text": text} for loss, text in parts]})
        return
    typer.echo(f"{shard} row {row} of {rows}: {len(ids):,} tokens, {learned:,} with a loss; no loss ⟦marked⟧")
    typer.echo("".join(text if loss else f"⟦{text}⟧" for loss, text in parts))


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
        result = run_rotate(directory, older_than=duration_option(older_than, "--older-than"),
                            max_bytes=size_option(max_bytes, "--max-bytes"), compress=compress,
                            delete=delete, yes=yes, dry_run=dry_run,
                            journal=Journal.for_root(root) if root else None)
    if json_output:
        print_json(result.to_dict())
    else:
        for a in result.actions:
            verb = a.action if result.applied else f"would {a.action}"
            typer.echo(f"{verb}: {a.name} ({format_size(a.bytes_before)}){' ' + a.status if a.status == 'skipped' else ''}")
        if result.why_not_applied:
            typer.echo(f"nothing changed: {result.why_not_applied}")
    summary({"files": len(result.actions), "freed": format_size(result.bytes_freed)})


