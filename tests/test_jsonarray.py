import gzip
import io
import json
import tracemalloc
from pathlib import Path

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardkit.core.errors import DataError
from shardkit.core.io import InputStream, inspect_input
from shardkit.core.jsonarray import JsonArraySource, is_json_array

REALDATA = Path("/work/shared/realdata")


def elements(data: bytes, block_size: int = 1 << 20) -> list[tuple[int, int, bytes]]:
    return list(JsonArraySource(io.BytesIO(data), block_size))


def error(data: bytes, block_size: int = 1 << 20) -> str:
    with pytest.raises(DataError) as e:
        elements(data, block_size)
    return str(e.value)


def assert_recovers(data: bytes, values: list, block_size: int) -> None:
    """Each element comes back as its exact bytes, at its offset and line."""
    got = elements(data, block_size)
    assert [orjson.loads(raw) for _, _, raw in got] == values
    for line, offset, raw in got:
        assert data[offset : offset + len(raw)] == raw
        assert raw == raw.strip(b" \t\r\n") and raw[:1] != b","
        assert line == data[:offset].count(b"\n") + 1


class ShortReads:
    """A stream that returns fewer bytes than asked, as pipes and decompressors do."""

    def __init__(self, data: bytes, most: int) -> None:
        self._f = io.BytesIO(data)
        self._most = most

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._most))

    def readinto(self, view: memoryview) -> int:
        return self._f.readinto(view[: self._most])


# ---------------------------------------------------------------- elements


def test_pretty_printed_indent_2():
    data = b'[\n  {\n    "a": 1\n  },\n  {\n    "b": [\n      2\n    ]\n  }\n]\n'
    assert elements(data) == [
        (2, 4, b'{\n    "a": 1\n  }'),
        (5, 24, b'{\n    "b": [\n      2\n    ]\n  }'),
    ]


@pytest.mark.parametrize("indent", [2, 4])
@pytest.mark.parametrize("block_size", [1, 3, 64, 1 << 20])
def test_pretty_printed_records_come_back_verbatim(indent, block_size):
    records = [{"instruction": f"q{i}", "input": "", "output": "x" * i} for i in range(30)]
    data = json.dumps(records, indent=indent).encode()
    pad = b" " * indent
    expected = []
    for i, record in enumerate(records):
        text = json.dumps(record, indent=indent).encode().replace(b"\n", b"\n" + pad)
        offset = data.index(b"\n" + pad + text) + 1 + indent
        expected.append((2 + 5 * i, offset, text))
    assert elements(data, block_size) == expected


def test_compact_one_line():
    data = b'[{"a":1},{"b":[2,{"c":3}]},[],{}]'
    assert elements(data) == [
        (1, 1, b'{"a":1}'),
        (1, 9, b'{"b":[2,{"c":3}]}'),
        (1, 27, b"[]"),
        (1, 30, b"{}"),
    ]


def test_crlf_line_endings_stay_inside_elements():
    data = b'[\r\n  {\r\n    "a": 1\r\n  },\r\n  2\r\n]\r\n'
    assert elements(data) == [(2, 5, b'{\r\n    "a": 1\r\n  }'), (5, 28, b"2")]


def test_whitespace_anywhere():
    data = b' \t\r\n[ \n\t{"a" : 1} \r\n, \t"s"\n,\n\n3 ] \n\t '
    assert elements(data) == [(3, 8, b'{"a" : 1}'), (4, 23, b'"s"'), (7, 30, b"3")]


def test_brackets_quotes_and_backslashes_inside_strings():
    items = [
        b'{"a\\"]}": "x\\\\"}',
        b'"a\\"]}"',
        b'"\\\\"',
        b'["{", "\\\\\\"", "]"]',
        b'{"k": "\\u0022]", "t": "\\\\\\\\"}',
        b'{"nested": [[{"x": "}}]]"}], {}]}',
    ]
    data = b"[" + b", ".join(items) + b"]"
    for block_size in (1, 2, 5, 1 << 20):
        assert [raw for _, _, raw in elements(data, block_size)] == items
    assert [orjson.loads(raw) for raw in items] == orjson.loads(data)


