"""Streaming line reader: fixed-size blocks of whole lines, with line numbers and offsets.

Records are never copied into per-line objects on the fast path: a `Block` is a slice
(buf, start, end) of one read buffer, and callers use bytes.count/find/rfind with bounds,
or memoryview slices, to cut it. Memory is one block plus the longest line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

BLOCK_SIZE = 1024 * 1024
NL = b"\n"
_BLANK_FIRST_BYTES = frozenset(b" \t\r\n\x0b\x0c")
_LONG_LINE = 128  # above this mean line length, walking lines beats scanning bytes twice


class Readable(Protocol):
    def read(self, n: int) -> bytes: ...


@dataclass(slots=True)
class Block:
    """Whole lines buf[start:end], every one ending in b"\\n"."""

    buf: bytes
    start: int
    end: int
    first_line: int  # 1-based physical line number of the line at `start`
    offset: int  # decompressed byte offset of buf[start] in the input


class BlockReader:
    """Iterate a byte stream as blocks of whole lines.

    A final line without a newline gets one added (`added_newline` says so): the only
    byte shardkit ever adds to a record. `start_offset`/`start_line` resume mid-input:
    the bytes before `start_offset` are read (so the stream's hash covers them) but not
    yielded.
    """

    def __init__(
        self,
        stream: Readable,
        block_size: int = BLOCK_SIZE,
        *,
        start_offset: int = 0,
        start_line: int = 1,
    ) -> None:
        self._stream = stream
        self._block_size = block_size
        self._skip = start_offset
        self.offset = start_offset  # offset of the next byte not yet yielded
        self.line = start_line
        self.added_newline = False

    def _skip_prefix(self) -> bytes:
        """Consume the bytes before the resume offset; return what was read past it."""
        remaining = self._skip
        while remaining > 0:
            data = self._stream.read(self._block_size)
            if not data:
                raise EOFError("input is shorter than the resume offset")
            if len(data) >= remaining:
                return data[remaining:]
            remaining -= len(data)
        return b""

    def __iter__(self) -> Iterator[Block]:
        carry = b""
        pending = self._skip_prefix()  # whole lines may follow the resume offset in that read
        while True:
            data = pending or self._stream.read(self._block_size)
            pending = b""
            if not data:
                break
            buf = carry + data if carry else data
            cut = buf.rfind(NL) + 1
            if cut == 0:  # one line longer than a block: keep reading
                carry = buf
                continue
            carry = buf[cut:] if cut < len(buf) else b""
            yield self._emit(buf, cut)
        if carry:
            self.added_newline = True
            buf = carry + NL
            yield self._emit(buf, len(buf))

    def _emit(self, buf: bytes, end: int) -> Block:
        block = Block(buf, 0, end, self.line, self.offset)
        self.offset += end
        self.line += buf.count(NL, 0, end)
        return block


@dataclass(slots=True)
class Run:
    """Consecutive non-blank lines buf[start:end] inside a block."""

    start: int
    end: int
    first_line: int
    lines: int
    blanks_before: int  # blank lines skipped between the previous run and this one


def nonblank_runs(block: Block) -> tuple[list[Run], int]:
    """Split a block into runs of non-blank lines; return them and the trailing blank count.

    A blank line is empty or only ASCII whitespace. JSONL records almost never start with
    whitespace, so the common case is checked in C (every line starts with '{') and the
    block comes back as a single run; otherwise lines are walked one by one.
    """
    buf, s, e = block.buf, block.start, block.end
    nlines = buf.count(NL, s, e)
    if nlines and (e - s) // nlines < _LONG_LINE:
        starts_with_brace = (buf[s] == 0x7B) + buf.count(b"\n{", s, e)
        if starts_with_brace == nlines:
            return [Run(s, e, block.first_line, nlines, 0)], 0
    return _walk_runs(buf, s, e, block.first_line)


def _walk_runs(buf: bytes, s: int, e: int, first_line: int) -> tuple[list[Run], int]:
    runs: list[Run] = []
    find = buf.find
    blank_first = _BLANK_FIRST_BYTES
    run_start = s
    run_line = first_line
    line = first_line
    blanks = 0
    pos = s
    while pos < e:
        nxt = find(NL, pos, e) + 1
        if buf[pos] in blank_first and not buf[pos:nxt].strip():
            if pos > run_start:
                runs.append(Run(run_start, pos, run_line, line - run_line, blanks))
                blanks = 0
            blanks += 1
            run_start = nxt
            run_line = line + 1
        line += 1
        pos = nxt
    if e > run_start:
        runs.append(Run(run_start, e, run_line, line - run_line, blanks))
        blanks = 0
    return runs, blanks


def nth_line_end(buf: bytes, pos: int, n: int) -> int:
    """Offset just past the n-th newline at or after pos (n >= 1; the lines must exist)."""
    find = buf.find
    for _ in range(n):
        pos = find(NL, pos) + 1
    return pos
