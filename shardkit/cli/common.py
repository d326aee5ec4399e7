"""What every command module shares: the Typer app, error mapping, output helpers."""

import contextlib
import gc
import os
import re
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
import typer

from shardkit import __version__
from shardkit.core.errors import ShardkitError, UsageError
from shardkit.core.io import parse_size

app = typer.Typer(
    help="Keep LLM fine-tuning data healthy: split big JSONL files into shards, with a manifest "
    "and checksums the trainer can trust.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


PANELS = ("Cut", "Check", "Transform", "Format", "Run")  # split's option groups, in --help order


class GroupedHelpCommand(typer.core.TyperCommand):
    """--help with options grouped under their `rich_help_panel` names, drawn by click's
    plain formatter: grouped help without importing rich, on any terminal."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                panel = "Arguments"
            else:
                panel = getattr(param, "rich_help_panel", None) or "Options"
            groups.setdefault(panel, []).append(record)
        order = ["Arguments", "Options", *PANELS]
        for panel, records in sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
            with formatter.section(panel):
                formatter.write_dl(records)


# ---------------------------------------------------------------- plumbing


def emit_error(message: str) -> None:
    sys.stderr.write(f"shardkit: error: {safe(message)}\n")


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn library errors into one line on stderr and the documented exit code; under
    --json, also one error object on stdout (`error_document`)."""
    try:
        yield
    except ShardkitError as e:
        _fail(str(e), e.exit_code, _code_of(e))
    except KeyboardInterrupt:
        _fail("interrupted", 130, "interrupted")
    except BrokenPipeError:
        raise typer.Exit(0) from None
    except OSError as e:
        _fail(f"{e.filename or ''}: {e.strerror or e}".lstrip(": "), 3, "input")
    except (RecursionError, TypeError) as e:
        # orjson writes JSON nested at most 254 deep (its "Recursion limit reached" is a
        # TypeError), Python walks about 1000 frames: a record nested deeper than a step can
        # re-encode or walk is bad input, not a bug. Any other TypeError is a bug: re-raised.
        if (isinstance(e, TypeError) and "Recursion limit reached" not in str(e)) or os.environ.get("SHARDKIT_DEBUG"):
            raise
        _fail("a record is nested too deeply (arrays/objects over about 250 levels) for this step to re-encode; "
              "such records cannot be training data: remove them (split without record options copies them as "
              "they are). If no record is that deep, it is a bug: SHARDKIT_DEBUG=1 shows where", 1, "data")


def _fail(message: str, exit_code: int, code: str) -> None:
    emit_error(message)
    if json_requested():
        _write_json(error_document(command_name(), message, exit_code, code))
    raise typer.Exit(exit_code) from None


def _code_of(e: BaseException) -> str:
    """UsageError -> "usage", GateError -> "gate", ConflictError -> "conflict"..."""
    name = type(e).__name__
    name = name[: -len("Error")] if name.endswith("Error") and name != "Error" else name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_WHERE = re.compile(r"(?P<file>[^\s:][^:]*?)(?::(?P<line>\d+))?: ")


def error_document(command: str, message: str, exit_code: int, code: str, *, where: bool = True) -> dict:
    """The --json form of an error: `{"command", "ok": false, "error": {...}}`; `file` and
    `line` when the message starts with FILE[:LINE]: (a URL, an existing name, or a word
    with no space that looks like a path or a file name)."""
    file = line = None
    m = _WHERE.match(message) if where else None
    f = m["file"] if m else ""
    if m and ("://" in f or os.path.exists(f) or (" " not in f and not f.startswith("-") and ("/" in f or "." in f))):
        file, line = m["file"], int(m["line"]) if m["line"] else None
    return {"command": command, "ok": False,
            "error": {"code": code, "exit_code": exit_code, "message": message, "file": file, "line": line}}


_COMMAND: list[str] = []  # filled by the group callbacks: ["queue", "status"]


def note_command(ctx: typer.Context) -> None:
    """Called by each group's callback: remember the subcommand being run."""
    if ctx.invoked_subcommand:
        _COMMAND.append(ctx.invoked_subcommand)


def command_name() -> str:
    """The running command as the user typed it after `shardkit`: "split", "queue status"."""
    return " ".join(_COMMAND) or "shardkit"


def json_requested() -> bool:
    return "--json" in sys.argv[1:]


def raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def warn_printer(quiet: bool):
    def warn(message: str) -> None:
        if not quiet:
            sys.stderr.write(f"shardkit: warning: {message}\n")

    return warn


@contextlib.contextmanager
def progress_bar(total: int | None, enabled: bool, desc: str) -> Iterator[Any]:
    """A tqdm byte counter on stderr, only on a terminal; None otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr) as bar:
        yield bar.update


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


def safe(text: object) -> str:
    """A file name or message for the terminal: control characters shown as \\xNN, never sent."""
    return str(text).translate(_CONTROL)


def print_json(data: dict, ok: bool | None = None) -> None:
    """Every --json output: one object, `{"command": ..., "ok": ..., <the command's fields>}`
    (the schemas are in docs/schemas/). `ok` defaults to the data's own "ok", else true."""
    if ok is None:
        ok = bool(data.get("ok", True))
    _write_json({"command": command_name(), "ok": ok, **{k: v for k, v in data.items() if k not in ("command", "ok")}})


def _write_json(doc: dict) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def size_option(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except UsageError as e:
        raise typer.BadParameter(str(e).replace("invalid size", f"{flag}: invalid size")) from None


def jobs_option(value: str) -> int | None:
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
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Keep LLM fine-tuning data healthy.

    Exit codes: 0 done; 1 the data is bad (invalid records, checksum mismatch);
    2 usage error; 3 input missing/unreadable or disk full; 4 conflict (output
    exists, name taken); 130 interrupted (nothing partial is left behind).
    """
    _COMMAND.clear()
    note_command(ctx)


def freeze_heap() -> None:
    """Leave the objects made so far (modules, typer's tree) out of garbage collection: a
    long run allocates much, and each full collection would walk them all again (on a
    Parquet split that was 5-10% of the time). Called again after a big lazy import."""
    gc.freeze()


def arrow_pool() -> None:
    """Arrow's jemalloc pool, unless $ARROW_DEFAULT_MEMORY_POOL chooses (Linux, where the
    pyarrow wheels have it; set before pyarrow is imported, so every Arrow allocation
    uses it). Measured on a 290 MB Parquet split: peak RSS 455 MB against 520 MB with
    the default mimalloc, and no slower (bench/parquet.py)."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")]


