"""Record validation: decode one JSONL line, check it against a record kind, aggregate a report.

Pure and I/O-free: the reader feeds lines (bytes-like; a trailing ``\r``/``\n`` is fine),
this module returns issues; it never raises per record. The hot path for a valid record is one ``orjson.loads``
plus a short allocation-free *gate* per kind (``_GATES``); only a record the gate does not
accept goes through the thorough *explain* step (``_EXPLAINERS``), which builds paths, hints
and messages. A property test checks that a record the gate accepts has no issues.

Issue codes (severity, message):

JSON level (``decode_line``; path is '' unless noted):
  line_too_long   error    line is {n:,} bytes, over the limit of {limit:,} bytes (not decoded)
  bom             error    line starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM
  invalid_utf8    error    invalid UTF-8 at byte column {col} (byte 0x{b:02x}: {reason})[; the line looks UTF-16 encoded]
  invalid_json    error    invalid JSON at column {col}: {orjson's reason}[ (the line contains NUL bytes: binary or UTF-16 data?)]
                           | line is blank (expected a JSON object)
  nan_infinity    error    {NaN|Infinity|-Infinity|...} is not valid JSON at column {col}; use null or a string
                           | number {n!r} at column {col} overflows a double (it would become Infinity)
                           (path: where the literal sits, e.g. ``messages[1].weight``, when it can be found)
  too_deep        error    nesting deeper than {limit} levels
  not_object      error    top-level value is {an array|a string|...}, expected an object
  duplicate_key   warning  duplicate key {key!r}; the last value wins   (opt-in: check_duplicate_keys)

Record level (path is a JSON path such as ``messages[2].role``):
  (tool calls: shardkit.records.tools; preference pairs (empty_side, same_sides, prompt_mismatch,
  no_answer): shardkit.records.preference)
  unknown_kind      error    unknown record kind: keys {...} match none of chat (messages), ...[; did you mean {k!r}?]
  missing_key       error    missing required key {key!r}[ (the record looks like {kind})]
  wrong_type        error    expected {a string|...}, got {an array|...}
  empty_list        error    {messages|conversations} is empty
  unknown_role      error    unknown role {role!r} (expected {roles}[; did you mean {r!r}?])
  null_content      error    content is null; only an assistant message with tool_calls may have null content
  no_assistant      error    no assistant message (roles: ...); a chat record needs at least one
                             | no gpt or function_call turn (from: ...); a conversation needs at least one
  unknown_key       warning  unknown key {key!r}[ (did you mean {k!r}?)] | ... and {n} more unknown keys
  empty_text        warning  empty string | string is only whitespace | empty array of content parts
  placeholder       warning  unfilled template placeholder(s) '{{name}}'[, ...]
  part_value        warning  content part uses 'value' instead of 'text' (LLaMA-Factory style); most trainers expect 'text'
  system_not_first  warning  system message at position {i}; most chat templates accept a system message only first
  tool calls        unknown_tool, undeclared_tools (warning), tool_arguments, arguments_schema,
                    tool_schema, duplicate_call_id, unanswered_tool_call, orphan_tool_result,
                    duplicate_tool_result: see shardkit.records.tools
  too_many_issues   warning  {n} more issues in this record not shown
  internal_error    error    validator bug: {exception}; please report it  (never expected; keeps a run alive)
  too_many_tokens   error    {n:,} tokens[ after the chat template], over --max-tokens {limit:,}   (added by
                             shardkit.records.check with a tokenizer)
  no_loss           error    no assistant tokens after the chat template | every assistant token lies
                             beyond --max-tokens (...): truncated, the record adds no loss
  template_error    error    the chat template cannot render this record: {why}
  template_prefix   warning  assistant tokens unknown: {the prefix rule fails where}
Report level:
  blank_line        warning  blank line skipped   (``Report.add_blank``)

Decisions:
- Empty or whitespace-only text (content, prompt, completion, output, text, ...) is a *warning*
  (``empty_text``): valid data, often an empty system prompt, but suspicious. An empty
  ``messages``/``conversations`` list and a chat without any assistant turn are *errors*.
- A BOM is an error: trainers reading text lines with ``json.loads(str)`` reject it. The rest
  of the line is still decoded and checked so the report shows everything else too.
- The default depth limit is orjson's own (1024 nested arrays/objects) and costs nothing;
  a lower ``max_depth`` adds a walk of every decoded record (slower; opt-in).
- Role aliases (``human``, ``gpt``, ``bot``, ``model``, ...) are errors with a hint, not accepted.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import NamedTuple

import orjson

from shardkit.core.errors import UsageError
from shardkit.records.issue import (
    ERROR,
    WARNING,
    Issue,
    clip,
    closest,
    error,
    json_type_name,
    key_path,
    show,
    warning,
)
from shardkit.records.preference import PREFERENCE_CODES, check_kto, check_pair, same_words
from shardkit.records.tokens import TokenTally
from shardkit.records.tools import (
    TOOL_CODES,
    check_chat_tools,
    check_sharegpt_tools,
    has_tool_traffic,
)

try:  # the record gate in C (setup.py builds it; optional: without a compiler, Python's gate)
    if os.environ.get("SHARDKIT_PURE_PYTHON"):
        raise ImportError("SHARDKIT_PURE_PYTHON is set")
    from shardkit.records import chatgate
except ImportError:
    chatgate = None


def _utf8_error_py(data) -> int:
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return -1


# utf8_error(data) -> offset of the first byte that is not valid UTF-8, or -1 (the compiled
# one runs without the GIL, 10x faster than decoding)
utf8_error = chatgate.utf8_error if chatgate is not None else _utf8_error_py

__all__ = [
    "CODES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_LINE_BYTES",
    "KINDS",
    "Issue",
    "RecordResult",
    "Report",
    "Validator",
    "decode_line",
    "detect_kind",
    "format_issue",
]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
ORJSON_MAX_DEPTH = 1024  # orjson rejects deeper input with "depth limit exceeded"
DEFAULT_MAX_DEPTH = ORJSON_MAX_DEPTH
MAX_ISSUES_PER_RECORD = 100
MAX_UNKNOWN_KEYS_LISTED = 10

KINDS = ("chat", "prompt-completion", "alpaca", "sharegpt", "text", "preference", "kto")

CODES: dict[str, str] = {
    "line_too_long": ERROR,
    "bom": ERROR,
    "invalid_utf8": ERROR,
    "invalid_json": ERROR,
    "nan_infinity": ERROR,
    "too_deep": ERROR,
    "not_object": ERROR,
    "duplicate_key": WARNING,
    "unknown_kind": ERROR,
    "missing_key": ERROR,
    "wrong_type": ERROR,
    "empty_list": ERROR,
    "unknown_role": ERROR,
    "null_content": ERROR,
    "no_assistant": ERROR,
    "unknown_key": WARNING,
    "empty_text": WARNING,
    "placeholder": WARNING,
    "part_value": WARNING,
    "system_not_first": WARNING,
    "image_count": ERROR,
    "too_many_issues": WARNING,
    "internal_error": ERROR,
    "too_many_tokens": ERROR,
    "no_loss": ERROR,
    "template_error": ERROR,
    "template_prefix": WARNING,
    "blank_line": WARNING,
    **TOOL_CODES,
    **PREFERENCE_CODES,
}


class RecordResult(NamedTuple):
    """What ``Validator.check`` found in one line. ``ok`` means no error (warnings allowed).

    A NamedTuple rather than a frozen dataclass: it is built once per record on the hot path,
    where a frozen dataclass costs ~10x more to construct."""

    obj: dict | None
    kind: str | None
    issues: tuple[Issue, ...]
    ok: bool


def format_issue(file: object, line: int, issue: Issue) -> str:
    """``inbox/a.jsonl:1234: messages[2].role: unknown role 'bot' (...)``; warnings say so."""
    message = issue.message if issue.severity == ERROR else f"warning: {issue.message}"
    if issue.path:
        return f"{file}:{line}: {issue.path}: {message}"
    return f"{file}:{line}: {message}"


# --------------------------------------------------------------------------- small helpers


_error = error
_warning = warning
_clip = clip
_show = show
_key_path = key_path
_closest = closest


# --------------------------------------------------------------------------- decoding

_BOM = b"\xef\xbb\xbf"
_NONFINITE = ("-Infinity", "+Infinity", "-NaN", "Infinity", "NaN")
_SENTINEL = "\x00shardkit-nonfinite\x00"
_SENTINEL_JSON = '"\\u0000shardkit-nonfinite\\u0000"'
_MAX_NONFINITE_SUBSTITUTIONS = 64


def decode_line(
    raw: bytes,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> tuple[dict | None, Issue | None]:
    """Decode one JSONL line (without its newline; a trailing ``\\r`` is fine) into an object.

    Returns ``(obj, None)`` on success, ``(None, issue)`` when the line is not a usable JSON
    object, and ``(obj, bom_issue)`` for a line that is valid apart from a leading BOM.
    Never raises for any input bytes."""
    _check_limits(max_line_bytes, max_depth)
    if len(raw) > max_line_bytes:
        return None, _error(
            "line_too_long",
            "",
            f"line is {len(raw):,} bytes, over the limit of {max_line_bytes:,} bytes (not decoded)",
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _diagnose(bytes(raw), exc, max_depth)
    return _accept(value, max_depth)


def _check_limits(max_line_bytes: int, max_depth: int) -> None:
    if not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise UsageError(f"max_line_bytes must be a positive integer, got {max_line_bytes!r}")
    if not isinstance(max_depth, int) or not 1 <= max_depth <= ORJSON_MAX_DEPTH:
        raise UsageError(f"max_depth must be between 1 and {ORJSON_MAX_DEPTH}, got {max_depth!r}")


def _accept(value: object, max_depth: int) -> tuple[dict | None, Issue | None]:
    if type(value) is not dict:
        return None, _error(
            "not_object", "", f"top-level value is {json_type_name(value)}, expected an object"
        )
    if max_depth < ORJSON_MAX_DEPTH and _deeper_than(value, max_depth):
        return None, _too_deep(max_depth)
    return value, None


def _too_deep(limit: int) -> Issue:
    return _error("too_deep", "", f"nesting deeper than {limit} levels")


def _deeper_than(value: object, limit: int) -> bool:
    """Iterative (no recursion): is any array/object nested more than ``limit`` levels?"""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def _diagnose(
    raw: bytes, exc: orjson.JSONDecodeError, max_depth: int
) -> tuple[dict | None, Issue | None]:
    """Turn an orjson failure into one specific issue (error path only)."""
    raw = raw.rstrip(b"\r\n")
    if raw.startswith(_BOM):
        return _diagnose_bom(raw, max_depth)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return None, _invalid_utf8(raw, bad)
    if not text.strip(" \t\r\n"):
        return None, _error("invalid_json", "", "line is blank (expected a JSON object)")
    if "depth limit" in exc.msg or "recursion" in exc.msg.lower():
        return None, _too_deep(max_depth)
    nonfinite = _nonfinite_at(text, exc)
    if nonfinite is not None:
        return None, _nonfinite_issue(text, *nonfinite)
    message = f"invalid JSON at column {exc.pos + 1}: {exc.msg}"
    if "\x00" in text:
        message += " (the line contains NUL bytes: binary or UTF-16 data?)"
    return None, _error("invalid_json", "", message)


def _diagnose_bom(raw: bytes, max_depth: int) -> tuple[dict | None, Issue | None]:
    bom = _error(
        "bom",
        "",
        "line starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM",
    )
    rest = raw[len(_BOM) :]
    try:
        value = orjson.loads(rest)
    except orjson.JSONDecodeError as exc:
        _, issue = _diagnose(rest, exc, max_depth)
        return None, _shift_columns(issue, chars=1, byte_count=len(_BOM)) if issue else bom
    obj, issue = _accept(value, max_depth)
    return obj, issue or bom


_COLUMN = re.compile(r"(byte column|column) (\d+)")


def _shift_columns(issue: Issue, *, chars: int, byte_count: int) -> Issue:
    """Columns of an issue found after a stripped BOM, in full-line coordinates."""

    def shift(match: re.Match[str]) -> str:
        by = byte_count if match.group(1) == "byte column" else chars
        return f"{match.group(1)} {int(match.group(2)) + by}"

    return Issue(issue.code, issue.severity, issue.path, _COLUMN.sub(shift, issue.message, count=1))


def _invalid_utf8(raw: bytes, bad: UnicodeDecodeError) -> Issue:
    message = (
        f"invalid UTF-8 at byte column {bad.start + 1} (byte 0x{raw[bad.start]:02x}: {bad.reason})"
    )
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        message += "; the line looks UTF-16 encoded"
    return _error("invalid_utf8", "", message)


_OVERFLOWING_NUMBER = re.compile(r"[-+]?[0-9][0-9.eE+\-]*")


def _nonfinite_at(text: str, exc: orjson.JSONDecodeError) -> tuple[int, str] | None:
    """(start, token) when orjson stopped at NaN, Infinity, -Infinity or a number that
    overflows a double. orjson points at a sign or just after it, depending on the sign."""
    pos = exc.pos
    if "infinity" in exc.msg.lower():
        number = _OVERFLOWING_NUMBER.match(text, pos)
        return (pos, number.group(0)) if number else None
    if 0 < pos <= len(text) and text[pos - 1] in "+-":  # pos may lie past a stripped CR
        for literal in _NONFINITE[:3]:
            if text.startswith(literal, pos - 1):
                return pos - 1, literal
    for literal in _NONFINITE:
        if text.startswith(literal, pos):
            return pos, literal
    return None


def _nonfinite_issue(text: str, start: int, token: str) -> Issue:
    path = _nonfinite_path(text, start, token)
    if token.lstrip("+-")[:1].isdigit():
        message = f"number {_show(token)} at column {start + 1} overflows a double (it would become Infinity)"
    else:
        message = f"{token} is not valid JSON at column {start + 1}; use null or a string"
    return _error("nan_infinity", path, message)


def _nonfinite_path(text: str, start: int, literal: str) -> str:
    """Where the first NaN/Infinity sits: replace it by a sentinel string, later ones by null,
    decode, and find the sentinel. '' when the line has other problems too."""
    text = text[:start] + _SENTINEL_JSON + text[start + len(literal) :]
    for _ in range(_MAX_NONFINITE_SUBSTITUTIONS):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            found = _nonfinite_at(text, exc)
            if found is None:
                return ""
            at, other = found
            text = text[:at] + "null" + text[at + len(other) :]
            continue
        if type(value) is not dict and type(value) is not list:
            return ""  # the literal was the whole line
        return _find_path(value, _SENTINEL) or ""
    return ""


def _find_path(value: object, target: str) -> str | None:
    """Path of the first string equal to ``target``; iterative, and paths are only built
    for the hit (a line can hold millions of values)."""
    links: list[tuple[int, object]] = [(-1, None)]  # (parent link, key or index)
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, link = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for segment, child in items:
            kind = type(child)
            if kind is dict or kind is list:
                links.append((link, segment))
                stack.append((child, len(links) - 1))
            elif kind is str and child == target:
                links.append((link, segment))
                return _link_path(links, len(links) - 1)
    return None


def _link_path(links: list[tuple[int, object]], link: int) -> str:
    segments = []
    while link > 0:
        link, segment = links[link]
        segments.append(segment)
    path = ""
    for segment in reversed(segments):
        path = f"{path}[{segment}]" if type(segment) is int else _key_path(path, segment)
    return path


class _Duplicated(dict):
    """An object that had a repeated key while decoding; remembers the first one."""

    duplicate: str = ""


def _pairs_hook(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked = _Duplicated(obj)
            marked.duplicate = key
            return marked
        seen.add(key)
    return obj  # pragma: no cover - unreachable


def _duplicate_key(raw: bytes) -> Issue | None:
    """Slow (stdlib json); only when asked. orjson keeps the last value silently."""
    try:
        value = json.loads(bytes(raw), object_pairs_hook=_pairs_hook)
    except (RecursionError, ValueError):
        return None
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if type(node) is _Duplicated:
                key = node.duplicate
                return _warning(
                    "duplicate_key",
                    _key_path(path, key),
                    f"duplicate key {_show(key)}; the last value wins",
                )
            stack.extend((child, _key_path(path, key)) for key, child in reversed(node.items()))
        elif type(node) is list:
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(node))))
    return None


# --------------------------------------------------------------------------- kinds


def detect_kind(obj: object) -> str | None:
    """The record kind its keys suggest, or None. One discriminating key per kind, in order:
    chosen or rejected -> preference, messages -> chat, conversations -> sharegpt,
    instruction -> alpaca, label beside completion -> kto, prompt or completion ->
    prompt-completion, output -> alpaca, text -> text."""
    if type(obj) is not dict:
        return None
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "messages" in obj:
        return "chat"
    if "conversations" in obj:
        return "sharegpt"
    if "instruction" in obj:
        return "alpaca"
    if "label" in obj and "completion" in obj:
        return "kto"
    if "prompt" in obj or "completion" in obj:
        return "prompt-completion"
    if "output" in obj:
        return "alpaca"
    if "text" in obj:
        return "text"
    return None


_KIND_KEYS = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt-completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
_DISCRIMINATING_KEYS = (
    "chosen",
    "rejected",
    "label",
    "messages",
    "conversations",
    "instruction",
    "output",
    "prompt",
    "completion",
    "text",
)

CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = ("human", "gpt", "system", "function_call", "observation", "tool")

_ROLE_ALIASES = {
    "human": "user",
    "prompter": "user",
    "usr": "user",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "chatgpt": "assistant",
    "gpt4": "assistant",
    "gpt-4": "assistant",
    "response": "assistant",
    "function_call": "assistant",
    "developer": "system",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_FROM_ALIASES = {
    "user": "human",
    "prompter": "human",
    "assistant": "gpt",
    "bot": "gpt",
    "model": "gpt",
    "ai": "gpt",
    "chatgpt": "gpt",
    "function": "function_call",
    "tool_call": "function_call",
    "tool_calls": "function_call",
}
_KEY_ALIASES = {  # likely meant, for unknown-key hints
    "from": "role",
    "value": "content",
    "text": "content",
}
_TURN_KEY_ALIASES = {"role": "from", "content": "value", "text": "value"}

CHAT_RECORD_KEYS = frozenset(
    {"messages", "tools", "functions", "parallel_tool_calls", "id", "metadata", "images"}
)
MESSAGE_KEYS = frozenset(
    {
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "function_call",
        "weight",
        "loss_weight",
    }
)
PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion", "id", "metadata"})
ALPACA_KEYS = frozenset({"instruction", "input", "output", "system", "history", "id"})
SHAREGPT_KEYS = frozenset({"conversations", "system", "tools", "images", "videos", "audios", "id"})
TURN_KEYS = frozenset({"from", "value"})
TEXT_KEYS = frozenset({"text", "id", "meta", "metadata", "url", "timestamp", "source", "title"})
PREFERENCE_KEYS = frozenset(
    {"prompt", "chosen", "rejected", "id", "metadata", "score_chosen", "score_rejected", "images"}
)
KTO_KEYS = frozenset({"prompt", "completion", "label", "id", "metadata", "images"})

_FAST_CHAT_KEYS = frozenset({"messages", "parallel_tool_calls", "id", "metadata"})
_FAST_MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "loss_weight"})
_FAST_TEXT_PART_KEYS = frozenset({"type", "text"})
_FAST_SHAREGPT_KEYS = frozenset({"conversations", "system", "tools", "id"})
_FAST_ALPACA_KEYS = frozenset({"instruction", "input", "output", "id"})
_FAST_PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion", "id", "metadata"})
_FAST_PREFERENCE_KEYS = frozenset({"prompt", "chosen", "rejected", "id", "metadata"})
_FAST_KTO_KEYS = frozenset({"prompt", "completion", "label", "id", "metadata"})
_SHAREGPT_ASSISTANT = frozenset({"gpt", "function_call"})


# ---- gates: return the kind when the record certainly has no issue, else None (then the
# explainer decides). No formatting, no regex, no difflib, no allocation: on a valid record
# this is the only Python work besides orjson.loads, so every statement counts.


def _fine_text(s: object) -> bool:
    return type(s) is str and s != "" and not _may_have_placeholder(s) and not s.isspace()


def _may_have_placeholder(s: str) -> bool:
    # '{' is a memchr (~30 ns per KB); a two-character needle is a ~1 ns/char scan. An
    # <image> placeholder must match the record's images list: the explainer counts them.
    return ("{" in s and "{{" in s) or ("<" in s and "<image>" in s)


def _gate_chat(obj: dict) -> str | None:
    if len(obj) != 1 and not obj.keys() <= _FAST_CHAT_KEYS:
        return None
    return _gate_chat_messages(obj.get("messages"))


def _gate_chat_messages(messages: object) -> str | None:
    # The common shape ({role, content: non-blank str}) costs ~150 ns per message here; the
    # statement order and the exceptions as control flow are deliberate (see the benchmark).
    try:
        has_assistant = False
        for m in messages:
            content = m["content"]  # TypeError for a non-object message
            if (
                not content
                or content.isspace()  # AttributeError unless a str
                or ("{" in content and "{{" in content)
                or ("<" in content and "<image>" in content)  # '<' first: a memchr, 10x faster
            ):
                return _gate_each_message(messages)
            if len(m) != 2 and not _fine_extras(m):
                return None
            role = m["role"]
            if role == "assistant":
                has_assistant = True
            elif role != "user" and not (role == "system" and m is messages[0]):
                return None  # tool results too: check_chat_tools pairs them with their calls
    except (KeyError, TypeError, AttributeError):
        return _gate_each_message(messages)
    return "chat" if has_assistant else None


def _fine_extras(m: dict) -> bool:
    """A message's keys besides role and content are known and of the right type."""
    if not m.keys() <= _FAST_MESSAGE_KEYS:
        return False
    for key in ("weight", "loss_weight"):
        if key in m and type(m[key]) is not int and type(m[key]) is not float:
            return False
    return "name" not in m or type(m["name"]) is str


