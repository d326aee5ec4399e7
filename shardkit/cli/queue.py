"""`shardkit queue ...`: the training queue's commands."""

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from shardkit.cli.common import (
    DryRunOpt,
    JsonOpt,
    app,
    duration_option,
    exit_on_error,
    note_command,
    print_json,
    raise_on_sigterm,
    safe,
    summary,
    warn_printer,
)
from shardkit.core.io import deferred_signals, format_size

# ---------------------------------------------------------------- queue

queue_app = typer.Typer(
    help="The training queue: ingest drops, claim/complete/fail, retry, requeue, hold, prune, doctor.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(queue_app, name="queue")


@queue_app.callback()
def _queue_main(ctx: typer.Context) -> None:
    """The training queue: ingest drops, claim/complete/fail, retry, requeue, hold, prune, doctor."""
    note_command(ctx)

RootArg = Annotated[  # the old positional form: still taken, with a deprecation notice
    Path | None, typer.Argument(help="Deprecated: use --root.", show_default=False, hidden=True, metavar="[ROOT]")
]
RootOpt = Annotated[
    Path | None, typer.Option("--root", help="Queue root (default: $SHARDKIT_ROOT, then the current folder).", show_default=False)
]


def _root(root: Path | None, old: Path | None) -> Path | None:
    """--root, or the deprecated positional ROOT (with a one-line notice); not both."""
    if old is None:
        return root
    if root is not None and Path(root) != Path(old):
        from shardkit.core.errors import UsageError

        with exit_on_error():
            raise UsageError(f"two queue roots given: --root {root} and ROOT {old}; give --root only")
    sys.stderr.write(f"shardkit: note: a queue ROOT argument is deprecated; write --root {safe(str(old))} "
                     "(or set SHARDKIT_ROOT)\n")
    return old


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


def _moved(entries, verb: str, dry_run: bool, json_output: bool) -> None:
    rows = [{"name": e.was or e.name, "to": e.state, "path": str(e.path), **({"as": e.name} if e.was else {})}
            for e in entries]
    if json_output:
        print_json({"dry_run": dry_run, "moved": rows})
    else:
        for r in rows:
            renamed = f" as {r['as']} (its name was taken there)" if "as" in r else ""
            typer.echo(safe(f"{'would move' if dry_run else verb}: {r['name']} -> {r['to']}{renamed}"))
    summary({("would move" if dry_run else "moved"): len(rows)})


@queue_app.command("init")
def queue_init(old_root: RootArg = None, root: RootOpt = None) -> None:
    """Create the queue folders under ROOT (idempotent; existing files are left alone).

    Example: shardkit queue init --root /data/train-queue
    """
    root = _root(root, old_root)
    from shardkit.queue.settings import resolve_root
    from shardkit.queue.state import Queue

    with exit_on_error():
        q = Queue(resolve_root(root), create=True)
    typer.echo(f"queue ready at {q.root}")


@queue_app.command("status")
def queue_status(
    old_root: RootArg = None,
    root: RootOpt = None,
    json_output: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when something needs a person (stale leases, dead or quarantined files, low disk, oversize files).")] = False,
    watch: Annotated[float | None, typer.Option("--watch", help="A live table, refreshed every N seconds until Ctrl-C (plain repeated reports when stdout is not a terminal).", min=0.05, show_default=False)] = None,
    prometheus: Annotated[Path | None, typer.Option("--prometheus", help="Also write the metrics as a Prometheus textfile (node_exporter's textfile collector), atomically; with --watch, at every refresh.", show_default=False)] = None,
) -> None:
    """Files, records, bytes and oldest age per state; stale leases; disk; what needs a person.

    Example: shardkit queue status --check   (for cron: exit 1 means look)

    Example: shardkit queue status --prometheus /var/lib/node_exporter/textfile/shardkit.prom
    """
    root = _root(root, old_root)
    with exit_on_error():
        q = _open_queue(root)
        if watch and not json_output and sys.stdout.isatty():
            st = _watch_live(q, watch, prometheus)
        else:
            while True:
                try:
                    # a refresh is whole (metrics file, report) even if Ctrl-C comes during it;
                    # with --watch, Ctrl-C at any moment then ends the watch, exit 0
                    with deferred_signals() if watch else contextlib.nullcontext():
                        st = q.status()
                        if prometheus is not None:
                            _write_metrics(st, prometheus)
                        if json_output:
                            print_json(st)
                        else:
                            _render_status(st)
                    if not watch:
                        break
                    time.sleep(watch)
                except KeyboardInterrupt:
                    if not watch:
                        raise
                    break
    if check and not st["ok"]:
        raise typer.Exit(1)


def _write_metrics(st: dict, path: Path) -> None:
    from shardkit.queue.metrics import write_prometheus

    write_prometheus(st, path)


def _watch_live(q, every: float, prometheus: Path | None) -> dict:
    """`queue status --watch` on a terminal: one rich table, redrawn in place."""
    from rich.live import Live

    st = q.status()
    try:
        with Live(_status_table(st), refresh_per_second=4, screen=False) as live:
            while True:
                with deferred_signals():  # Ctrl-C between refreshes: never half a metrics file
                    if prometheus is not None:
                        _write_metrics(st, prometheus)
                time.sleep(every)
                with deferred_signals():
                    st = q.status()
                live.update(_status_table(st))
    except KeyboardInterrupt:
        pass
    return st


def _status_table(st: dict):
    from rich.table import Table

    table = Table(title=f"queue {st['root']}  ({time.strftime('%H:%M:%S')})", title_justify="left")
    for col, justify in (("state", "left"), ("files", "right"), ("records", "right"), ("bytes", "right"),
                         ("oldest", "right"), ("attempts", "right")):
        table.add_column(col, justify=justify)
    for state, s in st["states"].items():
        age = _age(s["oldest_age_s"]) if s["oldest_age_s"] is not None else "-"
        table.add_row(state, f"{s['files']:,}", f"{s['records']:,}", format_size(s["bytes"]), age, f"{s.get('attempts', 0):,}")
    d = st["disk"]
    notes = [f"disk free {format_size(d['free'])} of {format_size(d['total'])}; journal {format_size(st['journal_bytes'])}"]
    notes += [f"needs a person: {p}" for p in st["problems"]] or ["ok"]
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def _render_status(st: dict) -> None:
    typer.echo(f"queue {st['root']}")
    typer.echo(f"  {'state':<12} {'files':>6} {'records':>10} {'bytes':>10}  oldest")
    for state, s in st["states"].items():
        age = _age(s["oldest_age_s"]) if s["oldest_age_s"] is not None else "-"
        typer.echo(f"  {state:<12} {s['files']:>6} {s['records']:>10,} {format_size(s['bytes']):>10}  {age}")
    d = st["disk"]
    typer.echo(f"  disk free {format_size(d['free'])} of {format_size(d['total'])} (reserve {format_size(d['reserve'])}); journal {format_size(st['journal_bytes'])}")
    for name in st["unleased_processing"]:
        typer.echo(safe(f"  processing/{name}: no lease (moved by hand?)"))
    for p in st["problems"]:
        typer.echo(safe(f"  needs a person: {p}"))
    if st["ok"]:
        typer.echo("  ok")


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.1f}{unit}"
    return f"{seconds:.0f}s"


