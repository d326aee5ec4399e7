"""The vocabulary every record check speaks: an `Issue` (code, severity, JSON path, message)
and the small helpers that build its paths and messages. The kind checks (`validate`), the
tool-call checks (`tools`) and the preference checks (`preference`) all import it from here."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

import orjson

__all__ = [
    "ERROR",
    "WARNING",
    "Issue",
    "clip",
    "closest",
    "error",
    "json_type_name",
    "key_path",
    "show",
    "warning",
]

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in one record: a stable ``code``, ``'error'`` or ``'warning'``,
    the JSON path it concerns (``messages[2].role``, or '' for the whole line) and a message."""

    code: str
    severity: str
    path: str
    message: str


def error(code: str, path: str, message: str) -> Issue:
    return Issue(code, ERROR, path, message)


def warning(code: str, path: str, message: str) -> Issue:
    return Issue(code, WARNING, path, message)


def clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: str) -> str:
    """A user-supplied string for a message: quoted, escaped, clipped."""
    return repr(clip(value))


def json_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def key_path(base: str, key: str) -> str:
    """``base.key``, or ``base["odd key"]`` when the key is not an identifier."""
    if key.isidentifier():
        return f"{base}.{key}" if base else key
    return f"{base}[{orjson.dumps(clip(key, 60)).decode()}]"


def closest(word: str, choices: object) -> str | None:
    """The choice `word` was most likely meant to be, or None."""
    return _closest_cached(clip(word, 64), tuple(choices))


@functools.lru_cache(maxsize=4096)
def _closest_cached(word: str, choices: tuple[str, ...]) -> str | None:
    # the same unknown key tends to repeat on thousands of records: difflib once per key
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None