def _gate_each_message(messages: object) -> str | None:
    """The slower, fully defensive per-message gate: extra keys (weight, name), content parts."""
    if type(messages) is not list or not messages:
        return None
    has_assistant = False
    for i, m in enumerate(messages):
        if type(m) is not dict:
            return None
        if len(m) != 2 and not _fine_extras(m):
            return None
        role = m.get("role")
        if role == "assistant":
            has_assistant = True
        elif role != "user" and not (role == "system" and i == 0):
            return None
        content = m.get("content")
        if type(content) is str:
            if not _fine_text(content):
                return None
        elif type(content) is list and content:
            for part in content:
                if (
                    type(part) is not dict
                    or part.get("type") != "text"
                    or not part.keys() <= _FAST_TEXT_PART_KEYS
                    or not _fine_text(part.get("text"))
                ):
                    return None
        else:
            return None
    return "chat" if has_assistant else None


def _gate_prompt_completion(obj: dict) -> str | None:
    try:
        prompt = obj["prompt"]
        completion = obj["completion"]
        if (
            (len(obj) != 2 and not obj.keys() <= _FAST_PROMPT_COMPLETION_KEYS)
            or not prompt
            or not completion
            or prompt.isspace()  # AttributeError unless a str
            or completion.isspace()
            or ("{" in prompt and "{{" in prompt)
            or ("{" in completion and "{{" in completion)
        ):
            return None
    except (KeyError, AttributeError):
        return None
    return "prompt-completion"


