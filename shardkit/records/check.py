"""Checking records block by block: a validator (built-in kind or JSON Schema), an optional
token limit, and an optional pool of worker processes so every core works on a large input.

`validate` and `split --validate` both read an input as blocks of whole lines
(`records.BlockReader`) and hand each block to `Checks.checked`, which yields the blocks back
in input order, each with a `Verdict`: a partial `Report` and the invalid records' positions.
The caller keeps the block's bytes, so rejects are written from the original bytes and
valid records are copied as they were; only positions and issues cross process boundaries.

Merging per-block reports in order gives exactly the report of a single pass, so the
output does not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from shardkit.core.blocks import Block, BlockReader
from shardkit.core.errors import InputError, UsageError
from shardkit.core.io import pid_alive
from shardkit.records.template import TemplateError, chat_view, load_chat_template
from shardkit.records.tokens import (
    TokenTally,
    count_spans,
    load_tokenizer,
    loses_everything,
    record_text,
)
from shardkit.records.validate import (
    DEFAULT_MAX_LINE_BYTES,
    ERROR,
    KINDS,
    Issue,
    RecordResult,
    Report,
    Validator,
    decode_line,
    detect_kind,
)

_BLANK_FIRST = frozenset(b" \t\r\n\x0b\x0c")
_KIND_ORDER = {kind: i for i, kind in enumerate(KINDS)}
# Below this size a pool costs more (worker start-up, ~0.2 s) than it saves.
POOL_MIN_BYTES = 32 * 1024 * 1024


# ---------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """What to check. Picklable: worker processes build their own `Checker` from it."""

    kind: str = "auto"
    schema: str | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_tokens: int | None = None
    tokenizer: str | None = None
    template: bool = True  # render chat records with the model's chat template, when it has one
    examples: int = 5

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.max_tokens is not None and self.tokenizer is None:
            raise UsageError("--max-tokens needs --tokenizer PATH (a tokenizer.json or a model folder)")
        if self.tokenizer is not None and self.max_tokens is None:
            raise UsageError("--tokenizer needs --max-tokens N here (token lengths are in `shardkit stats --tokenizer`)")

    @classmethod
    def from_spec(cls, spec: str, **kw: Any) -> CheckOptions:
        """`--validate KIND|auto|SCHEMA.json`: a kind name, or a path to a JSON Schema file."""
        if spec == "auto" or spec in KINDS:
            return cls(kind=spec, **kw)
        if spec.endswith(".json") or os.sep in spec or os.path.isfile(spec):
            return cls(schema=spec, **kw)
        Validator(spec)  # raises UsageError with the list of kinds and a did-you-mean
        raise AssertionError("unreachable")

    def params(self) -> dict:
        """What the manifest records about the check (same check -> same params)."""
        return {
            "kind": None if self.schema else self.kind,
            "schema": self.schema,
            "max_line_bytes": self.max_line_bytes,
            "max_tokens": self.max_tokens,
            "tokenizer": self.tokenizer,
        }


# ---------------------------------------------------------------- schema validator


class SchemaValidator:
    """Any JSON Schema (Draft 2020-12) instead of a built-in kind; same `check` as Validator."""

    def __init__(self, schema_path: str | os.PathLike, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            schema = orjson.loads(Path(schema_path).read_bytes())
        except IsADirectoryError:
            raise InputError(f"{schema_path}: is a directory, expected a JSON Schema file") from None
        except OSError as e:
            raise InputError(f"{schema_path}: cannot read schema: {e.strerror}") from None
        except orjson.JSONDecodeError as e:
            raise UsageError(f"{schema_path}: schema is not valid JSON: {e}") from None
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            raise UsageError(f"{schema_path}: not a valid JSON Schema: {e.message}") from None
        self._validator = Draft202012Validator(schema)
        self._max_line_bytes = max_line_bytes

    def check(self, raw) -> RecordResult:
        obj, issue = decode_line(bytes(raw).rstrip(b"\r\n"), max_line_bytes=self._max_line_bytes)
        if issue is not None:
            return RecordResult(None, None, (issue,), False)
        issues = tuple(
            Issue("schema", ERROR, _json_path(e.absolute_path), e.message)
            for e in sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        )
        return RecordResult(obj, "schema", issues, not issues)


def _json_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ---------------------------------------------------------------- checking


class Bad(NamedTuple):
    """An invalid record: its line, its bytes [start, end) (newline included), why."""

    line: int
    start: int
    end: int
    code: str
    reason: str


class Verdict(NamedTuple):
    report: Report
    bad: list[Bad]
    lines: int  # physical lines checked, blank ones included


def reason_of(issues: Iterable[Issue]) -> tuple[str, str]:
    """(first error code, all errors as one line) for a rejects entry."""
    errors = [i for i in issues if i.severity == ERROR]
    reason = "; ".join(f"{i.path}: {i.message}" if i.path else i.message for i in errors)
    return (errors[0].code if errors else "invalid"), reason


class Checker:
    """Validates lines and, with a tokenizer, flags records over `max_tokens`."""

    def __init__(self, options: CheckOptions) -> None:
        self.options = options
        if options.schema is not None:
            self.validator: Any = SchemaValidator(options.schema, max_line_bytes=options.max_line_bytes)
        else:
            self.validator = Validator(options.kind, max_line_bytes=options.max_line_bytes)
        self.tokenizer = load_tokenizer(options.tokenizer) if options.tokenizer else None
        self.template = load_chat_template(options.tokenizer) if options.tokenizer and options.template else None
        self._raw_useful = True  # the compiled gate decides most lines (else: skipped from then on)

    @property
    def scans_without_gil(self) -> bool:
        """Whether check_lines does its bulk in the compiled gate, which releases the GIL."""
        scanner = getattr(self.validator, "raw_scanner", None)
        return self.tokenizer is None and scanner is not None and scanner() is not None

    def check_lines(self, data: bytes, first_line: int, display: str) -> Verdict:
        """Check whole lines (each ending in b"\\n"; blank lines are reported, not checked).

        Positions in the verdict are relative to the start of `data`."""
        report = Report(max_examples=self.options.examples)
        entries: list[tuple[int, int, int, RecordResult]] = []
        check = self.validator.check
        gate = getattr(self.validator, "gate", None) if self.tokenizer is None else None
        gate_extra = self.validator.gate_extra if gate is not None else None
        check_decoded = self.validator.check_decoded if gate is not None else None
        max_line = self.options.max_line_bytes
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        clean: dict[str | None, int] = {}
        # records the extra-keys gate passes give one shared result; past the report's
        # examples, they are only counted (`bulk`): what adding each would do, without the work
        seen: dict[int, int] = {}
        bulk: dict[int, list] = {}
        cap = self.options.examples
        blank_first = _BLANK_FIRST
        # Lines as (index, start, end, code): code -1 is a line to check here, code k > 0 a
        # line the compiled gate passed whose result is shared[k - 1] (clean ones it counted).
        scan = self.validator.raw_scanner() if gate is not None and self._raw_useful else None
        if scan is not None:
            shared: list[RecordResult] = []
            zero_kind = zero_kind_of(self.validator.kind)
            n_clean, n_lines, events = scan(data, max_line, partial(_shape_code, self.validator, shared, zero_kind))
            if n_clean:
                clean[zero_kind] = n_clean
        else:
            shared, n_lines, events = [], *_every_line(data)
        n_python = 0  # lines checked here
        for index, pos, end, code in events:
            line = first_line + index
            if code > 0:
                res = shared[code - 1]
                if type(res) is str:  # a clean record of another kind than zero_kind's
                    clean[res] = clean.get(res, 0) + 1
                    continue
            else:
                n_python += 1
                raw = data[pos : end - 1]
                if gate is None or len(raw) > max_line:
                    res = None
                else:  # the hot path of Validator.check, inlined: decode, gate, count
                    try:
                        obj = loads(raw)
                    except decode_error:
                        obj = None
                    if type(obj) is dict:
                        kind = gate(obj)
                        if kind is not None:
                            clean[kind] = clean.get(kind, 0) + 1
                            continue
                        # parsed once: the extra-keys gate, else the explainer on the decoded record
                        res = gate_extra(obj)
                        if res is None:
                            entries.append((line, pos, end, check_decoded(raw, obj)))
                            continue
                    else:
                        res = None
                if res is None:
                    if not raw or (raw[0] in blank_first and not raw.strip()):
                        report.add_blank(display, line)
                    else:
                        entries.append((line, pos, end, check(raw)))
                    continue
            k = seen.get(id(res), 0)
            if k >= cap:
                b = bulk.get(id(res))
                if b is None:
                    bulk[id(res)] = [res, 1]
                else:
                    b[1] += 1
                continue
            seen[id(res)] = k + 1
            entries.append((line, pos, end, res))
        if scan is not None and n_lines >= 64 and 2 * n_python > n_lines:
            self._raw_useful = False  # mostly records the gate leaves to Python: not worth a scan
        for kind in sorted(clean, key=_KIND_ORDER.get):  # one order, whichever path counted them
            report.add_clean(display, kind, clean[kind])
        verdict = self._finish(report, entries, display, n_lines)
        for res, n in bulk.values():  # after the entries: their examples came first
            report.add_many(display, res, n)
        return verdict

    def check_records(self, records: Iterable[tuple[int, int, bytes]], display: str) -> Verdict:
        """Check records given one by one as (line, offset, raw): positions are offsets."""
        report = Report(max_examples=self.options.examples)
        check = self.validator.check
        entries = [(line, offset, offset + len(raw), check(raw)) for line, offset, raw in records]
        return self._finish(report, entries, display, len(entries))

    def _finish(self, report: Report, entries: list, display: str, lines: int) -> Verdict:
        if self.tokenizer is not None:
            self._limit_tokens(entries, report)
        bad: list[Bad] = []
        add = report.add
        for line, start, end, res in entries:
            add(display, line, res)
            if not res.ok:
                bad.append(Bad(line, start, end, *reason_of(res.issues)))
        return Verdict(report, bad, lines)

    def _limit_tokens(self, entries: list, report: Report) -> None:
        """Count the tokens of the valid records (after the chat template, when the model
        has one) and flag those over --max-tokens, and those that keep no assistant token
        within it (they add no loss at all)."""
        limit = self.options.max_tokens
        template = self.template
        tally = TokenTally(limit=limit, template=template.name if template is not None else None)
        texts: list[str] = []
        spans: list = []
        counted: list[int] = []
        for i, (line, start, end, res) in enumerate(entries):
            if not res.ok:
                continue
            kind = res.kind if res.kind in KINDS else detect_kind(res.obj)
            view = chat_view(res.obj, kind) if template is not None else None
            if view is None:
                texts.append(record_text(res.obj, kind))
                spans.append(None)
            else:
                try:
                    rendered = template.assistant_spans(view[0], tools=view[1])
                except TemplateError as e:
                    issue = Issue("template_error", ERROR, "", f"the chat template cannot render this record: {e}")
                    entries[i] = (line, start, end, res._replace(issues=(*res.issues, issue), ok=False))
                    continue
                texts.append(rendered.text)
                spans.append(rendered.spans if rendered.problem is None else None)
                if rendered.problem is not None:
                    issue = Issue("template_prefix", "warning", "", f"assistant tokens unknown: {rendered.problem}")
                    res = res._replace(issues=(*res.issues, issue))
                    entries[i] = (line, start, end, res)
            counted.append(i)
        after = " after the chat template" if template is not None else ""
        for i, count in zip(counted, count_spans(self.tokenizer, texts, spans), strict=True):
            tally.add(count)
            found = []
            if count.tokens > limit:
                found.append(Issue("too_many_tokens", ERROR, "", f"{count.tokens:,} tokens{after}, over --max-tokens {limit:,}"))
            if loses_everything(count, limit):
                if count.assistant == 0:
                    message = "no assistant tokens after the chat template: the record adds no loss"
                else:
                    message = (
                        f"every assistant token lies beyond --max-tokens {limit:,} (the first is token "
                        f"{count.first_assistant:,} of {count.tokens:,}): truncated, the record adds no loss"
                    )
                found.append(Issue("no_loss", ERROR, "", message))
            if found:
                line, start, end, res = entries[i]
                entries[i] = (line, start, end, RecordResult(res.obj, res.kind, (*res.issues, *found), False))
        report.add_tokens(tally)

    def check_range(self, path: str, display: str, start: int, end: int, want_raw: bool) -> RangeVerdict:
        """Check the lines of a plain file that begin in [start, end).

        Line numbers in the verdict count from 1 at the range's first line (the caller adds
        the lines of the ranges before); positions are file offsets. A line belongs to the
        range its first byte is in, so consecutive ranges cover every line exactly once."""
        report = Report(max_examples=self.options.examples)
        bad: list[Bad] = []
        raws: list[bytes] = []
        lines = 0
        with open(path, "rb", buffering=0) as f:
            pos = _line_start_at(f, start)
            if pos < end:
                f.seek(pos)
                for block in BlockReader(f):
                    at = pos + block.offset
                    if at >= end:
                        break
                    stop = block.end
                    if at + (block.end - block.start) > end:  # a line begins at or after `end`
                        stop = block.buf.find(b"\n", block.start + end - at - 1) + 1
                    data = bytes(memoryview(block.buf)[block.start : stop])
                    verdict = self.check_lines(data, lines + 1, display)
                    block.lines = verdict.lines
                    report.merge(verdict.report)
                    for b in verdict.bad:
                        bad.append(b._replace(start=at + b.start, end=at + b.end))
                        if want_raw:
                            raws.append(data[b.start : b.end])
                    lines += verdict.lines
                    if stop != block.end:
                        break
        return RangeVerdict(Verdict(report, bad, lines), raws)


class RangeVerdict(NamedTuple):
    verdict: Verdict
    raws: list[bytes]  # the bad records' bytes, when asked for


def _every_line(data: bytes) -> tuple[int, list[tuple[int, int, int, int]]]:
    """(lines, events) as the compiled gate gives them, every line to be checked here."""
    events = []
    append, find = events.append, data.find
    pos = index = 0
    nl = find(b"\n")
    while nl >= 0:
        append((index, pos, nl + 1, -1))
        pos, index = nl + 1, index + 1
        nl = find(b"\n", pos)
    return index, events


def zero_kind_of(kind: str) -> str:
    """The kind whose clean records the compiled gate counts itself (code 0), for --kind."""
    return "chat" if kind == "auto" else kind


def _shape_code(validator: Validator, shared: list, zero_kind: str, keys: tuple[str, ...]) -> int:
    """The compiled gate's question for a new set of top-level keys: 0 clean records of
    `zero_kind` (the gate counts them), -1 check the record here, k > 0 for shared[k - 1]:
    a shared result, or the kind of other clean records (auto: ShareGPT beside chat)."""
    verdict = validator.shape_verdict(keys)
    if verdict is None:
        return -1
    if verdict == zero_kind:
        return 0
    shared.append(verdict)
    return len(shared)


def _line_start_at(f, start: int) -> int:
    """Offset of the first line that begins at or after `start`."""
    if start == 0:
        return 0
    f.seek(start - 1)
    pos = start - 1
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            return pos
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)


def ranges(size: int, jobs: int, piece: int | None = None) -> list[tuple[int, int]]:
    """Cut [0, size) into pieces for `jobs` workers: 4 to 32 MiB, about 16 per worker."""
    if piece is None:
        piece = min(max(size // (jobs * 16), 4 << 20), 32 << 20)
    return [(a, min(a + piece, size)) for a in range(0, size, piece)]


# ---------------------------------------------------------------- in order, maybe in parallel

_worker: Checker | None = None


def _init_worker(options: CheckOptions, parent: int) -> None:
    global _worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler, inherited by fork
    die_with_parent(parent)
    # the pool already keeps every core busy: a tokenizer's own threads in each worker
    # would only contend with the other workers (measured: 7.4 s -> 6.9 s, bench/template.py)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker = Checker(options)


def die_with_parent(parent: int) -> None:
    """A worker must not outlive a parent killed by SIGKILL (it would hold the caller's
    stdout open forever): Linux's PR_SET_PDEATHSIG, then a check for a parent already gone.
    `parent` is the pid of the process that made the pool (with forkserver, the server in
    between dies with it and its children get the signal in turn)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent and not pid_alive(parent):
        os._exit(1)