def test_elements_that_are_not_objects_are_yielded():
    data = b'[1, -2.5e3, "s", true, false, null, [1, [2]], {"a": 1}]'
    raws = [raw for _, _, raw in elements(data)]
    assert raws == [b"1", b"-2.5e3", b'"s"', b"true", b"false", b"null", b"[1, [2]]", b'{"a": 1}']


def test_malformed_element_is_yielded_for_the_validator():
    data = b'[{"a": tru}, {"b": 1 2}, nope, 01]'
    assert [raw for _, _, raw in elements(data)] == [b'{"a": tru}', b'{"b": 1 2}', b"nope", b"01"]


@pytest.mark.parametrize("data", [b"[]", b"[ ]", b"\n[\r\n]\n", b"  [\n\n]"])
def test_empty_array(data):
    assert elements(data) == []
    assert elements(data, 1) == []


def test_interface_matches_line_source():
    source = JsonArraySource(io.BytesIO(b"[1]"))
    assert list(source) == [(1, 1, b"1")]
    assert source.blank == 0 and source.added_newline is False


def test_element_much_larger_than_the_block():
    big = {"text": 'y\\"' * 100_000, "list": list(range(20_000))}
    data = json.dumps([1, big, 2], indent=1).encode()
    assert_recovers(data, [1, big, 2], 4096)


def test_long_element_is_read_in_growing_reads_not_quadratically():
    data = json.dumps(["x" * 4_000_000]).encode()
    stream = CountingReads(data)
    assert [len(raw) for _, _, raw in JsonArraySource(stream, 1024)] == [4_000_002]
    assert stream.reads < 30  # 1 KiB at a time would take ~4000


class CountingReads(io.BytesIO):
    reads = 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return super().read(n)


def test_short_reads():
    records = [{"i": i, "s": ']}"\\'} for i in range(200)]
    data = json.dumps(records, indent=2).encode()
    got = list(JsonArraySource(ShortReads(data, 7), 1 << 20))
    assert [orjson.loads(raw) for _, _, raw in got] == records


def test_gzip_input_offsets_are_in_the_decompressed_stream(tmp_path):
    records = [{"i": i, "text": "é" * i} for i in range(100)]
    data = json.dumps(records, indent=2, ensure_ascii=False).encode()
    path = tmp_path / "a.json.gz"
    path.write_bytes(gzip.compress(data))
    with InputStream(inspect_input(str(path))) as stream:
        got = list(JsonArraySource(stream, 1000))
    assert [orjson.loads(raw) for _, _, raw in got] == records
    assert all(data[offset : offset + len(raw)] == raw for _, offset, raw in got)


def test_memory_is_a_block_plus_the_largest_element():
    record = {"messages": [{"role": "user", "content": "hello " * 50}] * 4}
    data = json.dumps([record] * 8000, indent=2).encode()  # ~15 MB
    tracemalloc.start()
    try:
        for _ in JsonArraySource(io.BytesIO(data), 64 * 1024):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) > 10_000_000 and peak < 1_000_000