def _gate_alpaca(obj: dict) -> str | None:
    try:
        instruction = obj["instruction"]
        output = obj["output"]
        extra = obj.get("input", "")
        if (
            not instruction
            or not output
            or instruction.isspace()  # AttributeError unless a str
            or output.isspace()
            or ("{" in instruction and "{{" in instruction)
            or ("{" in output and "{{" in output)
            or type(extra) is not str
            or ("{" in extra and "{{" in extra)
            or (len(obj) != 2 and not obj.keys() <= _FAST_ALPACA_KEYS)
        ):
            return None
    except (KeyError, AttributeError):
        return None
    return "alpaca"


def _gate_sharegpt(obj: dict) -> str | None:
    if len(obj) != 1 and not obj.keys() <= _FAST_SHAREGPT_KEYS:
        return None
    if "tools" in obj and type(obj["tools"]) is not str and type(obj["tools"]) is not list:
        return None
    if "system" in obj and (type(obj["system"]) is not str or _may_have_placeholder(obj["system"])):
        return None
    turns = obj.get("conversations")
    try:
        has_assistant = False
        for turn in turns:
            value = turn["value"]  # TypeError for a non-object turn
            if (
                not value
                or value.isspace()  # AttributeError unless a str
                or len(turn) != 2
                or ("{" in value and "{{" in value)
                or ("<" in value and "<image>" in value)
            ):
                return None
            role = turn["from"]
            if role == "gpt":
                has_assistant = True
            elif role != "human":
                return None  # system turns, and tool traffic (check_sharegpt_tools): the explainer decides
    except (KeyError, TypeError, AttributeError):
        return None
    return "sharegpt" if has_assistant else None


