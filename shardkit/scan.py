"""Record-by-record passes over inputs: choose the source (JSONL or JSON array), validate,
write rejects with their original bytes, and report. `shardkit validate` is one call here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .errors import DataError, InputError, UsageError
from .io import InputStream, atomic_write, inspect_input
from .jsonarray import JsonArraySource, is_json_array
from .records import LineSource
from .shard import reject_record
from .validate import (
    DEFAULT_MAX_LINE_BYTES,
    Issue,
    RecordResult,
    Report,
    Validator,
    decode_line,
    format_issue,
)

_HEAD = 4096


class _HeadFirst:
    """A reader that returns an already-read head before the rest of the stream."""

    def __init__(self, head: bytes, stream: InputStream) -> None:
        self._head, self._stream = head, stream

    def readinto(self, view: memoryview) -> int:
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._stream.readinto(view)

    def read(self, n: int) -> bytes:
        view = memoryview(bytearray(n))
        return bytes(view[: self.readinto(view)])


def open_records(path: str, stream: InputStream):
    """LineSource for JSONL, JsonArraySource for a `.json` file holding one array."""
    head = stream.read(_HEAD)
    reader = _HeadFirst(head, stream)
    if is_json_array(path, head):
        return JsonArraySource(reader)
    return LineSource(reader)


class SchemaValidator:
    """Any JSON Schema (Draft 2020-12) instead of a built-in kind; same `check` as Validator."""

    def __init__(self, schema_path: str | os.PathLike, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            schema = orjson.loads(Path(schema_path).read_bytes())
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
        obj, issue = decode_line(bytes(raw).rstrip(b"\n"), max_line_bytes=self._max_line_bytes)
        if issue is not None:
            return RecordResult(None, None, (issue,), False)
        issues = tuple(
            Issue("schema", "error", _json_path(e.absolute_path), e.message)
            for e in sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        )
        return RecordResult(obj, "schema", issues, not issues)


def _json_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


@dataclass
class ValidationResult:
    report: Report
    max_errors: int
    rejects: Path | None = None
    error_lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.invalid <= self.max_errors

    def to_dict(self) -> dict:
        return {**self.report.to_dict(), "ok": self.ok, "max_errors": self.max_errors,
                "rejects": str(self.rejects) if self.rejects else None}


def validate_files(
    inputs: Sequence[str],
    *,
    kind: str = "auto",
    schema: str | os.PathLike | None = None,
    max_errors: int = 0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    rejects: str | os.PathLike | None = None,
    examples: int = 5,
    progress: Callable[[int], None] | None = None,
) -> ValidationResult:
    """Validate every record of every input; never stops at a bad record.

    records read = valid + invalid (blank lines are counted apart, as warnings).
    Invalid records go to `rejects` (JSONL: source, line, offset, reasons, original bytes),
    written atomically at the end.
    """
    specs = [inspect_input(p) for p in inputs]
    if schema is not None:
        validator = SchemaValidator(schema, max_line_bytes=max_line_bytes)
    else:
        validator = Validator(kind, max_line_bytes=max_line_bytes)
    report = Report(max_examples=examples)
    reject_lines: list[bytes] = []
    result = ValidationResult(report, max_errors, Path(rejects) if rejects else None)
    for spec in specs:
        seen = 0
        with InputStream(spec) as stream:
            source = open_records(spec.path, stream)
            try:
                for line, offset, raw in source:
                    res = validator.check(raw)
                    report.add(spec.display, line, res)
                    if not res.ok and rejects is not None:
                        reject_lines.append(_reject(spec.display, line, offset, res, raw))
                    if progress and stream.raw_bytes - seen > 1 << 20:
                        progress(stream.raw_bytes - seen)
                        seen = stream.raw_bytes
            except DataError as e:
                raise DataError(f"{spec.display}: {e}") from None
            for _ in range(source.blank):
                report.add_blank(spec.display, 0)
    if rejects is not None and reject_lines:
        atomic_write(Path(rejects), b"".join(reject_lines), replace=False)
    return result


def _reject(display: str, line: int, offset: int, res, raw: bytes) -> bytes:
    errors = [i for i in res.issues if i.severity == "error"]
    reason = "; ".join(format_issue(display, line, i).split(": ", 1)[1] for i in errors)
    code = errors[0].code if errors else "invalid"
    return orjson.dumps(reject_record(display, line, offset, code, reason, raw)) + b"\n"