@queue_app.command("log")
def queue_log(
    old_root: RootArg = None,
    root: RootOpt = None,
    item: Annotated[str | None, typer.Option("--item", help="Only what happened to this file (a name, or an item id); a file split into shards brings its shards too.", show_default=False)] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only entries at or after this time: an ISO date or time (UTC unless it says), or a duration back from now (30m, 2h, 7d).", show_default=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="Only the last N entries.", min=1, show_default=False)] = None,
    json_output: JsonOpt = False,
) -> None:
    """The journal, rotated parts included: every move and delete, oldest first.

    Example: shardkit queue log --item big-2026-12-01.jsonl   (what happened to this file)
    """
    root = _root(root, old_root)
    from shardkit.queue.metrics import journal_log, parse_since

    with exit_on_error():
        q = _open_queue(root)
        entries = journal_log(q, item=item, since=parse_since(since) if since else None, limit=limit)
    if json_output:
        print_json({"root": str(q.root), "item": item, "since": since, "entries": entries})
        return
    for e in entries:
        moved = f"{e.get('from', '?')} -> {e['to']}" if "to" in e else ""
        rest = {k: v for k, v in e.items() if k not in ("ts", "op", "name", "from", "to", "id", "tx", "phase")}
        extra = " ".join(f"{k}={v}" for k, v in rest.items())
        typer.echo(safe(f"{e.get('ts', '?')}  {e.get('op', '?'):<14} {e.get('name', '-')}  {moved}  {extra}".rstrip()))
    if not entries:
        typer.echo("no journal entries" + (f" for {safe(item)}" if item else "") + (f" since {safe(since)}" if since else ""))


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
        print_json({"files": rows})
        return
    table = _table("state", "name", "records", "size", "attempts")
    for r in rows:
        table.add_row(r["state"], safe(r["name"]), f"{r['records']:,}" if r["records"] is not None else "-",
                      format_size(r["bytes"]), str(r["attempts"]) if r["attempts"] is not None else "-")
    _print_table(table, f"{len(rows)} file(s)")