def _gate_text(obj: dict) -> str | None:
    try:
        text = obj["text"]
        if (
            not text
            or text.isspace()  # AttributeError unless a str
            or ("{" in text and "{{" in text)
            or (len(obj) != 1 and not obj.keys() <= TEXT_KEYS)
        ):
            return None
    except (KeyError, AttributeError):
        return None
    return "text"


def _gate_preference(obj: dict) -> str | None:
    """String prompt, chosen and rejected (and an id, metadata): the explainer takes the rest."""
    try:
        prompt, chosen, rejected = obj["prompt"], obj["chosen"], obj["rejected"]
        if (len(obj) != 3 and not obj.keys() <= _FAST_PREFERENCE_KEYS) or chosen == rejected:
            return None
        if not (_fine_text(prompt) and _fine_text(chosen) and _fine_text(rejected)) or same_words(chosen, rejected):
            return None
    except KeyError:
        return None
    return "preference"


def _gate_kto(obj: dict) -> str | None:
    try:
        if (len(obj) != 3 and not obj.keys() <= _FAST_KTO_KEYS) or type(obj["label"]) is not bool:
            return None
        if not (_fine_text(obj["prompt"]) and _fine_text(obj["completion"])):
            return None
    except KeyError:
        return None
    return "kto"


def _gate_auto(obj: dict) -> str | None:
    kind = detect_kind(obj)
    return _GATES[kind](obj) if kind is not None else None


def _gate_none(obj: dict) -> None:
    return None


# the kinds the compiled gate checks, by --kind
_RAW_KINDS = (
    {
        "chat": chatgate.CHAT,
        "sharegpt": chatgate.SHAREGPT,
        "alpaca": chatgate.ALPACA,
        "prompt-completion": chatgate.PROMPT_COMPLETION,
        "text": chatgate.TEXT,
        "auto": chatgate.ALL,
    }
    if chatgate is not None
    else {}
)

_GATES = {
    "chat": _gate_chat,
    "prompt-completion": _gate_prompt_completion,
    "alpaca": _gate_alpaca,
    "sharegpt": _gate_sharegpt,
    "text": _gate_text,
    "preference": _gate_preference,
    "kto": _gate_kto,
}

# for the compiled gate, by kind: the keys a clean record must have, and the keys it may
# have (those whose values the gate checks, or that the Python gate lets pass unread)
_SHAPES = {
    "chat": (frozenset({"messages"}), _FAST_CHAT_KEYS),
    "sharegpt": (frozenset({"conversations"}), _FAST_SHAREGPT_KEYS),
    "alpaca": (frozenset({"instruction", "output"}), _FAST_ALPACA_KEYS),
    "prompt-completion": (frozenset({"prompt", "completion"}), _FAST_PROMPT_COMPLETION_KEYS),
    "text": (frozenset({"text"}), TEXT_KEYS),
}

# the top-level keys each kind knows; any other is an unknown_key warning
_KNOWN_KEYS = {
    "chat": CHAT_RECORD_KEYS,
    "prompt-completion": PROMPT_COMPLETION_KEYS,
    "alpaca": ALPACA_KEYS,
    "sharegpt": SHAREGPT_KEYS,
    "text": TEXT_KEYS,
    "preference": PREFERENCE_KEYS,
    "kto": KTO_KEYS,
}


# ---- explainers: the source of truth; append every issue with its path.

_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.\-]*\s*\}\}")


def _check_text(s: str, path: str, issues: list[Issue], *, allow_empty: bool = False) -> None:
    if not allow_empty:
        if s == "":
            issues.append(_warning("empty_text", path, "empty string"))
        elif s.isspace():
            issues.append(_warning("empty_text", path, "string is only whitespace"))
    if _may_have_placeholder(s):
        found = list(dict.fromkeys(m.group(0) for m in _PLACEHOLDER.finditer(s)))
        if found:
            shown = ", ".join(_show(p) for p in found[:3]) + (", ..." if len(found) > 3 else "")
            plural = "s" if len(found) > 1 else ""
            issues.append(
                _warning("placeholder", path, f"unfilled template placeholder{plural} {shown}")
            )


def _check_string(
    value: object, path: str, issues: list[Issue], *, allow_empty: bool = False
) -> None:
    if type(value) is str:
        _check_text(value, path, issues, allow_empty=allow_empty)
    else:
        issues.append(_error("wrong_type", path, f"expected a string, got {json_type_name(value)}"))


def _checked_role(
    turn: dict, key: str, path: str, allowed: tuple[str, ...], aliases: dict, issues: list[Issue]
) -> str | None:
    """The turn's role (chat `role`, sharegpt `from`) when valid; else None, with the issue added."""
    role = turn.get(key)
    if key not in turn:
        issues.append(_missing(f"{path}.{key}", key))
    elif type(role) is not str:
        issues.append(_error("wrong_type", f"{path}.{key}", f"expected a string, got {json_type_name(role)}"))
    elif role not in allowed:
        issues.append(_role_issue(role, f"{path}.{key}", allowed, aliases))
    else:
        return role
    return None


def _check_unknown_keys(
    obj: dict,
    known: frozenset[str],
    base: str,
    issues: list[Issue],
    aliases: dict[str, str] | None = None,
) -> None:
    unknown = [key for key in obj if key not in known]
    for key in unknown[:MAX_UNKNOWN_KEYS_LISTED]:
        guess = (aliases or {}).get(key)
        if guess is None or guess not in known:
            guess = _closest(key, sorted(known))
        hint = f" (did you mean {guess!r}?)" if guess else ""
        issues.append(
            _warning("unknown_key", _key_path(base, key), f"unknown key {_show(key)}{hint}")
        )
    if len(unknown) > MAX_UNKNOWN_KEYS_LISTED:
        more = len(unknown) - MAX_UNKNOWN_KEYS_LISTED
        issues.append(_warning("unknown_key", base, f"... and {more} more unknown keys"))


