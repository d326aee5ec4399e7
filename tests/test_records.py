import io

from hypothesis import given, settings
from hypothesis import strategies as st

from shardkit.core.blocks import Block, BlockReader, nonblank_runs, nth_line_end


def blocks_of(data: bytes, block_size: int, **kw) -> tuple[list[Block], BlockReader]:
    reader = BlockReader(io.BytesIO(data), block_size, **kw)
    return list(reader), reader


def test_blocks_hold_whole_lines_and_numbers():
    data = b"".join(b'{"i":%d}\n' % i for i in range(100))
    blocks, reader = blocks_of(data, 64)
    assert b"".join(b.buf[b.start : b.end] for b in blocks) == data
    for b in blocks:
        assert b.buf[b.end - 1 : b.end] == b"\n"
        assert data[b.offset : b.offset + 9].startswith(b'{"i":%d}' % (b.first_line - 1))
    assert reader.line == 101 and not reader.added_newline


def test_line_longer_than_block():
    data = b"x" * 1000 + b"\n" + b"y\n"
    blocks, _ = blocks_of(data, 16)
    assert b"".join(b.buf[b.start : b.end] for b in blocks) == data


def test_missing_final_newline_is_added_and_flagged():
    blocks, reader = blocks_of(b'{"a":1}\n{"b":2}', 4)
    assert b"".join(b.buf[b.start : b.end] for b in blocks) == b'{"a":1}\n{"b":2}\n'
    assert reader.added_newline


def test_resume_offset_skips_prefix():
    data = b"".join(b"%d\n" % i for i in range(50))
    offset = data.index(b"20\n")
    blocks, _ = blocks_of(data, 7, start_offset=offset, start_line=21)
    assert b"".join(b.buf[b.start : b.end] for b in blocks) == data[offset:]
    assert blocks[0].first_line == 21 and blocks[0].offset == offset


@given(data=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"") + b"\n"), block_size=st.integers(1, 64), cut=st.integers(0, 300))
def test_resume_at_any_line_start_yields_exactly_the_rest(data, block_size, cut):
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == 10 and i + 1 < len(data)]
    offset = max(s for s in starts if s <= min(cut, len(data)))
    line = data[:offset].count(b"\n") + 1
    blocks, reader = blocks_of(data, block_size, start_offset=offset, start_line=line)
    assert b"".join(b.buf[b.start : b.end] for b in blocks) == data[offset:]
    assert not reader.added_newline
    assert reader.line == data.count(b"\n") + 1


def test_runs_skip_blank_and_whitespace_lines():
    data = b'\n{"a":1}\n  \n\t\r\n{"b":2}\r\n{"c":3}\n\n'
    (block,), _ = blocks_of(data, 1 << 20)
    runs, trailing = nonblank_runs(block)
    assert [(data[r.start : r.end], r.first_line, r.lines, r.blanks_before) for r in runs] == [
        (b'{"a":1}\n', 2, 1, 1),
        (b'{"b":2}\r\n{"c":3}\n', 5, 2, 2),
    ]
    assert trailing == 1


def test_runs_fast_path_single_run():
    data = b"".join(b'{"i":%d}\n' % i for i in range(1000))
    (block,), _ = blocks_of(data, 1 << 20)
    runs, trailing = nonblank_runs(block)
    assert len(runs) == 1 and runs[0].lines == 1000 and trailing == 0


def test_nth_line_end():
    buf = b"a\nbb\nccc\n"
    assert nth_line_end(buf, 0, 1) == 2
    assert nth_line_end(buf, 0, 3) == len(buf)
    assert nth_line_end(buf, 2, 1) == 5


lines = st.lists(
    st.one_of(
        st.binary(min_size=0, max_size=30).map(lambda b: b.replace(b"\n", b"")),
        st.sampled_from([b"", b" ", b"\t", b"\r", b"  \r"]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(lines=lines, block_size=st.integers(1, 64), final_newline=st.booleans())
def test_runs_partition_every_line(lines, block_size, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    blocks, reader = blocks_of(data, block_size)
    kept, blank_total, line_numbers = [], 0, []
    for block in blocks:
        runs, trailing = nonblank_runs(block)
        for r in runs:
            blank_total += r.blanks_before
            kept.append(block.buf[r.start : r.end])
            line_numbers.extend(range(r.first_line, r.first_line + r.lines))
        blank_total += trailing
    physical = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        physical.pop()
    expected = [ln + b"\n" for ln in physical if ln.strip()]
    assert b"".join(kept) == b"".join(expected)
    assert blank_total + len(expected) == len(physical)
    assert line_numbers == [i + 1 for i, ln in enumerate(physical) if ln.strip()]