def duration_option(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    from shardkit.queue.settings import parse_duration

    try:
        return parse_duration(value)
    except UsageError as e:
        raise typer.BadParameter(str(e), param_hint=flag) from None


def summary(counts: dict) -> None:
    sys.stderr.write("shardkit: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")


def main() -> None:
    """Console entry point."""
    arrow_pool()
    freeze_heap()
    try:
        if "--json" in sys.argv[1:]:
            _main_json()
        else:
            app()
    except KeyboardInterrupt:
        emit_error("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: one line, traceback on request
        if os.environ.get("SHARDKIT_DEBUG"):
            raise
        emit_error(f"internal error: {e.__class__.__name__}: {e} (set SHARDKIT_DEBUG=1 for a traceback and please report it)")
        sys.exit(1)


def _main_json() -> None:
    """The app, with click's own usage errors (a bad flag value, a missing argument) also
    answered by an error object on stdout, as --json promises."""
    try:
        rc = app(standalone_mode=False)
    except typer.Abort:
        emit_error("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # click's UsageError, BadParameter... (typer vendors click)
        if not hasattr(e, "show"):
            raise
        e.show()
        code = getattr(e, "exit_code", 2)
        _write_json(error_document(command_name(), e.format_message(), code, "usage", where=False))
        sys.exit(code)
    sys.exit(rc if isinstance(rc, int) else 0)