def _missing(
    path: str, key: str, obj: dict | None = None, expected_kind: str | None = None
) -> Issue:
    message = f"missing required key {key!r}"
    if obj is not None:
        looks = detect_kind(obj)
        if looks is not None and looks != expected_kind:
            message += f" (the record looks like {looks})"
    return _error("missing_key", path, message)


def _role_issue(role: str, path: str, roles: tuple[str, ...], aliases: dict[str, str]) -> Issue:
    lowered = role.strip().lower()
    guess = lowered if lowered in roles else aliases.get(lowered) or _closest(lowered, roles)
    hint = f"; did you mean {guess!r}?" if guess else ""
    return _error(
        "unknown_role", path, f"unknown role {_show(role)} (expected {', '.join(roles)}{hint})"
    )


def _explain_chat(obj: dict, issues: list[Issue]) -> None:
    if "messages" not in obj:
        issues.append(_missing("messages", "messages", obj, "chat"))
        return
    _check_unknown_keys(obj, CHAT_RECORD_KEYS, "", issues)
    for key in ("tools", "functions"):
        if key in obj and type(obj[key]) is not list:
            issues.append(
                _error("wrong_type", key, f"expected an array, got {json_type_name(obj[key])}")
            )
    _explain_messages(obj["messages"], "messages", issues, need_assistant=True)
    _check_images(obj, _chat_images(obj["messages"]), issues)
    if has_tool_traffic(obj["messages"]):
        check_chat_tools(obj, issues)


def _chat_images(messages: object) -> tuple[int, int]:
    """(<image> placeholders, image content parts) in a chat record's messages."""
    placeholders = parts = 0
    for m in messages if type(messages) is list else ():
        content = m.get("content") if type(m) is dict else None
        if type(content) is str:
            placeholders += content.count("<image>")
        elif type(content) is list:
            for part in content:
                if type(part) is not dict:
                    continue
                if part.get("type") in ("image", "image_url"):
                    parts += 1
                elif type(part.get("text")) is str:
                    placeholders += part["text"].count("<image>")
    return placeholders, parts


def _check_images(obj: dict, found: tuple[int, int], issues: list[Issue]) -> None:
    """The `<image>` placeholders (and image content parts) match the `images` list, one
    for one: a trainer pairing them otherwise fails mid-run or trains on the wrong image."""
    placeholders, parts = found
    images = obj.get("images")
    where = f"{placeholders} <image> placeholder(s)" + (f" and {parts} image part(s)" if parts else "")
    if images is None:
        if placeholders:
            issues.append(_error("image_count", "", f"{where} in the messages, but no images list"))
        return
    if type(images) is not list:
        issues.append(_error("wrong_type", "images", f"expected an array, got {json_type_name(images)}"))
        return
    if placeholders + parts != len(images):
        issues.append(_error("image_count", "images", f"{len(images)} image(s) in images, but {where} in the messages"))


def _explain_messages(
    messages: object, base: str, issues: list[Issue], *, need_assistant: bool
) -> None:
    if type(messages) is not list:
        issues.append(_error("wrong_type", base, f"expected an array, got {json_type_name(messages)}"))
        return
    if not messages:
        issues.append(_error("empty_list", base, f"{base} is empty"))
        return
    roles_seen: list[str] = []
    role_trouble = False
    for i, message in enumerate(messages):
        path = f"{base}[{i}]"
        if type(message) is not dict:
            issues.append(
                _error("wrong_type", path, f"expected an object, got {json_type_name(message)}")
            )
            role_trouble = True
            continue
        _check_unknown_keys(message, MESSAGE_KEYS, path, issues, _KEY_ALIASES)
        role = _checked_role(message, "role", path, CHAT_ROLES, _ROLE_ALIASES, issues)
        if role is None:
            role_trouble = True
        else:
            roles_seen.append(role)
            if role == "system" and i > 0:
                issues.append(
                    _warning(
                        "system_not_first",
                        path,
                        f"system message at position {i}; most chat templates accept a system message only first",
                    )
                )
        _explain_message_fields(message, role, path, issues)
    if need_assistant and "assistant" not in roles_seen and not role_trouble:
        seen = ", ".join(dict.fromkeys(roles_seen))
        issues.append(
            _error(
                "no_assistant",
                base,
                f"no assistant message (roles: {seen}); a chat record needs at least one",
            )
        )


def _explain_message_fields(message: dict, role: object, path: str, issues: list[Issue]) -> None:
    calls = message.get("tool_calls")
    has_calls = (type(calls) is list and bool(calls)) or type(message.get("function_call")) is dict
    if "content" not in message:
        if not (role == "assistant" and has_calls):
            issues.append(_missing(f"{path}.content", "content"))
    else:
        _explain_content(message["content"], role, has_calls, f"{path}.content", issues)
    for key in ("name", "tool_call_id"):
        if key in message and type(message[key]) is not str:
            issues.append(
                _error(
                    "wrong_type",
                    f"{path}.{key}",
                    f"expected a string, got {json_type_name(message[key])}",
                )
            )
    for key in ("weight", "loss_weight"):
        value = message.get(key)
        if key in message and (type(value) is not int and type(value) is not float):
            issues.append(
                _error("wrong_type", f"{path}.{key}", f"expected a number, got {json_type_name(value)}")
            )
    if "tool_calls" in message:
        _explain_tool_calls(calls, f"{path}.tool_calls", issues)
    if "function_call" in message:
        _explain_function(message["function_call"], f"{path}.function_call", issues)


def _explain_content(
    content: object, role: object, has_calls: bool, path: str, issues: list[Issue]
) -> None:
    if type(content) is str:
        _check_text(content, path, issues, allow_empty=has_calls)
    elif content is None:
        if not (role == "assistant" and has_calls):
            issues.append(
                _error(
                    "null_content",
                    path,
                    "content is null; only an assistant message with tool_calls may have null content",
                )
            )
    elif type(content) is list:
        if not content:
            issues.append(_warning("empty_text", path, "empty array of content parts"))
        for j, part in enumerate(content):
            _explain_part(part, f"{path}[{j}]", issues)
    else:
        issues.append(
            _error(
                "wrong_type",
                path,
                f"expected a string, an array of content parts, or null, got {json_type_name(content)}",
            )
        )


def _explain_part(part: object, path: str, issues: list[Issue]) -> None:
    if type(part) is not dict:
        issues.append(_error("wrong_type", path, f"expected an object, got {json_type_name(part)}"))
        return
    if "type" not in part:
        issues.append(_missing(f"{path}.type", "type"))
        return
    kind = part["type"]
    if type(kind) is not str:
        issues.append(
            _error("wrong_type", f"{path}.type", f"expected a string, got {json_type_name(kind)}")
        )
    elif kind != "text":
        return  # image_url, input_audio, ...: not ours to judge
    if "text" in part:
        _check_string(part["text"], f"{path}.text", issues)
    elif "value" in part:
        issues.append(
            _warning(
                "part_value",
                f"{path}.value",
                "content part uses 'value' instead of 'text' (LLaMA-Factory style); most trainers expect 'text'",
            )
        )
        _check_string(part["value"], f"{path}.value", issues)
    else:
        issues.append(_missing(f"{path}.text", "text"))


def _explain_tool_calls(calls: object, path: str, issues: list[Issue]) -> None:
    if type(calls) is not list:
        issues.append(_error("wrong_type", path, f"expected an array, got {json_type_name(calls)}"))
        return
    for k, call in enumerate(calls):
        at = f"{path}[{k}]"
        if type(call) is not dict:
            issues.append(_error("wrong_type", at, f"expected an object, got {json_type_name(call)}"))
        elif "function" not in call:
            issues.append(_missing(f"{at}.function", "function"))
        else:
            _explain_function(call["function"], f"{at}.function", issues)