def test_reading_stops_where_the_consumer_stops():
    data = json.dumps([{"i": i} for i in range(100_000)]).encode()
    stream = io.BytesIO(data)
    source = iter(JsonArraySource(stream, 4096))
    next(source)
    assert stream.tell() <= 4096


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a JSON array: the file is empty or only whitespace"),
        (b" \n\t\r\n", "not a JSON array: the file is empty or only whitespace"),
        (b'{"a": 1}\n', "not a JSON array: first character '{' at line 1 column 1"),
        (b'\n  "a"', "not a JSON array: first character '\"' at line 2 column 3"),
        (b"\x00[]", "not a JSON array: first character byte 0x00 at line 1 column 1"),
        (
            b"\xef\xbb\xbf[1]",
            "UTF-8 byte order mark (BOM) before the array at line 1 column 1; "
            "save the file as UTF-8 without BOM",
        ),
        (b'[\n  {"a": 1}\n  {"b": 2}\n]', "expected ',' or ']' after element at line 3 column 3"),
        (b'[{"a": 1}}]', "expected ',' or ']' after element at line 1 column 10"),
        (b"[1 2]", "expected ',' or ']' after element at line 1 column 4"),
        (b"[1:2]", "expected ',' or ']' after element at line 1 column 3"),
        (b'[\n  {"a": 1},\n]', "expected an element after ',' at line 3 column 1"),
        (b"[1,,2]", "expected an element after ',' at line 1 column 4"),
        (b"[,1]", "expected an element or ']' after '[' at line 1 column 2"),
        (b"[}]", "expected an element or ']' after '[' at line 1 column 2"),
        (
            b'[\n  {"a": 1},\n  {"b": "x',
            "unterminated array: the file ends inside element starting at line 3 column 3",
        ),
        (
            b'[\n  {"a": [1, 2]',
            "unterminated array: the file ends inside element starting at line 2 column 3",
        ),
        (
            b'[1, "abc\\"',
            "unterminated array: the file ends inside element starting at line 1 column 5",
        ),
        (b"[1, 23", "unterminated array: the file ends inside element starting at line 1 column 5"),
        (b"[", "unterminated array: the file ends at line 1 column 2 with no closing ']'"),
        (
            b'[\n  {"a": 1}\n',
            "unterminated array: the file ends at line 3 column 1 with no closing ']'",
        ),
        (
            b'[\n  {"a": 1},\r\n  ',
            "unterminated array: the file ends at line 3 column 3 with no closing ']'",
        ),
        (b"[1]\n]", "trailing data after the array at line 2 column 1"),
        (b"[1] x", "trailing data after the array at line 1 column 5"),
        (
            b"[1, 2]\n[3, 4]\n",
            "trailing data after the array at line 2 column 1; if this is JSON Lines, name it .jsonl",
        ),
        (
            b'[\n  {"a": [1, 2}\n]',
            "mismatched '}' at line 2 column 14 in element starting at line 2 column 3 (expected ']')",
        ),
        (
            b'[{"a": 1]\n]',
            "mismatched ']' at line 1 column 9 in element starting at line 1 column 2 (expected '}')",
        ),
    ],
)
def test_error_messages(data, message):
    assert error(data) == message
    assert error(data, 1) == message
    assert error(data, 3) == message


def test_error_columns_after_a_block_boundary_and_many_lines():
    data = b"[\n" + b"".join(b'  {"i": %d},\n' % i for i in range(5000)) + b'  {"i": 1} {"i": 2}\n]'
    assert error(data, 100) == "expected ',' or ']' after element at line 5002 column 12"


def test_elements_before_an_error_are_yielded():
    source = iter(JsonArraySource(io.BytesIO(b"[1, 2 3]")))
    assert next(source) == (1, 1, b"1")
    assert next(source) == (1, 4, b"2")
    with pytest.raises(DataError):
        next(source)


# ---------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\[]{},: \n\t\r/é中😀\x00\x1f')),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.sampled_from('k"\\[]{}'), max_size=4), children, max_size=4
        )
    ),
    max_leaves=12,
)


@st.composite
def serialized_arrays(draw) -> tuple[bytes, list]:
    values = draw(st.lists(json_values, max_size=8))
    indent = draw(st.sampled_from([None, 0, 1, 2, 4, "\t"]))
    compact = indent is None and draw(st.booleans())
    text = json.dumps(
        values,
        indent=indent,
        ensure_ascii=draw(st.booleans()),
        separators=(",", ":") if compact else None,
    )
    data = text.encode()
    if draw(st.booleans()):
        data = data.replace(b"\n", b"\r\n")  # json.dumps escapes newlines inside strings
    lead, trail = (
        draw(st.sampled_from([b"", b"\n", b" \t\r\n"])),
        draw(st.sampled_from([b"", b"\n", b"\r\n  "])),
    )
    return lead + data + trail, values


@settings(max_examples=400, deadline=None)
@given(array=serialized_arrays(), block_size=st.integers(1, 64))
def test_every_element_is_recovered_at_any_block_size(array, block_size):
    data, values = array
    assert_recovers(data, values, block_size)


