"""Streaming reader for an input that is one top-level JSON array of records.

Alpaca-style data ships as ``[\\n  {...},\\n  {...}\\n]``, usually pretty-printed and
sometimes gigabytes. `JsonArraySource` walks it block by block and yields each element's
own bytes with the same ``(line number, byte offset, raw bytes)`` interface as
`records.LineSource`, so validation, rejects and stats work unchanged. Memory is one block
plus the largest element: the file is never loaded whole.

Only the array's structure is checked here: brackets, commas, string boundaries. An element
that is bracketed correctly but not valid JSON (``{"a": tru}``) is yielded as it is, and
the validator reports it like any other bad record. Structural damage that makes element
boundaries unknowable raises `DataError` with a one-line message naming the line and the
(1-based, byte) column; the caller prefixes the file name.

A UTF-8 byte order mark before the array is a `DataError`, as a BOM on a JSONL line is an
error for the validator: trainers that read the file with ``json.load`` reject it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from shardkit.core.blocks import BLOCK_SIZE, NL, Readable
from shardkit.core.errors import DataError

BOM = b"\xef\xbb\xbf"
ARRAY_SUFFIXES = (".json", ".json.gz", ".json.zst")
JSON_WHITESPACE = b" \t\r\n"

_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURE = re.compile(rb'["\[\]{}]')  # outside strings, only these change what follows
_SCALAR_END = re.compile(rb'[ \t\r\n,:\[\]{}"]')
_QUOTE, _BACKSLASH, _OPEN_ARRAY, _CLOSE_ARRAY, _COMMA = 0x22, 0x5C, 0x5B, 0x5D, 0x2C
_OPEN_OBJECT, _CLOSE_OBJECT = 0x7B, 0x7D
_CANNOT_START_ELEMENT = frozenset(b",:}]")


ARRAY_BATCH = 1024  # elements of an array checked together (one Checker call)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[^ \t\r\n"]+', re.DOTALL)


def compact(raw: bytes) -> bytes:
    """An array element as one JSON line: the whitespace between tokens removed, strings
    and numbers byte for byte (a JSON array cannot be copied byte for byte into JSONL)."""
    return b"".join(_TOKEN.findall(raw))


def is_json_array(path_or_name: str, head: bytes) -> bool:
    """True for a `.json`, `.json.gz` or `.json.zst` input whose content starts with '['.

    `head` is the first few KiB of the *decompressed* stream; leading whitespace and a
    UTF-8 BOM are skipped (the BOM is then reported by `JsonArraySource`). The suffix
    check ignores case. A `.json` file holding JSON Lines starts with '{' and stays JSONL.
    """
    if not str(path_or_name).lower().endswith(ARRAY_SUFFIXES):
        return False
    if head.startswith(BOM):
        head = head[len(BOM) :]
    return head.lstrip(JSON_WHITESPACE)[:1] == b"["


class _Malformed(Exception):
    """Structural error: `template` names buffer positions as ``{0}``, ``{1}``... (in
    increasing order, as lines are counted forwards) and other fields by keyword."""

    def __init__(self, template: str, *positions: int, **fields: str) -> None:
        super().__init__(template)
        self.template = template
        self.positions = positions
        self.fields = fields

    def render(self, locate) -> str:
        return self.template.format(*map(locate, self.positions), **self.fields)


class JsonArraySource:
    """Elements of one top-level JSON array: (line number, byte offset, raw bytes).

    `raw` is exactly the element's bytes in the input, from its first to its last byte (no
    surrounding whitespace or comma), so ``orjson.loads(raw)`` decodes it and a rejects
    file can keep it verbatim. The line number is where the element starts; the offset is
    into the decompressed stream. Elements need not be objects: numbers, strings and
    arrays are yielded too, for the validator to report. `blank` and `added_newline`
    exist for interface compatibility with `LineSource` and stay 0 / False.
    """

    def __init__(self, stream: Readable, block_size: int = BLOCK_SIZE) -> None:
        self._stream = stream
        self._block_size = block_size
        self.blank = 0
        self.added_newline = False
        self._buf = b""
        self._base = 0  # stream offset of _buf[0]
        self._line = 1  # line number at _buf[_counted]
        self._counted = 0
        self._line_start = 0  # stream offset where line `_line` starts

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        try:
            yield from self._elements()
        except _Malformed as e:
            raise DataError(e.render(self._locate)) from None

    # ------------------------------------------------------------ structure

    def _elements(self) -> Iterator[tuple[int, int, bytes]]:
        i = self._open_array()
        first = True
        if self._buf[i] != _CLOSE_ARRAY:
            while True:
                start, end = self._element(i, first)
                yield self._line_at(start), self._base + start, self._buf[start:end]
                i = self._next_nonblank(end)
                c = self._buf[i]
                if c == _CLOSE_ARRAY:
                    break
                if c != _COMMA:
                    raise _Malformed("expected ',' or ']' after element at {0}", i)
                i = self._next_nonblank(i + 1)
                first = False
        self._expect_end(i + 1)

    def _open_array(self) -> int:
        """Check the input starts with '['; return the first non-blank position after it."""
        while len(self._buf) < len(BOM) and self._fill(0):
            pass
        if self._buf.startswith(BOM):
            raise _Malformed(
                "UTF-8 byte order mark (BOM) before the array at {0}; "
                "save the file as UTF-8 without BOM",
                0,
            )
        i = self._next_nonblank(0, at_start=True)
        c = self._buf[i]
        if c != _OPEN_ARRAY:
            raise _Malformed("not a JSON array: first character {char} at {0}", i, char=_show(c))
        return self._next_nonblank(i + 1)

    def _expect_end(self, pos: int) -> None:
        i = self._skip_whitespace(pos)
        if i >= 0:
            hint = "; if this is JSON Lines, name it .jsonl" if self._buf[i] in b"[{" else ""
            raise _Malformed("trailing data after the array at {0}{hint}", i, hint=hint)

    def _element(self, i: int, first: bool) -> tuple[int, int]:
        """(start, end) of the element whose first byte is _buf[i], reading more as needed."""
        c = self._buf[i]
        if c == _OPEN_OBJECT or c == _OPEN_ARRAY:
            stack, pos = [c], i + 1
            while (end := _container_end(self._buf, pos, stack, i)) < 0:
                i, pos = self._more(i, -end - 1)
            return i, end
        if c == _QUOTE:
            while (end := _string_end(self._buf, i)) < 0:
                i, _ = self._more(i, i)
            return i, end
        if c in _CANNOT_START_ELEMENT:
            expected = "an element or ']' after '['" if first else "an element after ','"
            raise _Malformed("expected {what} at {0}", i, what=expected)
        while (m := _SCALAR_END.search(self._buf, i)) is None:
            i, _ = self._more(i, i)
        return i, m.start()

    # ------------------------------------------------------------ buffer

    def _fill(self, keep: int) -> bool:
        """Drop _buf[:keep] and append the next block; False (nothing changed) at the end."""
        carry = len(self._buf) - keep
        data = self._stream.read(max(self._block_size, carry))  # doubles for a long element
        if not data:
            return False
        self._line_at(keep)
        self._buf = self._buf[keep:] + data
        self._base += keep
        self._counted -= keep
        return True

    def _more(self, start: int, pos: int) -> tuple[int, int]:
        """Read more of the element starting at `start`; return it and `pos`, shifted."""
        if not self._fill(start):
            raise _Malformed(
                "unterminated array: the file ends inside element starting at {0}", start
            )
        return 0, pos - start

    def _skip_whitespace(self, pos: int) -> int:
        """Position of the next non-whitespace byte at or after pos, or -1 at the end."""
        while True:
            i = _WHITESPACE.match(self._buf, pos).end()
            if i < len(self._buf):
                return i
            if not self._fill(i):
                return -1
            pos = 0

    def _next_nonblank(self, pos: int, *, at_start: bool = False) -> int:
        i = self._skip_whitespace(pos)
        if i >= 0:
            return i
        if at_start:
            raise _Malformed("not a JSON array: the file is empty or only whitespace")
        raise _Malformed(
            "unterminated array: the file ends at {0} with no closing ']'", len(self._buf)
        )

    # ------------------------------------------------------------ positions

    def _line_at(self, pos: int) -> int:
        """Line number of _buf[pos]; positions are asked for in increasing order."""
        buf, counted = self._buf, self._counted
        n = buf.count(NL, counted, pos)
        if n:
            self._line += n
            self._line_start = self._base + buf.rfind(NL, counted, pos) + 1
        self._counted = pos
        return self._line

    def _locate(self, pos: int) -> str:
        line = self._line_at(pos)
        return f"line {line} column {self._base + pos - self._line_start + 1}"


def _container_end(buf: bytes, pos: int, stack: list[int], start: int) -> int:
    """End (exclusive) of the array/object opened at `start`, scanning on from `pos`.

    `stack` holds the brackets still open and is updated in place. If `buf` ends first,
    return ``-(resume + 1)``: where to scan on from once more data is appended (the
    opening quote of an unfinished string, else the end of `buf`).
    """
    search, find = _STRUCTURE.search, buf.find
    while (m := search(buf, pos)) is not None:
        i = m.start()
        c = buf[i]
        if c == _QUOTE:
            j = find(b'"', i + 1)
            while j > 0 and buf[j - 1] == _BACKSLASH and _escaped(buf, j):
                j = find(b'"', j + 1)
            if j < 0:
                return -(i + 1)
            pos = j + 1
        elif c == _OPEN_OBJECT or c == _OPEN_ARRAY:
            stack.append(c)
            pos = i + 1
        elif stack.pop() == c - 2:  # ']' - 2 == '[', '}' - 2 == '{'
            if not stack:
                return i + 1
            pos = i + 1
        else:
            raise _Malformed(
                "mismatched {found} at {1} in element starting at {0} (expected {expected})",
                start,
                i,
                found=_show(c),
                expected=_show(c ^ _CLOSE_ARRAY ^ _CLOSE_OBJECT),
            )
    return -(len(buf) + 1)


def _string_end(buf: bytes, q: int) -> int:
    """End (exclusive) of the string whose opening quote is buf[q]; -1 if buf ends first."""
    j = buf.find(b'"', q + 1)
    while j > 0 and buf[j - 1] == _BACKSLASH and _escaped(buf, j):
        j = buf.find(b'"', j + 1)
    return j + 1 if j >= 0 else -1


def _escaped(buf: bytes, j: int) -> bool:
    """Whether the quote at buf[j] is escaped: an odd run of backslashes precedes it.

    The run cannot reach past the string's opening quote, so no bounds check is needed.
    """
    k = j - 1
    while buf[k - 1] == _BACKSLASH:
        k -= 1
    return (j - k) % 2 == 1


def _show(c: int) -> str:
    return repr(chr(c)) if 0x20 < c < 0x7F else f"byte 0x{c:02x}"