def _table(*columns: str):
    """A rich table (rich is imported here only, when a table is drawn)."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        table.add_column(c, justify="right" if c in ("records", "size", "attempts", "bytes") else "left",
                         overflow="fold")
    return table


def _print_table(table, caption: str | None = None) -> None:
    from rich.console import Console

    console = Console(soft_wrap=False, highlight=False)
    console.print(table)
    if caption:
        console.print(caption, highlight=False)


@queue_app.command("show")
def queue_show(name: Annotated[str, typer.Argument(help="File name (or STATE/NAME).", show_default=False)], root: RootOpt = None,
               json_output: JsonOpt = False) -> None:
    """Show one file's record: state, attempts, history, lineage, lease.

    Example: shardkit queue show batch.jsonl
    """
    with exit_on_error():
        shown = _open_queue(root).show(name)
    if json_output:
        print_json(shown)
        return
    item, lease = shown["item"] or {}, shown["lease"]
    table = _table("", "")
    table.show_header = False
    table.columns[0].style = "bold"
    for key, value in (("state", shown["state"]), ("path", shown["path"]), ("size", format_size(shown["bytes"])),
                       ("id", item.get("id")), ("priority", item.get("priority")), ("attempts", item.get("attempts")),
                       ("records", item.get("records")), ("sha256", item.get("sha256")), ("kind", item.get("kind")),
                       ("created", item.get("created_at")), ("completed", item.get("completed_at")),
                       ("last error", item.get("last_error")), ("parent", item.get("parent")),
                       ("children", ", ".join(item.get("children") or []) or None)):
        if value is not None:
            table.add_row(key, safe(value))
    if lease:
        table.add_row("lease", safe(f"{lease['worker']} (pid {lease['owner_pid']} on {lease['host']})"))
    _print_table(table)
    history = item.get("history") or []
    if history:
        hist = _table("when", "op", "from", "to", "worker", "reason")
        for h in history:
            hist.add_row(*(safe(h.get(k) or "") for k in ("ts", "op", "from", "to", "worker", "reason")))
        _print_table(hist)


@queue_app.command("ingest")
def queue_ingest(
    old_root: RootArg = None,
    root: RootOpt = None,
    priority: Annotated[str | None, typer.Option("--priority", "-p", help="high, normal or low (default from shardkit.toml, else normal).", show_default=False)] = None,
    watch: Annotated[float | None, typer.Option("--watch", help="Keep ingesting: look again every N seconds until Ctrl-C.", show_default=False)] = None,
    max_errors: Annotated[int | None, typer.Option("--max-errors", min=0, help="Invalid records a drop may hold (default from shardkit.toml / SHARDKIT_MAX_ERRORS, else 0); beyond it the drop is quarantined, or stripped with on_invalid = \"strip\".", show_default=False)] = None,
    max_reject_ratio: Annotated[float | None, typer.Option("--max-reject-ratio", min=0.0, max=1.0, help="A drop with a larger share of invalid records is quarantined whole, even with on_invalid = \"strip\" (default from shardkit.toml / SHARDKIT_MAX_REJECT_RATIO, else 0.5).", show_default=False)] = None,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Validate complete inbox drops and route them: pending, split into shards, or quarantine.

    Files modified within the settle window, dotfiles, *.tmp and *.part are left alone.

    Example: shardkit queue ingest --root /data/train-queue --priority high
    """
    root = _root(root, old_root)
    from shardkit.queue.ingest import ingest

    with exit_on_error():
        q = _open_queue(root, priority=priority, max_errors=max_errors, max_reject_ratio=max_reject_ratio)
        signal.signal(signal.SIGTERM, raise_on_sigterm)
        while True:
            result = ingest(q, priority=priority, dry_run=dry_run, warn=warn_printer(json_output))
            if json_output:
                print_json(result.to_dict())
            else:
                for r in result.routed:
                    extra = f" ({r.reason})" if r.reason else ""
                    kids = f": {len(r.children)} shard(s)" if r.children else ""
                    kids += f" as {r.renamed} (its name was taken there)" if r.renamed else ""
                    typer.echo(safe(f"{'would route' if dry_run else 'routed'}: {r.name} -> {r.to}{kids}{extra}"))
                for name, why in result.skipped:
                    typer.echo(safe(f"skipped: {name}: {why}"))
            summary(result.counts())
            if not watch:
                break
            time.sleep(watch)


