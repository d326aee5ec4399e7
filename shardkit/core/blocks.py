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
_SAMPLE = 64 * 1024  # bytes sampled to estimate a block's mean line length


class Readable(Protocol):
    def read(self, n: int) -> bytes: ...

    def readinto(self, b: memoryview) -> int: ...


@dataclass(slots=True)
class Block:
    """Whole lines buf[start:end], every one ending in b"\\n"."""

    buf: bytes | bytearray
    start: int
    end: int
    first_line: int  # 1-based physical line number of the line at `start`
    offset: int  # decompressed byte offset of buf[start] in the input
    lines: int = -1  # physical lines in the block, once someone has counted them


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
        # bytes the stream still holds, when it knows (a plain file): a small file then gets
        # a small buffer; a fresh 1 MiB one costs its page faults even if 1 KiB is read into it
        hint = getattr(stream, "size_hint", None)
        self._left = hint - start_offset if isinstance(hint, int) else None
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
        # One copy per byte: the stream reads straight into a fresh buffer that starts
        # with the previous block's unfinished line. Each block gets its own buffer, so
        # views handed to the hashing thread stay valid.
        carry = self._skip_prefix()
        while True:
            k = len(carry)
            room = max(self._block_size, k)  # doubles for a very long line
            if self._left is not None:
                room = min(room, max(self._left, 0) + 4096)  # + 4096: a file that grew still reads
            buf = bytearray(k + room)
            buf[:k] = carry
            n = self._stream.readinto(memoryview(buf)[k:])
            if not n:
                break
            if self._left is not None:
                self._left -= n
            filled = k + n
            cut = buf.rfind(NL, 0, filled) + 1
            if cut == 0:  # no line ends yet: keep reading
                carry = bytes(buf[:filled])
                continue
            carry = bytes(buf[cut:filled])
            yield from self._emit(buf, cut)
        if carry:  # whole lines after a resume point and/or a last line with no newline
            if not carry.endswith(NL):
                self.added_newline = True
                carry += NL
            yield from self._emit(carry, len(carry))
            if self.added_newline:
                self.offset -= 1  # offsets count input bytes; the added newline is not one

    def _emit(self, buf: bytes | bytearray, end: int) -> Iterator[Block]:
        block = Block(buf, 0, end, self.line, self.offset)
        yield block
        # the consumer usually counted the lines already (nonblank_runs); don't do it twice
        self.offset += end
        self.line += block.lines if block.lines >= 0 else buf.count(NL, 0, end)


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
    sample_end = min(e, s + _SAMPLE)
    sampled = buf.count(NL, s, sample_end)
    if sampled and (sample_end - s) // sampled < _LONG_LINE:
        nlines = buf.count(NL, s, e)
        block.lines = nlines
        starts_with_brace = (buf[s] == 0x7B) + buf.count(b"\n{", s, e)
        if starts_with_brace == nlines:
            return [Run(s, e, block.first_line, nlines, 0)], 0
    runs, trailing, nlines = _walk_runs(buf, s, e, block.first_line)
    block.lines = nlines
    return runs, trailing


def _walk_runs(buf: bytes | bytearray, s: int, e: int, first_line: int) -> tuple[list[Run], int, int]:
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
    return runs, blanks, line - first_line


def nth_line_end(buf: bytes | bytearray, pos: int, n: int) -> int:
    """Offset just past the n-th newline at or after pos (n >= 1; the lines must exist)."""
    find = buf.find
    for _ in range(n):
        pos = find(NL, pos) + 1
    return pos


class LineSource:
    """Non-blank lines of one input, one at a time: (line number, byte offset, raw bytes).

    `raw` keeps the line's own bytes including its terminator (b"\\n", or b"\\r\\n"); the
    stream's hashing and byte counting still happen underneath. Blank lines are not
    yielded but counted in `blank`. For per-record work (validation, stats) — the split
    fast path works on whole runs instead.
    """

    def __init__(self, stream: Readable, block_size: int = BLOCK_SIZE) -> None:
        self.reader = BlockReader(stream, block_size)
        self.blank = 0

    @property
    def added_newline(self) -> bool:
        return self.reader.added_newline

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        for block in self.reader:
            runs, trailing = nonblank_runs(block)
            buf = bytes(block.buf) if isinstance(block.buf, bytearray) else block.buf
            base = block.offset - block.start
            for run in runs:
                self.blank += run.blanks_before
                pos, number = run.start, run.first_line
                find = buf.find
                while pos < run.end:
                    nxt = find(NL, pos, run.end) + 1
                    yield number, base + pos, buf[pos:nxt]
                    pos, number = nxt, number + 1
            self.blank += trailing