def _explain_function(function: object, path: str, issues: list[Issue]) -> None:
    if type(function) is not dict:
        issues.append(_error("wrong_type", path, f"expected an object, got {json_type_name(function)}"))
        return
    if "name" not in function:
        issues.append(_missing(f"{path}.name", "name"))
    elif type(function["name"]) is not str:
        issues.append(
            _error(
                "wrong_type",
                f"{path}.name",
                f"expected a string, got {json_type_name(function['name'])}",
            )
        )


def _explain_prompt_completion(obj: dict, issues: list[Issue]) -> None:
    present = [key for key in ("prompt", "completion") if key in obj]
    if not present:
        issues.append(_missing("prompt", "prompt", obj, "prompt-completion"))
        return
    _check_unknown_keys(obj, PROMPT_COMPLETION_KEYS, "", issues)
    for key in ("prompt", "completion"):
        if key not in obj:
            issues.append(_missing(key, key))
            continue
        value = obj[key]
        if type(value) is list:  # TRL's conversational prompt-completion
            _explain_messages(value, key, issues, need_assistant=key == "completion")
        else:
            _check_string(value, key, issues)


def _explain_alpaca(obj: dict, issues: list[Issue]) -> None:
    if "instruction" not in obj:
        issues.append(_missing("instruction", "instruction", obj, "alpaca"))
        if "output" not in obj:
            return
    _check_unknown_keys(obj, ALPACA_KEYS, "", issues)
    if "instruction" in obj:
        _check_string(obj["instruction"], "instruction", issues)
    if "output" not in obj:
        issues.append(_missing("output", "output"))
    else:
        _check_string(obj["output"], "output", issues)
    for key in ("input", "system"):
        if key in obj:
            _check_string(obj[key], key, issues, allow_empty=True)
    if "history" in obj:
        _explain_history(obj["history"], issues)


def _explain_history(history: object, issues: list[Issue]) -> None:
    if type(history) is not list:
        issues.append(
            _error("wrong_type", "history", f"expected an array, got {json_type_name(history)}")
        )
        return
    for i, pair in enumerate(history):
        if type(pair) is not list or len(pair) != 2:
            issues.append(
                _error(
                    "wrong_type",
                    f"history[{i}]",
                    f"expected an [instruction, response] pair, got {json_type_name(pair)}",
                )
            )
            continue
        for j, value in enumerate(pair):
            _check_string(value, f"history[{i}][{j}]", issues)


def _explain_sharegpt(obj: dict, issues: list[Issue]) -> None:
    if "conversations" not in obj:
        issues.append(_missing("conversations", "conversations", obj, "sharegpt"))
        return
    _check_unknown_keys(obj, SHAREGPT_KEYS, "", issues)
    if "system" in obj:
        _check_string(obj["system"], "system", issues, allow_empty=True)
    if "tools" in obj and type(obj["tools"]) is not str and type(obj["tools"]) is not list:
        issues.append(
            _error(
                "wrong_type",
                "tools",
                f"expected a JSON string or an array, got {json_type_name(obj['tools'])}",
            )
        )
    turns = obj["conversations"]
    if type(turns) is not list:
        issues.append(
            _error("wrong_type", "conversations", f"expected an array, got {json_type_name(turns)}")
        )
        return
    if not turns:
        issues.append(_error("empty_list", "conversations", "conversations is empty"))
        return
    seen: list[str] = []
    trouble = False
    for i, turn in enumerate(turns):
        path = f"conversations[{i}]"
        if type(turn) is not dict:
            issues.append(_error("wrong_type", path, f"expected an object, got {json_type_name(turn)}"))
            trouble = True
            continue
        _check_unknown_keys(turn, TURN_KEYS, path, issues, _TURN_KEY_ALIASES)
        role = _checked_role(turn, "from", path, SHAREGPT_ROLES, _FROM_ALIASES, issues)
        if role is None:
            trouble = True
        else:
            seen.append(role)
        if "value" not in turn:
            issues.append(_missing(f"{path}.value", "value"))
        else:
            _check_string(turn["value"], f"{path}.value", issues)
    placeholders = sum(t["value"].count("<image>") for t in turns if type(t) is dict and type(t.get("value")) is str)
    _check_images(obj, (placeholders, 0), issues)
    check_sharegpt_tools(obj, issues)
    if not trouble and not _SHAREGPT_ASSISTANT.intersection(seen):
        froms = ", ".join(dict.fromkeys(seen))
        issues.append(
            _error(
                "no_assistant",
                "conversations",
                f"no gpt or function_call turn (from: {froms}); a conversation needs at least one",
            )
        )


def _explain_text(obj: dict, issues: list[Issue]) -> None:
    if "text" not in obj:
        issues.append(_missing("text", "text", obj, "text"))
        return
    _check_unknown_keys(obj, TEXT_KEYS, "", issues)
    _check_string(obj["text"], "text", issues)


def _explain_side(value: object, path: str, issues: list[Issue]) -> None:
    """A prompt or side of a preference/kto record: a string, or an array of chat messages."""
    if type(value) is str:
        _check_text(value, path, issues, allow_empty=True)  # preference.py judges emptiness
    elif type(value) is list:
        if value:
            _explain_messages(value, path, issues, need_assistant=False)
    else:
        issues.append(
            _error("wrong_type", path, f"expected a string or an array of messages, got {json_type_name(value)}")
        )


def _explain_preference(obj: dict, issues: list[Issue]) -> None:
    _check_unknown_keys(obj, PREFERENCE_KEYS, "", issues)
    missing = [key for key in ("chosen", "rejected") if key not in obj]
    for key in missing:
        issues.append(_missing(key, key, obj, "preference"))
    implicit = all(type(obj.get(key)) is list for key in ("chosen", "rejected"))
    if "prompt" in obj:
        _explain_side(obj["prompt"], "prompt", issues)
    elif not implicit and not missing:
        issues.append(
            _error("missing_key", "prompt", "missing required key 'prompt' (only message-list sides carry their prompt)")
        )
    for key in ("chosen", "rejected"):
        if key in obj:
            _explain_side(obj[key], key, issues)
    if not any(i.severity == ERROR for i in issues):
        check_pair(obj, issues)


def _explain_kto(obj: dict, issues: list[Issue]) -> None:
    _check_unknown_keys(obj, KTO_KEYS, "", issues)
    for key in ("prompt", "completion", "label"):
        if key not in obj:
            issues.append(_missing(key, key, obj, "kto"))
        elif key == "label":
            if type(obj[key]) is not bool:
                issues.append(
                    _error("wrong_type", key, f"expected a boolean (true: desirable), got {json_type_name(obj[key])}")
                )
        else:
            _explain_side(obj[key], key, issues)
    if not any(i.severity == ERROR for i in issues):
        check_kto(obj, issues)


_EXPLAINERS = {
    "chat": _explain_chat,
    "prompt-completion": _explain_prompt_completion,
    "alpaca": _explain_alpaca,
    "sharegpt": _explain_sharegpt,
    "text": _explain_text,
    "preference": _explain_preference,
    "kto": _explain_kto,
}