@queue_app.command("claim")
def queue_claim(
    old_root: RootArg = None,
    root: RootOpt = None,
    worker: Annotated[str, typer.Option("--worker", "-w", help="Who claims (shown in the lease and journal).")] = "worker",
    wait: Annotated[str | None, typer.Option("--wait", help="Wait up to DUR for a file (e.g. 30s, 5m).", show_default=False)] = None,
    owner_pid: Annotated[int | None, typer.Option("--owner-pid", help="Process whose death frees the file (default: the caller, shardkit's parent).", show_default=False)] = None,
    json_output: JsonOpt = False,
) -> None:
    """Claim the oldest pending file (high priority first); print its path. Exit 1 if none.

    attempts += 1 at claim. Example: f=$(shardkit queue claim --worker gpu0) && train "$f" && shardkit queue complete "$f"
    """
    root = _root(root, old_root)
    with exit_on_error():
        q = _open_queue(root)
        claimed = q.claim(worker, owner_pid=owner_pid or os.getppid(), wait=duration_option(wait, "--wait") or 0.0)
    if not claimed:
        if json_output:
            print_json({"claimed": False}, ok=False)
        sys.stderr.write("shardkit: nothing pending\n")
        raise typer.Exit(1)
    if json_output:
        print_json({"claimed": True, **claimed.to_dict()})
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
            print_json({"dry_run": dry_run, "split": [r.to_dict() for r in routed]})
        else:
            for r in routed:
                typer.echo(f"{'would split' if dry_run else 'split'}: {r.name} -> {len(r.children)} shard(s)")
        summary({"split": len(routed)})
        return
    _moved(moved, "retried", dry_run, json_output)


@queue_app.command("requeue-stale")
def queue_requeue_stale(
    old_root: RootArg = None,
    root: RootOpt = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Stale after DUR without heartbeat (default stale_after, 15m).", show_default=False)] = None,
    dry_run: DryRunOpt = False, json_output: JsonOpt = False,
) -> None:
    """processing -> pending (or dead) when the lease expired AND its owner process is gone.

    Example: shardkit queue requeue-stale --older-than 30m --dry-run
    """
    root = _root(root, old_root)
    with exit_on_error():
        out = _open_queue(root).requeue_stale(older_than=duration_option(older_than, "--older-than"), dry_run=dry_run)
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
    old_root: RootArg = None,
    root: RootOpt = None,
    keep: Annotated[int | None, typer.Option("--keep", help="Keep the N most recently completed files.", min=0, show_default=False)] = None,
    older_than: Annotated[str | None, typer.Option("--older-than", help="Delete completed files older than DUR (e.g. 7d).", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete. Without it, only the plan is printed.")] = False,
    dry_run: DryRunOpt = False, json_output: JsonOpt = False,
) -> None:
    """Delete completed files by completion time (never held, leased or dead). Needs --yes.

    Without --yes it prints the plan and deletes nothing; --dry-run does the same even
    with --yes (for a command line kept in a script, to look before letting it delete).

    Example: shardkit queue prune --keep 100 --older-than 7d --yes
    """
    root = _root(root, old_root)
    with exit_on_error():
        plan = _open_queue(root).prune(keep=keep, older_than=duration_option(older_than, "--older-than"), yes=yes and not dry_run)
    doit = yes and not dry_run
    if json_output:
        print_json({"deleted": plan.deleted, "freed": plan.freed, "plan": [e.name for e in plan.delete], "kept": len(plan.keep), "dry_run": not doit})
    else:
        for e in plan.delete:
            typer.echo(safe(f"{'deleted' if doit else 'would delete'}: {e.state}/{e.name} ({format_size(e.size)})"))
        if not doit and plan.delete:
            typer.echo("nothing deleted: add --yes to delete these files")
    summary({"deleted" if doit else "would delete": plan.deleted if doit else len(plan.delete), "kept": len(plan.keep)})


@queue_app.command("doctor")
def queue_doctor(
    old_root: RootArg = None,
    root: RootOpt = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is safe (idempotent); report the rest.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Check the queue: temp leftovers, records vs files, leases, duplicates, unfinished operations.

    Exit 1 when problems remain. Example: shardkit queue doctor --repair
    """
    root = _root(root, old_root)
    from shardkit.queue.doctor import doctor

    with exit_on_error():
        report = doctor(_open_queue(root), repair=repair)
    if json_output:
        print_json(report.to_dict())
    else:
        for f in report.findings:
            tag = "repaired" if f.repaired else ("info" if f.code == "external_processing" else "problem")
            typer.echo(safe(f"{tag}: {f.code}: {f.message}"))
        typer.echo("ok" if report.ok else f"{len(report.problems)} problem(s) remain")
    if not report.ok:
        raise typer.Exit(1)


