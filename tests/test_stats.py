"""stats.py: counts, percentiles, histograms, duplicates and token lengths on real files."""

from __future__ import annotations

import gzip
import statistics
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokens import build_word_tokenizer, word_count

from shardkit.core.errors import InputError, UsageError
from shardkit.pipeline.stats import (
    _histogram,
    _measure,
    compute_stats,
    render_histogram,
    render_stats,
)
from shardkit.records.tokens import record_text, text_parts


def chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def write_jsonl(path: Path, lines: list[bytes | dict]) -> Path:
    path.write_bytes(b"".join((orjson.dumps(x) if isinstance(x, dict) else x) + b"\n" for x in lines))
    return path


def linear_percentile(values: list[int], p: int) -> float:
    """numpy's default: linear interpolation between closest ranks, computed directly."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    return statistics.quantiles(ordered, n=100, method="inclusive")[p - 1]


# ------------------------------------------------------------------ counts and lengths


def test_percentiles_match_a_direct_computation(tmp_path: Path) -> None:
    lengths = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5, 0, 2, 8, 8]
    lengths = [n * 37 for n in lengths]
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "x" * n} for n in lengths])

    chars = compute_stats([str(path)])["inputs"][0]["chars"]

    assert chars["count"] == len(lengths)
    assert chars["min"] == min(lengths) and chars["max"] == max(lengths)
    assert chars["mean"] == pytest.approx(statistics.mean(lengths), abs=0.005)
    assert chars["p50"] == pytest.approx(statistics.median(lengths))
    for p in (50, 95, 99):
        assert chars[f"p{p}"] == pytest.approx(linear_percentile(lengths, p), abs=0.005)


def test_counts_kinds_blank_and_invalid_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            b"",  # 1 blank
            chat(("user", "hi"), ("assistant", "hello")),  # 2
            {"prompt": "p", "completion": "c"},  # 3
            b'{"text": "broken',  # 4 invalid JSON
            b"   \t",  # 5 blank (whitespace only)
            {"instruction": "i", "input": "", "output": "o"},  # 6
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},  # 7
            b"[1, 2, 3]",  # 8 not an object
            {"text": "t"},  # 9
            {"something": "else"},  # 10 unknown kind
            b"\xef\xbb\xbf" + orjson.dumps({"text": "bom"}),  # 11 BOM: a record (validate flags it)
            b"NaN",  # 12 invalid
        ],
    )
    report = compute_stats([str(path)], examples=2)
    s = report["inputs"][0]

    assert s["path"] == str(path)
    assert s["records"] == 7
    assert s["blank_lines"] == 2
    assert s["bytes"] == s["file_bytes"] == path.stat().st_size
    assert s["kinds"] == {
        "chat": 1, "prompt-completion": 1, "alpaca": 1, "sharegpt": 1, "text": 2, "unknown": 1,
    }
    assert s["invalid"]["count"] == 3
    first = s["invalid"]["first"]
    assert [(e["file"], e["line"]) for e in first] == [(str(path), 4), (str(path), 8)]  # capped at 2
    assert first[0]["message"].startswith("invalid JSON at column")
    assert first[1]["message"] == "top-level value is an array, expected an object"
    assert sum(count for _, _, count in s["chars_histogram"]) == s["records"]
    assert report["total"]["files"] == 1
    assert report["tokenizer"] is None and "tokens" not in s


def test_messages_and_turns_per_record(tmp_path: Path) -> None:
    records = [
        chat(("system", "s"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")),
        chat(("system", "s"), ("assistant", "unprompted")),  # no exchange
        {"messages": [  # a tool call inside one exchange counts once
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]},
        {"conversations": [
            {"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"},
            {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"},
            {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
        ]},
        {"text": "no dialogue: left out of messages and turns"},
    ]
    path = write_jsonl(tmp_path / "dialogue.jsonl", records)

    s = compute_stats([str(path)])["inputs"][0]

    assert s["messages"] == {"count": 4, "min": 2, "mean": 4.25, "p50": 4.5, "max": 6}
    assert s["turns"] == {"count": 4, "min": 0, "mean": 1.25, "p50": 1.5, "max": 2}


def test_chars_are_the_length_of_the_record_text(tmp_path: Path) -> None:
    records = [
        chat(("user", "héllo 中文 😀"), ("assistant", "ok")),
        {"messages": [{"role": "user", "content": [{"type": "text", "value": "parts"}]}]},
        {"instruction": "do", "input": "", "output": "done"},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", records)
    s = compute_stats([str(path)])["inputs"][0]
    expected = [len(record_text(r, k)) for r, k in zip(records, ("chat", "chat", "alpaca"), strict=True)]
    assert (s["chars"]["min"], s["chars"]["max"]) == (min(expected), max(expected))
    assert s["chars"]["mean"] == pytest.approx(statistics.mean(expected), abs=0.005)


_text = st.text(max_size=8)
_content = st.one_of(
    st.none(),
    _text,
    st.integers(),
    st.lists(
        st.one_of(
            _text,
            st.fixed_dictionaries({}, optional={"type": st.just("text"), "text": _text, "value": _text}),
            st.integers(),
        ),
        max_size=3,
    ),
)
_message = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"role": st.sampled_from(["user", "assistant", "system", "tool", 7]), "content": _content}
    ),
    st.none(),
    _text,
)


@settings(max_examples=300, deadline=None)
@given(messages=st.one_of(st.lists(_message, max_size=6), _text, st.none()))
def test_stats_chat_fast_path_agrees_with_tokens_text_parts(messages) -> None:
    record = {"messages": messages}
    parts, _, _ = _measure(record, "chat")
    assert parts == text_parts(record, "chat")


def test_empty_input(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\n")
    s = compute_stats([str(path)])["inputs"][0]
    assert s["records"] == 0 and s["blank_lines"] == 2
    assert s["chars"] is None and s["messages"] is None and s["chars_histogram"] == []
    assert s["duplicates"] == {"records": 0, "distinct": 0, "groups": 0, "first": []}
    assert render_stats(compute_stats([str(path)]))[0].startswith(f"{path}: 0 records")


# ------------------------------------------------------------------ duplicates


def test_duplicates_ignore_key_order_and_whitespace(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'  # 1
        b'{"text": "unique"}\n'  # 2
        b"\n"  # 3 blank: line numbers still count it
        b'{"messages":[{"content":"hi","role":"user"},{"content":"yo","role":"assistant"}]}\n'  # 4 = 1
        b'{ "text" : "unique" }\r\n'  # 5 = 2
        b'{"messages": [{"role": "assistant", "content": "yo"}, {"role": "user", "content": "hi"}]}\n'  # 6: order of messages differs: not a duplicate
        b'{"text":"unique"}\n'  # 7 = 2 again
    )
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "only in b"}, {"text": "unique"}])

    report = compute_stats([str(a), str(b)], examples=5)
    dup_a = report["inputs"][0]["duplicates"]
    pairs = [(d["file"], d["line"], d["duplicates_file"], d["duplicates_line"]) for d in dup_a["first"]]

    assert (dup_a["records"], dup_a["distinct"], dup_a["groups"]) == (3, 3, 2)
    assert pairs == [(str(a), 4, str(a), 1), (str(a), 5, str(a), 2), (str(a), 7, str(a), 2)]
    assert report["inputs"][1]["duplicates"]["records"] == 0  # per input: within the input
    total = report["total"]["duplicates"]
    assert (total["records"], total["groups"]) == (4, 2)  # across inputs
    assert total["first"][-1] == {
        "file": str(b), "line": 2, "duplicates_file": str(a), "duplicates_line": 2,
    }
    lines = render_stats(report)
    assert f"    {a}:4 duplicates {a}:1" in lines
    assert f"    {b}:2 duplicates {a}:2" in lines


def test_examples_caps_the_duplicate_pairs_listed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "same"}] * 10)
    dup = compute_stats([str(path)], examples=3)["inputs"][0]["duplicates"]
    assert dup["records"] == 9 and dup["groups"] == 1
    assert [(d["line"], d["duplicates_line"]) for d in dup["first"]] == [(2, 1), (3, 1), (4, 1)]
    assert compute_stats([str(path)], examples=0)["inputs"][0]["duplicates"]["first"] == []


# ------------------------------------------------------------------ inputs


def test_gzip_input_gives_the_same_report(tmp_path: Path) -> None:
    plain = FIXTURES / "chat_small.jsonl"
    gz = tmp_path / "chat_small.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))

    a = compute_stats([str(plain)])["inputs"][0]
    b = compute_stats([str(gz)])["inputs"][0]

    assert b["file_bytes"] == gz.stat().st_size and b["bytes"] == plain.stat().st_size
    strip = {"path", "file_bytes", "duplicates"}
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}
    assert a["records"] == 20
    assert any("on disk" in line for line in render_stats(compute_stats([str(gz)])))


@pytest.mark.parametrize(
    ("name", "records", "blank"),
    [("crlf.jsonl", 5, 0), ("no_final_newline.jsonl", 4, 0), ("blank_lines.jsonl", 6, None), ("unicode.jsonl", 7, 0)],
)
def test_fixtures(name: str, records: int, blank: int | None) -> None:
    path = FIXTURES / name
    s = compute_stats([str(path)])["inputs"][0]
    assert s["records"] == records and s["invalid"]["count"] == 0
    if blank is not None:
        assert s["blank_lines"] == blank
    else:
        data = path.read_bytes()
        lines = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
        assert s["blank_lines"] == sum(1 for line in lines if not line.strip())
    objs = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    lengths = [len(record_text(o, "chat")) for o in objs]
    assert (s["chars"]["min"], s["chars"]["max"]) == (min(lengths), max(lengths))


def test_stdin(tmp_path: Path) -> None:
    data = b'{"text": "a"}\n{"text": "a"}\n'
    code = "import orjson; from shardkit.pipeline.stats import compute_stats; print(orjson.dumps(compute_stats(['-'])).decode())"
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True)
    report = orjson.loads(out.stdout)
    assert report["inputs"][0]["path"] == "<stdin>"
    assert report["total"]["records"] == 2 and report["total"]["duplicates"]["records"] == 1


def test_missing_input_fails_before_reading_anything(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a"}])
    with pytest.raises(InputError, match=r"missing.jsonl: no such file"):
        compute_stats([str(good), str(tmp_path / "missing.jsonl")])


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": "a"}])
    with pytest.raises(UsageError):
        compute_stats([])
    with pytest.raises(UsageError):
        compute_stats([str(good)], examples=-1)


def test_report_is_json_serialisable(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}, {"text": "bb"}])
    report = compute_stats([str(path)])
    assert orjson.loads(orjson.dumps(report))["total"]["records"] == 2


def test_importing_stats_does_not_import_polars_or_pyarrow() -> None:
    code = "import sys, shardkit.pipeline.stats; print(sorted(m for m in ('polars', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ tokens


def test_token_percentiles_and_limits_with_a_real_tokenizer(tmp_path: Path) -> None:
    tokenizer = build_word_tokenizer(tmp_path / "model" / "tokenizer.json")
    sizes = [1, 5, 10, 100, 2048, 2049, 3000, 4097, 9000, 7]
    records = [{"text": " ".join(["the cat"] * (n // 2) + ["mat"] * (n % 2))} for n in sizes]
    records.append({"text": "the cat, sat!"})  # punctuation runs are tokens too
    path = write_jsonl(tmp_path / "t.jsonl", records)
    counts = [word_count(r["text"]) for r in records]
    assert counts[:-1] == sizes

    report = compute_stats([str(path)], tokenizer_path=str(tokenizer.parent))
    tokens = report["inputs"][0]["tokens"]

    assert report["tokenizer"] == str(tokenizer.parent)
    assert report["token_limits"] == [2048, 4096, 8192]
    assert tokens["total"] == sum(counts)
    assert (tokens["min"], tokens["max"]) == (min(counts), max(counts))
    for p in (50, 95, 99):
        assert tokens[f"p{p}"] == pytest.approx(linear_percentile(counts, p), abs=0.005)
    assert tokens["over"] == {"2048": 4, "4096": 2, "8192": 1}
    assert sum(c for _, _, c in report["inputs"][0]["tokens_histogram"]) == len(records)
    lines = render_stats(report)
    assert any(line.startswith("  tokens/record: min 1") for line in lines)
    assert f"  tokens in all: {sum(counts):,}; records over 2,048: 4, 4,096: 2, 8,192: 1" in lines


def test_tokens_follow_record_order_across_batches_and_files(tmp_path: Path) -> None:
    tokenizer = build_word_tokenizer(tmp_path / "tokenizer.json")
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "w " * (i % 37 + 1)} for i in range(2500)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "w " * 500}])
    report = compute_stats([str(a), str(b)], tokenizer_path=str(tokenizer))
    assert report["inputs"][0]["tokens"]["max"] == 37
    assert report["inputs"][1]["tokens"] == {
        "count": 1, "min": 500, "mean": 500, "p50": 500, "p95": 500, "p99": 500, "max": 500,
        "total": 500, "over": {"2048": 0, "4096": 0, "8192": 0},
    }


def test_bad_tokenizer_path_fails_before_reading(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    with pytest.raises(InputError, match="no tokenizer.json in this folder"):
        compute_stats([str(path)], tokenizer_path=str(tmp_path))


# ------------------------------------------------------------------ histograms


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(min_value=0, max_value=200_000), min_size=1, max_size=300))
def test_histogram_bins_cover_every_value_once(values: list[int]) -> None:
    hist = _histogram(pl, pl.Series(values, dtype=pl.UInt64))
    assert sum(count for _, _, count in hist) == len(values)
    assert all(low < high for low, high, _ in hist)
    assert all(hist[i][1] == hist[i + 1][0] for i in range(len(hist) - 1))  # contiguous
    assert hist[0][0] <= min(values) and max(values) < hist[-1][1]
    for low, high, count in hist:
        assert count == sum(1 for v in values if low <= v < high)
    assert len(hist) <= 20


def test_histogram_uses_powers_of_two_for_a_wide_spread() -> None:
    hist = _histogram(pl, pl.Series([31, 100, 1170, 37499], dtype=pl.UInt64))
    assert [low for low, _, _ in hist] == [2**k for k in range(4, 16)]
    assert hist[0] == (16, 32, 1) and hist[-1] == (32768, 65536, 1)


def test_render_histogram() -> None:
    lines = render_histogram([(0, 10, 4), (10, 20, 0), (20, 30, 1), (30, 40, 8)], width=8)
    assert lines == [
        "  0–9 ████     4",
        "10–19          0",
        "20–29 █        1",
        "30–39 ████████ 8",
    ]
    assert render_histogram([(1, 2, 1000), (2, 3, 1)], width=10)[1] == "2 ▏              1"  # never hidden
    assert render_histogram([]) == []