def _check_in_worker(data: bytes, first_line: int, display: str) -> Verdict:
    assert _worker is not None
    return _worker.check_lines(data, first_line, display)


def _check_range_in_worker(path: str, display: str, start: int, end: int, want_raw: bool) -> RangeVerdict:
    assert _worker is not None
    return _worker.check_range(path, display, start, end, want_raw)


def auto_jobs(total_bytes: int | None) -> int:
    """Workers for `--jobs auto`: all cores (up to 8) for large or unknown-size input, else 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or (total_bytes is not None and total_bytes < POOL_MIN_BYTES):
        return 1
    return min(cores, 8)


def mp_context():
    """fork when this process runs no other thread (workers start in milliseconds, with
    everything imported); forkserver otherwise, since forking a threaded process can leave
    a lock held forever in the child. A fork-context pool starts all its workers at the
    first submit, before it starts its own manager thread."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(["shardkit.records.check"])
    return ctx


class Checks:
    """Check blocks in input order, in this process (jobs=1) or on `jobs` threads (kinds the
    compiled gate decides: its scan releases the GIL) or worker processes (the others).

    The options are checked here first (a bad schema or tokenizer fails before any work).
    With a pool, up to 2*jobs blocks are in flight: memory is a few blocks, whatever the
    input size. Use as a context manager so the pool is always shut down."""

    def __init__(self, options: CheckOptions, jobs: int = 1) -> None:
        self.options = options
        self.local = Checker(options)
        self.jobs = max(1, jobs)
        self._pool: ProcessPoolExecutor | None = None
        # Blocks the compiled gate decides are checked on threads: the scan runs without the
        # GIL, so `jobs` threads use the cores as processes would, with no copy of each
        # block to a worker (split --validate chat, 100k records: 1.9 -> 1.4 CPU-s). Kinds
        # checked in Python (preference, kto, a schema, a tokenizer) use processes.
        self.in_threads = self.jobs > 1 and self.local.scans_without_gil
        self._threads: ThreadPoolExecutor | None = None
        self._local = threading.local()

    def __enter__(self) -> Checks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers now (a fork-context pool forks them at its first task)."""
        if self.jobs > 1 and not self.in_threads:
            self._get_pool().submit(int).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None

    def _get_threads(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.jobs, thread_name_prefix="shardkit-check")
        return self._threads

    def _check_in_thread(self, data: bytes, first_line: int, display: str) -> Verdict:
        """check_lines on this thread's own Checker (a Checker's caches are not shared)."""
        checker = getattr(self._local, "checker", None)
        if checker is None:
            checker = self._local.checker = Checker(self.options)
        return checker.check_lines(data, first_line, display)

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.jobs, mp_context=mp_context(), initializer=_init_worker, initargs=(self.options, os.getpid())
            )
        return self._pool

    def checked(self, blocks: Iterable[Block], display: str) -> Iterator[tuple[Block, Verdict]]:
        """Each block with its verdict, in order; positions are relative to `block.start`."""
        if self.jobs == 1:
            for block in blocks:
                data = bytes(memoryview(block.buf)[block.start : block.end])
                verdict = self.local.check_lines(data, block.first_line, display)
                block.lines = verdict.lines  # the reader need not count them again
                yield block, verdict
            return
        if self.in_threads:
            pool, check = self._get_threads(), self._check_in_thread
        else:
            pool, check = self._get_pool(), _check_in_worker
        window: deque[tuple[Block, Future]] = deque()
        depth = 2 * self.jobs
        try:
            for block in blocks:
                data = bytes(memoryview(block.buf)[block.start : block.end])
                window.append((block, pool.submit(check, data, block.first_line, display)))
                if len(window) >= depth:
                    done, future = window.popleft()
                    yield done, future.result()
            while window:
                done, future = window.popleft()
                yield done, future.result()
        finally:
            for _, future in window:
                future.cancel()

    def checked_file(
        self, path: str, display: str, size: int, *, want_raw: bool, piece: int | None = None
    ) -> Iterator[FilePart]:
        """A plain file checked as byte ranges by the workers, each reading its own range.

        Yields the parts in order, bad line numbers made absolute; merge each part's report
        with `line_shift=part.line_shift`. Only results pass through the parent."""
        pool = self._get_pool()
        window: deque[tuple[int, int, Future]] = deque()
        lines = 0

        def take() -> FilePart:
            nonlocal lines
            start, end, future = window.popleft()
            verdict, raws = future.result()
            shift = lines
            lines += verdict.lines
            bad = [b._replace(line=b.line + shift) for b in verdict.bad]
            return FilePart(start, end, verdict.report, shift, bad, raws)

        try:
            for start, end in ranges(size, self.jobs, piece):
                window.append((start, end, pool.submit(_check_range_in_worker, path, display, start, end, want_raw)))
                if len(window) >= 2 * self.jobs:
                    yield take()
            while window:
                yield take()
        finally:
            for _, _, future in window:
                future.cancel()


class FilePart(NamedTuple):
    start: int
    end: int
    report: Report  # line numbers relative to the part: merge with line_shift
    line_shift: int
    bad: list[Bad]  # absolute lines and offsets
    raws: list[bytes]