def _unknown_kind(obj: dict) -> Issue:
    if not obj:
        return _error("unknown_kind", "", "unknown record kind: the object has no keys")
    keys = list(obj)
    shown = ", ".join(_show(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
    expected = ", ".join(f"{kind} ({', '.join(keys_)})" for kind, keys_ in _KIND_KEYS.items())
    guess = next(
        (
            g
            for k in keys[:50]
            if k not in _DISCRIMINATING_KEYS and (g := _closest(k, _DISCRIMINATING_KEYS))
        ),
        None,
    )
    hint = f"; did you mean {guess!r}?" if guess else ""
    return _error(
        "unknown_kind", "", f"unknown record kind: keys {shown} match none of {expected}{hint}"
    )


# --------------------------------------------------------------------------- validator

_new_result = tuple.__new__
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


@dataclass(frozen=True)
class Validator:
    """Checks lines against one record kind (``chat``, ``prompt-completion``, ``alpaca``,
    ``sharegpt``, ``text``) or ``auto`` (detect per record). ``check`` never raises."""

    kind: str = "auto"
    _: KW_ONLY
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    check_duplicate_keys: bool = False
    _gate: object = field(init=False, repr=False, compare=False)
    _extra: dict = field(init=False, repr=False, compare=False)  # unknown top-level keys -> result

    def __post_init__(self) -> None:
        if self.kind != "auto" and self.kind not in _GATES:
            choices = ("auto", *KINDS)
            guess = _closest(str(self.kind), choices)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise UsageError(f"unknown kind {self.kind!r} (expected {', '.join(choices)}{hint})")
        _check_limits(self.max_line_bytes, self.max_depth)
        if self.max_depth < ORJSON_MAX_DEPTH or self.check_duplicate_keys:
            gate = _gate_none  # every record needs the thorough path
        else:
            gate = _gate_auto if self.kind == "auto" else _GATES[self.kind]
        object.__setattr__(self, "_gate", gate)
        object.__setattr__(self, "_extra", {})

    @property
    def gate(self):
        """The allocation-free accept test for a decoded dict: its kind, or None (then call
        `check`). A record the gate accepts has no issues; `check` would say the same."""
        return self._gate

    def check(self, raw: bytes) -> RecordResult:
        """Validate one line (bytes-like, without its newline). Never raises."""
        if len(raw) > self.max_line_bytes:
            return self._check_thoroughly(raw, None)
        try:
            obj = _loads(raw)
        except _JSONDecodeError:
            return self._check_thoroughly(raw, None)
        return self.check_decoded(raw, obj)

    def gate_extra(self, obj: dict) -> RecordResult | None:
        """The gate for a clean record that also has unknown top-level keys (`meta`,
        `source`, `lang`...), as real exports do, of any kind: its result (one unknown-key
        warning per key, `obj` None), made once per set of keys; None otherwise (then call
        `check_decoded`). The record without those keys must pass its kind's gate: no check
        of any kind reads a key it does not know, so the warnings are all `check` would
        find. What `check` gives, but for `obj` (the property tests compare)."""
        entry = self._extra_entry(obj)
        if entry is None:
            return None
        kind, result, known = entry
        return result if _GATES[kind]({k: obj[k] for k in known}) == kind else None

    def _extra_entry(self, obj: dict) -> tuple[str, RecordResult, tuple[str, ...]] | None:
        """(kind, shared result, its known keys) for a record with unknown top-level keys;
        None for one without any, or of no kind. Depends on the keys alone: cached by them."""
        shape = tuple(obj)  # the keys in order: the warnings' order
        try:
            return self._extra[shape]
        except KeyError:
            pass
        entry = None
        kind = detect_kind(obj) if self.kind == "auto" else self.kind
        if self._gate is not _gate_none and kind is not None:
            known = _KNOWN_KEYS[kind]
            if not obj.keys() <= known:
                issues: list[Issue] = []
                _check_unknown_keys(obj, known, "", issues)
                entry = (kind, RecordResult(None, kind, _cap(issues), True), tuple(k for k in shape if k in known))
        if len(self._extra) < 1024:  # a file whose records all invent keys: no unbounded cache
            self._extra[shape] = entry
        return entry

    def shape_verdict(self, keys: tuple[str, ...]) -> RecordResult | str | None:
        """For a record whose fields pass the compiled gate (`messages`, ShareGPT
        `conversations`, alpaca's, prompt-completion's or `text`), known only by its
        top-level keys (in order, no repeats): its kind when `gate` accepts it, the shared
        result `gate_extra` gives, or None when it needs `check_decoded`. The compiled
        gate (`raw_scanner`) asks this once per set of keys, instead of decoding every
        record."""
        obj = dict.fromkeys(keys)
        if self._gate is _gate_none:
            return None
        kind = detect_kind(obj) if self.kind == "auto" else self.kind
        shape = _SHAPES.get(kind)
        if shape is None:
            return None
        required, fast = shape
        if not obj.keys() >= required:
            return None
        if obj.keys() <= fast:
            return kind
        entry = self._extra_entry(obj)
        if entry is None or not fast.issuperset(entry[2]):
            return None
        return entry[1]

    def raw_scanner(self):
        """The compiled gate over raw lines (`chatgate.scan`), when it was built and
        applies here (any kind but preference and kto, the default depth,
        no duplicate-key check): scan(data, max_line, resolve) -> (clean, lines, events);
        else None. See `shape_verdict`."""
        if chatgate is None or self._gate is _gate_none:
            return None
        kinds = _RAW_KINDS.get(self.kind)
        if kinds is None:
            return None
        scan = chatgate.scan
        return lambda data, max_line, resolve: scan(data, max_line, resolve, kinds)

    def check_decoded(self, raw: bytes, obj: object) -> RecordResult:
        """`check` for a line already decoded (`obj`): each record is parsed once."""
        if type(obj) is dict:
            kind = self._gate(obj)
            if kind is not None:
                return _new_result(RecordResult, (obj, kind, (), True))
            extra = self.gate_extra(obj)
            if extra is not None:
                return extra._replace(obj=obj)  # the shared result, with this record
        return self._check_thoroughly(raw, obj)

    def _check_thoroughly(self, raw: bytes, obj: object) -> RecordResult:
        issues: list[Issue] = []
        kind = None
        try:
            if type(obj) is dict:
                obj, issue = _accept(obj, self.max_depth)
            else:
                obj, issue = decode_line(
                    raw, max_line_bytes=self.max_line_bytes, max_depth=self.max_depth
                )
            if issue is not None:
                issues.append(issue)
            if obj is None:
                return RecordResult(None, None, tuple(issues), False)
            if self.check_duplicate_keys:
                duplicate = _duplicate_key(raw)
                if duplicate is not None:
                    issues.append(duplicate)
            kind = detect_kind(obj) if self.kind == "auto" else self.kind
            if kind is None:
                issues.append(_unknown_kind(obj))
            else:
                _EXPLAINERS[kind](obj, issues)
        except Exception as exc:  # a validator bug must not stop a 290 MB run
            issues.append(_error("internal_error", "", f"validator bug: {exc!r}; please report it"))
        ok = not any(issue.severity == ERROR for issue in issues)
        return RecordResult(obj, kind, _cap(issues), ok)


def _cap(issues: list[Issue]) -> tuple[Issue, ...]:
    if len(issues) <= MAX_ISSUES_PER_RECORD:
        return tuple(issues)
    more = len(issues) - MAX_ISSUES_PER_RECORD
    note = _warning("too_many_issues", "", f"{more} more issues in this record not shown")
    return (*issues[:MAX_ISSUES_PER_RECORD], note)


# --------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Example:
    """Where one issue was seen."""

    file: str
    line: int
    issue: Issue


@dataclass(slots=True)
class _CodeTally:
    severity: str
    count: int = 0
    records: int = 0
    examples: list[Example] = field(default_factory=list)


@dataclass(slots=True)
class _FileTally:
    records: int = 0
    valid: int = 0
    invalid: int = 0
    blank: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    """Aggregates results over lines and files: counts per code (and how many records each
    touched), the first ``max_examples`` examples per code, counts per detected kind.
    A warning repeated on every message of every record stays one entry with a count.

    ``add`` is one dict update for a clean record; the totals are derived when asked."""

    max_examples: int = 5
    _counts: dict[tuple[object, str | None, bool], int] = field(default_factory=dict, repr=False)
    _blank: dict[str, int] = field(default_factory=dict, repr=False)
    _codes: dict[str, _CodeTally] = field(default_factory=dict, repr=False)
    tokens: TokenTally | None = field(default=None, repr=False)  # with a tokenizer (Checker)

    def __post_init__(self) -> None:
        if not isinstance(self.max_examples, int) or self.max_examples < 0:
            raise UsageError(
                f"max_examples must be a non-negative integer, got {self.max_examples!r}"
            )

    def add(self, file: object, line: int, result: RecordResult) -> None:
        """Count one checked line of ``file`` (a str or Path)."""
        key = (file, result.kind, result.ok)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        if result.issues:
            self._add_issues(str(file), line, result.issues)

    def add_many(self, file: object, result: RecordResult, n: int) -> None:
        """Count `n` more records with this same result whose issues already have all their
        examples (what `add` would do n times, at the cost of one)."""
        key = (file, result.kind, result.ok)
        self._counts[key] = self._counts.get(key, 0) + n
        counted: set[str] = set()
        for issue in result.issues:
            tally = self._codes.get(issue.code)
            if tally is None:
                tally = self._codes[issue.code] = _CodeTally(issue.severity)
            tally.count += n
            if issue.code not in counted:
                counted.add(issue.code)
                tally.records += n

    def add_clean(self, file: object, kind: str | None, n: int) -> None:
        """Count `n` valid records of `kind` without issues (what `add` would do n times)."""
        key = (file, kind, True)
        self._counts[key] = self._counts.get(key, 0) + n

    def add_blank(self, file: object, line: int) -> None:
        """Count a blank line the reader skipped (a warning, never an invalid record)."""
        name = str(file)
        self._blank[name] = self._blank.get(name, 0) + 1
        self._add_issues(name, line, (_warning("blank_line", "", "blank line skipped"),))

    def add_tokens(self, tally: TokenTally) -> None:
        """Add the token counts of some records (a block's)."""
        if self.tokens is None:
            self.tokens = TokenTally(limit=tally.limit, template=tally.template)
        self.tokens.merge(tally)

    def merge(self, other: Report, line_shift: int = 0) -> None:
        """Add another report's counts; examples are kept in order up to ``max_examples``.

        Merging per-block reports in input order gives the report one pass would give;
        `line_shift` is added to the other report's line numbers (a part counted from 1)."""
        counts = self._counts
        for key, n in other._counts.items():
            counts[key] = counts.get(key, 0) + n
        if other.tokens is not None:
            self.add_tokens(other.tokens)
        for name, n in other._blank.items():
            self._blank[name] = self._blank.get(name, 0) + n
        for code, theirs in other._codes.items():
            mine = self._codes.get(code)
            if mine is None:
                mine = self._codes[code] = _CodeTally(theirs.severity)
            mine.count += theirs.count
            mine.records += theirs.records
            room = self.max_examples - len(mine.examples)
            if room > 0:
                mine.examples.extend(
                    Example(e.file, e.line + line_shift, e.issue) if line_shift else e
                    for e in theirs.examples[:room]
                )

    def _files(self) -> dict[str, _FileTally]:
        files: dict[str, _FileTally] = {}
        for (file, kind, ok), n in self._counts.items():
            tally = files.setdefault(str(file), _FileTally())
            tally.records += n
            if ok:
                tally.valid += n
            else:
                tally.invalid += n
            if kind is not None:
                tally.kinds[kind] = tally.kinds.get(kind, 0) + n
        for name, n in self._blank.items():
            files.setdefault(name, _FileTally()).blank = n
        return files

    @property
    def records(self) -> int:
        """Lines checked (blank lines not included)."""
        return sum(self._counts.values())

    @property
    def valid(self) -> int:
        """Records without errors (warnings allowed)."""
        return sum(n for (_, _, ok), n in self._counts.items() if ok)

    @property
    def invalid(self) -> int:
        return sum(n for (_, _, ok), n in self._counts.items() if not ok)

    @property
    def blank(self) -> int:
        return sum(self._blank.values())

    @property
    def kinds(self) -> dict[str, int]:
        """Records per detected kind, over all files."""
        kinds: dict[str, int] = {}
        for (_, kind, _), n in self._counts.items():
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + n
        return kinds

    def _add_issues(self, file: str, line: int, issues: tuple[Issue, ...]) -> None:
        counted: set[str] = set()
        for issue in issues:
            tally = self._codes.get(issue.code)
            if tally is None:
                tally = self._codes[issue.code] = _CodeTally(issue.severity)
            tally.count += 1
            if issue.code not in counted:
                counted.add(issue.code)
                tally.records += 1
            if len(tally.examples) < self.max_examples:
                tally.examples.append(Example(file, line, issue))

    @property
    def errors(self) -> int:
        return sum(t.count for t in self._codes.values() if t.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(t.count for t in self._codes.values() if t.severity == WARNING)

    def count(self, code: str) -> int:
        """How many times ``code`` was reported."""
        tally = self._codes.get(code)
        return tally.count if tally else 0

    def _ordered(self) -> Iterator[tuple[str, _CodeTally]]:
        return iter(
            sorted(
                self._codes.items(),
                key=lambda item: (item[1].severity != ERROR, -item[1].count, item[0]),
            )
        )

    def mixed_files(self) -> dict[str, dict[str, int]]:
        """Files whose records are of more than one kind, with the counts."""
        return {name: t.kinds for name, t in self._files().items() if len(t.kinds) > 1}

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (``--json``)."""
        return {
            "records": {
                "read": self.records,
                "valid": self.valid,
                "invalid": self.invalid,
                "blank": self.blank,
            },
            "errors": self.errors,
            "warnings": self.warnings,
            "kinds": dict(self.kinds),
            "mixed_kinds": bool(self.mixed_files()),
            **({"tokens": self.tokens.to_dict()} if self.tokens is not None else {}),
            "files": [
                {
                    "file": name,
                    "records": t.records,
                    "valid": t.valid,
                    "invalid": t.invalid,
                    "blank": t.blank,
                    "kinds": dict(t.kinds),
                    "mixed_kinds": len(t.kinds) > 1,
                }
                for name, t in self._files().items()
            ],
            "issues": [
                {
                    "code": code,
                    "severity": t.severity,
                    "count": t.count,
                    "records": t.records,
                    "examples": [
                        {
                            "file": e.file,
                            "line": e.line,
                            "path": e.issue.path,
                            "message": e.issue.message,
                            "text": format_issue(e.file, e.line, e.issue),
                        }
                        for e in t.examples
                    ],
                }
                for code, t in self._ordered()
            ],
        }

    def lines(self) -> list[str]:
        """A human summary: totals, kinds, then each code with its count and first examples."""
        out = [
            f"{self.records:,} records read: {self.valid:,} valid, {self.invalid:,} invalid"
            f" ({self.errors:,} errors, {self.warnings:,} warnings"
            + (f", {self.blank:,} blank lines skipped)" if self.blank else ")")
        ]
        kinds = self.kinds
        if kinds:
            out.append("kinds: " + _counts(kinds))
        for name, kinds in self.mixed_files().items():
            out.append(f"mixed kinds in {name}: {_counts(kinds)}")
        if self.tokens is not None:
            out.extend(self.tokens.lines())
        for code, t in self._ordered():
            times = "time" if t.count == 1 else "times"
            places = "record" if t.records == 1 else "records"
            if code == "blank_line":
                places = "line" if t.records == 1 else "lines"
            out.append(f"{t.severity} {code}: {t.count:,} {times} in {t.records:,} {places}")
            out.extend(f"  {format_issue(e.file, e.line, e.issue)}" for e in t.examples)
            if t.count > len(t.examples) and t.examples:
                out.append(f"  ... and {t.count - len(t.examples):,} more")
        return out


def _counts(kinds: dict[str, int]) -> str:
    return ", ".join(
        f"{kind} {n:,}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    )