@settings(max_examples=200, deadline=None)
@given(array=serialized_arrays(), block_size=st.integers(1, 64), cut=st.integers(0, 10_000))
def test_truncated_array_is_reported_as_unterminated(array, block_size, cut):
    data, _ = array
    end = data.rindex(b"]")
    cut = cut % (end + 1)  # somewhere before the closing bracket
    message = error(data[:cut], block_size)
    if data[:cut].strip():
        assert message.startswith("unterminated array: the file ends ")
    else:
        assert message == "not a JSON array: the file is empty or only whitespace"


json_bytes = st.lists(
    st.sampled_from(
        [
            b"[",
            b"]",
            b"{",
            b"}",
            b'"',
            b"\\",
            b",",
            b":",
            b" ",
            b"\n",
            b"\r",
            b"1",
            b"a",
            b"\xef\xbb\xbf",
            b"\xff",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(
    data=json_bytes | st.binary(max_size=64) | st.binary(max_size=64).map(lambda b: b"[" + b),
    block_size=st.integers(1, 16),
)
@example(data=b'["\\\\"]', block_size=1)
@example(data=b'[{"a":"]"}]', block_size=2)
def test_any_bytes_give_elements_or_a_data_error_agreeing_with_orjson(data, block_size):
    assert_agrees_with_orjson(data, block_size)


@settings(max_examples=500, deadline=None)
@given(
    array=serialized_arrays(),
    block_size=st.integers(1, 32),
    where=st.integers(0, 10_000),
    byte=st.sampled_from(b'[]{}",:\\ \n1a\xef'),
    how=st.sampled_from(["insert", "replace", "delete"]),
)
def test_one_byte_off_a_valid_array_agrees_with_orjson(array, block_size, where, byte, how):
    data, _ = array
    i = where % len(data)
    new = bytes([byte])
    mutated = {"insert": data[:i] + new + data[i:], "replace": data[:i] + new + data[i + 1 :]}.get(
        how, data[:i] + data[i + 1 :]
    )
    assert_agrees_with_orjson(mutated, block_size)


def assert_agrees_with_orjson(data: bytes, block_size: int) -> None:
    """Only DataError is raised, and never for a valid array; accepted structure means
    the input is a valid array exactly when every element is valid JSON."""
    try:
        got = elements(data, block_size)
    except DataError as e:
        assert "\n" not in str(e)
        got = None
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    if isinstance(whole, list):  # a valid array: every element must come back
        assert got is not None and [orjson.loads(raw) for _, _, raw in got] == whole
    elif got is not None:  # we accepted the structure, so some element must be invalid
        assert any(not _parses(raw) for _, _, raw in got)


def _parses(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("data.json", b"[\n  {", True),
        ("data.json.gz", b"  \r\n\t[", True),
        ("data.json.zst", b"[]", True),
        ("DATA.JSON", b"[", True),
        ("data.json", b"\xef\xbb\xbf\n[", True),
        ("data.json", b'{"a": 1}\n{"a": 2}\n', False),
        ("data.json", b"", False),
        ("data.json", b"   ", False),
        ("data.jsonl", b"[1, 2]\n", False),
        ("data.txt", b"[", False),
        ("-", b"[", False),
        ("json", b"[", False),
    ],
)
def test_is_json_array(name, head, expected):
    assert is_json_array(name, head) is expected


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize(
    ("name", "count"),
    [("alpaca_en_demo.json", 999), ("identity.json", 91), ("glaive_toolcall_en_demo.json", 300)],
)
def test_real_files(name, count):
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    data = path.read_bytes()
    assert is_json_array(name, data[:4096])
    with InputStream(inspect_input(str(path))) as stream:
        got = list(JsonArraySource(stream, 64 * 1024))
    assert len(got) == count
    assert [orjson.loads(raw) for _, _, raw in got] == orjson.loads(data)
    for line, offset, raw in got:
        assert data[offset : offset + len(raw)] == raw
        assert line == data[:offset].count(b"\n") + 1
