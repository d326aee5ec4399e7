"""The compiled chat gate (shardkit/records/chatgate.c) against Python's.

The C gate reads raw lines and never builds a record. It is sound only if every line it
passes is one Python's gate passes with the same result: these tests check that, line by
line, on generated records (the hypothesis strategies of test_validate), on a hostile
mutation corpus (escapes, surrogates, bad UTF-8, repeated keys, odd numbers, deep
nesting, placeholders spelled with escapes) and on users-shaped files; and that whole
runs (the CLI's report and rejects) are the same with and without it.
"""

from __future__ import annotations

import json
import os
import random
import sys
from functools import partial
from pathlib import Path

import orjson
import pytest
from conftest import FIXTURES, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validate import near_valid_records, records

import shardkit.records.validate as validate_mod
from shardkit.records.check import Checker, CheckOptions, _shape_code, zero_kind_of
from shardkit.records.validate import Validator, _fine_text

try:
    from shardkit.records import chatgate
except ImportError:
    if os.environ.get("CI"):  # CI has gcc: a gate that failed to build must not go untested
        raise
    pytest.skip("the C gate is not built (no compiler?): `pip install -e .` builds it", allow_module_level=True)

sys.path.insert(0, str(FIXTURES))
from generate import as_alpaca, as_sharegpt, iter_records  # noqa: E402


def python_decision(v: Validator, raw: bytes):
    """What check_lines' Python path does with one line: ("clean", kind), the shared
    result, or "slow"."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "slow"
    if type(obj) is not dict:
        return "slow"
    kind = v.gate(obj)
    if kind is not None:
        return ("clean", kind)
    shared = v.gate_extra(obj)
    return "slow" if shared is None else shared


def c_decision(v: Validator, raw: bytes):
    """The same from the compiled gate, through check_lines' own resolver."""
    shared: list = []
    zero_kind = zero_kind_of(v.kind)
    clean, lines, events = v.raw_scanner()(raw + b"\n", 1 << 30, partial(_shape_code, v, shared, zero_kind))
    assert lines == 1
    if clean:
        assert events == []
        return ("clean", zero_kind)
    [(index, start, end, code)] = events
    assert (index, start, end) == (0, 0, len(raw) + 1)
    if code == -1:
        return "slow"
    verdict = shared[code - 1]
    return ("clean", verdict) if type(verdict) is str else verdict


def assert_sound(v: Validator, raw: bytes) -> str:
    """The C gate passes `raw` only as Python's gate does; returns the C decision's name."""
    c = c_decision(v, raw)
    if c == "slow":
        return "slow"
    p = python_decision(v, raw)
    assert p is c or p == c, (raw[:300], c, p)
    return "clean" if type(c) is tuple else "shared"


KINDS = ("chat", "sharegpt", "alpaca", "prompt-completion", "text", "auto")


def serializations(obj) -> list[bytes]:
    """The ways exports write one record: orjson (raw UTF-8), json.dumps (\\u escapes,
    spaces after separators), and padded with whitespace and a CR."""
    out = [orjson.dumps(obj)]
    try:
        out.append(json.dumps(obj).encode())
        out.append(b" \t" + json.dumps(obj, ensure_ascii=False, indent=None, separators=(" , ", " : ")).encode("utf-8", "surrogatepass") + b" \r")
    except (TypeError, ValueError):
        pass
    return out


# ---------------------------------------------------------------- the pieces


def test_is_space_is_str_isspace_for_every_code_point():
    wrong = [cp for cp in range(0x110000) if chatgate.is_space(cp) != chr(cp).isspace()]
    assert wrong == []
    with pytest.raises(ValueError):
        chatgate.is_space(0x110000 + 0x20)


TEXTS = [
    "hi", "", " ", "  \t\n", "\u3000", "\u00a0", "\x85", "\u200b", "\x08", "\x00", "\x1c\x1d",
    "a{{b", "{ {", "{", "{}", '{"a": 1}', "{\\n", "<", "<image>", "x <image> y", "<imag>",
    "< image>", "<image", "<IMAGE>", "<<image>", "{{", "{\u007b", "é", "中文", "😀", "\u2028",
    "\u2029x", "\\", '"', "/", "\t x", "\ufeff", "a" * 5000, "{" * 3, "<" * 7, "{<image>}",
]


@pytest.mark.parametrize("text", TEXTS)
def test_fine_string_agrees_with_fine_text(text):
    tokens = {orjson.dumps(text), json.dumps(text).encode(), json.dumps(text, ensure_ascii=False).encode()}
    for token in tokens:
        if chatgate.fine_string(token):
            assert _fine_text(text), (token, text)
        elif "{" not in text and "<" not in text:  # the only places it may be stricter
            assert not _fine_text(text), (token, text)


def test_fine_string_is_strict_on_escaped_placeholders():
    """A placeholder spelled with \\u escapes is Python's to judge, never passed."""
    for token in (b'"\\u007b\\u007b"', b'"{\\u007b"', b'"\\u003cimage>"', b'"<\\u0069mage>"', b'"<imag\\u0065>"'):
        assert not chatgate.fine_string(token)
    assert chatgate.fine_string(b'"{\\"a\\": 1}"')  # '{' then \" is fine: common in code
    assert chatgate.fine_string(b'"<\\n"')


# ---------------------------------------------------------------- generated records


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records | near_valid_records(), st.sampled_from(KINDS))
def test_c_gate_passes_only_what_python_passes(obj, kind):
    v = Validator(kind)
    for raw in serializations(obj):
        assert_sound(v, raw)


def _chat(**top):
    return {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], **top}


# A hostile corpus: records one edit away from clean, each a trap for a byte-level gate.
HOSTILE_OBJECTS = [
    _chat(),
    _chat(meta={"a": [1, 2.5, -0.0, None, True, False, {"b": "c"}]}),
    _chat(id="x", metadata={"k": 1}, parallel_tool_calls=True),
    _chat(tools=[]), _chat(functions=[]), _chat(images=["a.png"]),
    _chat(chosen="x"), _chat(rejected="x"), _chat(conversations=[]), _chat(prompt="p"),
    {"messages": []}, {"messages": {}}, {"messages": None}, {"messages": "hi"},
    {"messages": [{"role": "user", "content": "only a question"}]},
    {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "t"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "User", "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": 5, "content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q", "name": "n"}, {"role": "assistant", "content": "a", "weight": 1}]},
    {"messages": [{"role": "user", "content": "q", "name": 3}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "1"}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": 0.5}]},
    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "extra": 1}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": []}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"type": "image"}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"text": "q"}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": " "}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "q", "x": 1}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": [{"text": "q", "type": "text"}, {"type": "text", "text": "<image>"}]}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},
    {"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]},
    *({"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "a"}], "meta": 1} for t in TEXTS),
    *({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]} for t in TEXTS),
]

def _sg(**top):
    return {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}], **top}


HOSTILE_OBJECTS += [
    _sg(), _sg(id="x"), _sg(system="s"), _sg(system=" "), _sg(system=""), _sg(system="{{x}}"), _sg(system="<image>"),
    _sg(system=5), _sg(system=None), _sg(tools="[]"), _sg(tools=[]), _sg(tools={}), _sg(tools=1), _sg(images=["a"]),
    _sg(meta={}), _sg(messages=[]), _sg(chosen="x"), _sg(system="s", tools="[]", id=3),
    {"conversations": []}, {"conversations": {}}, {"conversations": "x"},
    {"conversations": [{"from": "human", "value": "only a question"}]},
    {"conversations": [{"from": "gpt", "value": "only an answer"}]},
    {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}, {"from": "observation", "value": "r"}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "weight": 1}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
    {"conversations": [{"value": "q"}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": ["q"]}, {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": "q"}, {"from": "GPT", "value": "a"}]},
    *({"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": "a"}]} for t in TEXTS),
    *({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": t}], "system": t} for t in TEXTS),
]

def _alpaca(**top):
    return {"instruction": "Sum 2 and 2.", "input": "", "output": "4", **top}


HOSTILE_OBJECTS += [
    _alpaca(), _alpaca(meta={"lang": "en", "n": [1, 2.5]}), _alpaca(id=3), _alpaca(system="s"), _alpaca(history=[]),
    _alpaca(input=" "), _alpaca(input="{{x}}"), _alpaca(input=None), _alpaca(input=5), _alpaca(input=["a"]),
    _alpaca(prompt="p"), _alpaca(text="t"), _alpaca(messages=[]), _alpaca(chosen="c"),
    {"instruction": "x", "output": "y"}, {"output": "y", "instruction": "x", "source": "web"},
    {"instruction": "x"}, {"output": "y"}, {"output": "y", "input": "z"}, {"instruction": 1, "output": "y"},
    {"instruction": "x", "output": ["y"]}, {"instruction": "x", "output": None},
    *({"instruction": t, "output": "y"} for t in TEXTS),
    *({"instruction": "x", "output": t, "meta": 1} for t in TEXTS),
    *({"instruction": "x", "input": t, "output": "y"} for t in TEXTS),
    {"prompt": "2+2=", "completion": "4"}, {"prompt": "2+2=", "completion": "4", "meta": {"a": 1}},
    {"prompt": "q", "completion": "a", "id": 1}, {"prompt": "q", "completion": "a", "metadata": {}},
    {"prompt": "q"}, {"completion": "a"}, {"prompt": "q", "completion": "a", "label": True},
    {"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": [{"role": "user", "content": "q"}], "completion": "a"},
    {"prompt": "q", "completion": 4}, {"prompt": None, "completion": "a"},
    *({"prompt": t, "completion": "a"} for t in TEXTS),
    *({"prompt": "q", "completion": t, "source": "x"} for t in TEXTS),
    {"text": "words"}, {"text": "words", "meta": {"url": "u"}, "url": "u", "source": 3, "title": None, "timestamp": 1},
    {"text": "words", "lang": "en"}, {"text": "words", "messages": "x"}, {"text": 3}, {"text": None}, {"text": ["a"]},
    {"text": "w", "instruction": "i"}, {"text": "w", "prompt": "p"},
    *({"text": t} for t in TEXTS),
    *({"text": t, "meta": None} for t in TEXTS),
]

SPLICES = [
    b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b" ", b"\t", b"\r", b"\x00", b"\x1f", b"\x7f",
    b"\xff", b"\xc0\x80", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x80\xa8", b"\xe3\x80\x80",
    b"\\u007b", b"\\u003c", b"\\ud83d", b"\\ude00", b"\\ud83d\\ude00", b"\\u0000", b"\\u3000", b"\\uZZZZ",
    b"\\x", b"\\'", b"1e5", b"1E400", b"-0", b"01", b"1.", b".5", b"NaN", b"Infinity", b"true", b"nul",
    b"12345678901234567890123", b"{{", b"<image>", b"<imag\\u0065>", b"\xef\xbb\xbf",
]


def mutations(raw: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        op = rng.randrange(6)
        at = rng.randrange(len(raw) + 1)
        if op == 0:  # insert a trap
            out.append(raw[:at] + rng.choice(SPLICES) + raw[at:])
        elif op == 1:  # replace a byte with a trap
            out.append(raw[:at] + rng.choice(SPLICES) + raw[at + 1 :])
        elif op == 2:  # cut
            out.append(raw[:at])
        elif op == 3:  # delete a byte
            out.append(raw[:at] + raw[at + 1 :])
        elif op == 4:  # a repeated key, before or after the real one
            key = rng.choice([b'"role":', b'"content":', b'"messages":', b'"type":', b'"text":', b'"instruction":', b'"input":', b'"output":', b'"prompt":', b'"completion":'])
            value = rng.choice([b'"assistant",', b'"user",', b'"x",', b"[],", b"1,", b'[{"type":"text","text":"t"}],'])
            out.append(raw.replace(key, key[:-1] + b":" + value + key, 1) if rng.random() < 0.5 else raw.replace(key, key + value[:-1] + b"," + key, 1))
        else:  # a key spelled with an escape
            out.append(raw.replace(rng.choice([b'"messages"', b'"role"', b'"content"', b'"user"', b'"assistant"', b'"output"', b'"text"', b'"prompt"']), rng.choice([b'"m\\u0065ssages"', b'"r\\u006fle"', b'"content\\u0000"', b'"us\\u0065r"', b'"assistan\\u0074"', b'"outp\\u0075t"', b'"t\\u0065xt"', b'"promp\\u0074"']), 1))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_c_gate_is_sound_on_a_hostile_corpus(kind):
    v = Validator(kind)
    rng = random.Random(19)
    decided = {"clean": 0, "shared": 0, "slow": 0}
    for obj in HOSTILE_OBJECTS:
        for raw in serializations(obj):
            for case in [raw, *mutations(raw, rng, 60)]:
                decided[assert_sound(v, case)] += 1
    assert decided["clean"] > 100 and decided["slow"] > 1000, decided
    assert decided["shared"] > 30, decided


@pytest.mark.parametrize("depth", [1, 62, 63, 64, 65, 2000])
def test_deep_nesting_beside_messages(depth):
    v = Validator("chat")
    raw = orjson.dumps(_chat())[:-1] + b',"meta":' + b"[" * depth + b"]" * depth + b"}"
    assert assert_sound(v, raw) == ("shared" if depth <= 63 else "slow")


@pytest.mark.parametrize("number", [b"0", b"-0", b"12", b"1.5", b"-3.25", b"123456789012345678", b"1234567890123456789", b"1e5", b"1E400", b"1e-400", b"0.0000000001", b"1" + b"0" * 400, b"0." + b"0" * 400 + b"1"])
def test_numbers_beside_messages(number):
    v = Validator("chat")
    raw = orjson.dumps(_chat())[:-1] + b',"meta":' + number + b"}"
    assert_sound(v, raw)
    raw = b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a","weight":' + number + b"}]}"
    assert_sound(v, raw)


# ---------------------------------------------------------------- users-shaped files


def users_lines(records: int, seed: int) -> list[bytes]:
    return [orjson.dumps(r) for r in iter_records(records, seed, mean_bytes=1500, max_bytes=8000, users=True)]


def sharegpt_lines(records: int, seed: int) -> list[bytes]:
    """The same records as LLaMA-Factory's ShareGPT (the 1% bad keep their unknown role)."""
    return [orjson.dumps(as_sharegpt(r)) for r in iter_records(records, seed, mean_bytes=1500, max_bytes=8000, users=True)]


def alpaca_lines(records: int, seed: int) -> list[bytes]:
    """The same records as alpaca, `meta` kept (1% bad: no output)."""
    return [orjson.dumps(as_alpaca(r)) for r in iter_records(records, seed, mean_bytes=1500, max_bytes=8000, users=True)]


def prompt_completion_lines(records: int, seed: int) -> list[bytes]:
    out = []
    for line in alpaca_lines(records, seed):
        r = orjson.loads(line)
        out.append(orjson.dumps({"prompt": r.pop("instruction"), "completion": r.pop("output", None), **r}))
    return out


def text_lines(records: int, seed: int) -> list[bytes]:
    """Pretraining-style: `text` beside `meta` (a key text records know) and `lang` (one they do not)."""
    out = []
    for line in alpaca_lines(records, seed):
        r = orjson.loads(line)
        out.append(orjson.dumps({"text": r["instruction"] + "\n" + r.get("output", ""), "meta": r["meta"], "lang": r["meta"]["lang"]}))
    return out


@pytest.mark.parametrize(
    ("kind", "shape"),
    [("chat", users_lines), ("auto", users_lines), ("sharegpt", sharegpt_lines), ("auto", sharegpt_lines),
     ("alpaca", alpaca_lines), ("auto", alpaca_lines), ("prompt-completion", prompt_completion_lines),
     ("auto", prompt_completion_lines), ("text", text_lines), ("auto", text_lines)],
)
def test_users_data_stays_off_the_python_path(kind, shape):
    """Soundness alone would hold for a gate that passes nothing: on users-shaped records
    (non-ASCII text, code with escaped quotes, 1% bad; chat ones with a `meta` object on
    each) the C gate must decide nearly all of those of its kind itself."""
    v = Validator(kind)
    decided = {"clean": 0, "shared": 0, "slow": 0}
    for raw in shape(3000, 5):
        decided[assert_sound(v, raw)] += 1
    assert decided["slow"] < 0.02 * 3000, decided


def test_check_lines_same_verdict_with_and_without_the_c_gate(monkeypatch):
    rng = random.Random(7)
    lines = users_lines(1500, 6) + sharegpt_lines(500, 7) + alpaca_lines(300, 8) + prompt_completion_lines(300, 9) + text_lines(300, 10)
    lines += [m for raw in lines[:40] + lines[-20:] for m in mutations(raw, rng, 5)]
    lines += [b"", b"   ", b"\r", orjson.dumps(_chat(chosen="x")), orjson.dumps(_chat(tools=[]))]
    rng.shuffle(lines)
    data = b"".join(line.replace(b"\n", b"") + b"\n" for line in lines) + b'{"partial'
    for kind in KINDS:
        options = CheckOptions(kind=kind, examples=3)
        fast = Checker(options).check_lines(data, 10, "f.jsonl")
        with monkeypatch.context() as m:
            m.setattr(validate_mod, "chatgate", None)
            assert Checker(options).validator.raw_scanner() is None
            slow = Checker(options).check_lines(data, 10, "f.jsonl")
        assert fast.lines == slow.lines == len(lines)
        assert fast.bad == slow.bad
        assert fast.report.to_dict() == slow.report.to_dict()
        assert fast.report.lines() == slow.report.lines()


def test_cli_same_report_and_rejects_in_pure_python(tmp_path: Path):
    """The whole command, compiled gate against SHARDKIT_PURE_PYTHON=1, one and two jobs."""
    path = tmp_path / "users.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in users_lines(2500, 8)))
    outs = {}
    for pure in ("", "1"):
        for jobs in ("1", "2"):
            rejects = tmp_path / f"rejects-{pure}-{jobs}.jsonl"
            r = run_cli("validate", path, "--json", "-j", jobs, "--rejects", rejects, env={"SHARDKIT_PURE_PYTHON": pure})
            assert r.returncode == 1, r.stderr  # the 1% bad records
            report = orjson.loads(r.stdout)
            report.pop("rejects")
            outs[pure, jobs] = (report, rejects.read_bytes())
    first = outs["", "1"]
    assert first[0]["records"]["invalid"] > 0 and first[1]
    assert all(out == first for out in outs.values())


def test_auto_does_not_take_a_preference_record_for_chat():
    """messages beside chosen: --kind auto detects a preference record (the explainer's
    verdict), on every path; the shared extra-keys result must not call it clean chat."""
    raw = orjson.dumps(_chat(chosen="x"))
    result = Validator("auto").check(raw)
    assert result.kind == "preference" and not result.ok
    assert Validator("chat").check(raw).ok  # --kind chat: checked as chat, chosen unknown


# ---------------------------------------------------------------- memory safety

GUARDED = r'''
import ctypes, mmap, random, sys
sys.path.insert(0, sys.argv[1])
from test_chatgate import HOSTILE_OBJECTS, mutations, serializations
from shardkit.records import chatgate

libc = ctypes.CDLL(None, use_errno=True)
PAGE = mmap.PAGESIZE
# a readable region, then a page no one may touch: a line ending right before it makes any
# read past the end of the buffer a SIGSEGV (a Python bytes object would hide a 1-byte one)
size = 64 * PAGE
region = mmap.mmap(-1, size + PAGE)
anchor = ctypes.c_char.from_buffer(region)
assert libc.mprotect(ctypes.c_void_p(ctypes.addressof(anchor) + size), PAGE, 0) == 0
view = memoryview(region)
rng = random.Random(5)
n = 0
for obj in HOSTILE_OBJECTS:
    for raw in serializations(obj):
        for case in [raw, *mutations(raw, rng, 30)]:
            for data in (case, case + b"\n"):
                if len(data) > size:
                    continue
                start = size - len(data)
                view[start:size] = data
                chatgate.scan(view[start:size], 1 << 30, lambda keys: 1, 3)
                chatgate.fine_string(view[start:size])
                n += 1
# every prefix of lines dense in escapes, UTF-8, placeholders and numbers: a cut at each byte
Q = b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":'
tricky = [  # each trap behind a clean first message, so the scan reaches it at every cut
    Q + b'"x{y {\\"a\\" <b <ima \\u3000\\ud83d\\ude00 \xe4\xbd\xa0\xf0\x9f\xa4\x96 {"}]}',
    Q + b'"<imag\\u0065> {\\u007b"}]}',
    Q + b'[{"type":"text","text":"\xc3\xa9 {x <i"}],"weight":-12.5,"name":"n","loss_weight":0}]}',
    Q + b'"a"}],"meta":{"a":[true,false,null,-0.25,123456789012345678901,"\\u00e9\\n"]},"id":"x"}',
]
for line in tricky:
    for cut in range(len(line) + 1):
        for data in (line[:cut], line[:cut] + b"\n"):
            start = size - len(data)
            view[start:size] = data
            chatgate.scan(view[start:size], 1 << 30, lambda keys: 1, 3)
            n += 1
# scan_chat reads only whole lines, whose newline stops every look-ahead; the string
# scanner itself must stop at the end of its buffer: every prefix of tricky tokens
tokens = [
    b'"x{y {\\"a\\" <b <ima \\u3000\\ud83d\\ude00 \xe4\xbd\xa0\xf0\x9f\xa4\x96 {"',
    b'"<imag\\u0065> {\\u007b <\\n {\\n \\/\\b\\f\\r\\t\\\\ \\uD83D\\uDE00 \xc3\xa9\xe2\x80\xa8"',
]
for token in tokens:
    for cut in range(len(token) + 1):
        view[size - cut:size] = token[:cut]
        chatgate.fine_string(view[size - cut:size])
        n += 1
print(n)
'''


def test_c_gate_never_reads_past_the_buffer(tmp_path: Path):
    """Every hostile case placed to end exactly at a PROT_NONE page: an over-read of even
    one byte kills the child with SIGSEGV. (`make fuzz-c` runs an ASan+UBSan build on 600k
    more cases.)"""
    import subprocess

    r = subprocess.run([sys.executable, "-c", GUARDED, str(Path(__file__).parent)], capture_output=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr.decode()[-2000:])
    assert int(r.stdout) > 10_000


def test_scan_lets_other_threads_run():
    """scan releases the GIL while it reads lines (so split --validate checks blocks on
    threads): a Python thread counting during one scan of ~16 MB gets turns. With a switch
    interval far longer than the scan, a scan holding the GIL would give it none."""
    import threading

    line = orjson.dumps({"messages": [{"role": "user", "content": "q " * 200},
                                      {"role": "assistant", "content": "a " * 300}]}) + b"\n"
    data = line * ((16 << 20) // len(line))
    count, stop, started = [0], threading.Event(), threading.Event()

    def spin():
        started.set()
        while not stop.is_set():
            count[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    t = threading.Thread(target=spin)
    try:
        t.start()
        started.wait()
        before = count[0]
        clean, lines, events = chatgate.scan(data, 1 << 20, lambda keys: 0, chatgate.CHAT)
        during = count[0] - before
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert (clean, lines, events) == (lines, data.count(b"\n"), [])
    assert during > 1000, during


def test_scan_passes_on_what_resolve_raises_and_keeps_the_events_in_order():
    good = orjson.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    extra = orjson.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "m": 1})
    data = b"\n".join([good, b"{bad", extra, good, b"[]", extra]) + b"\n"

    def resolve(keys):
        return 7 if "m" in keys else 0

    clean, lines, events = chatgate.scan(data, 1 << 20, resolve, chatgate.CHAT)
    starts = [0]
    for raw in data.splitlines(keepends=True):
        starts.append(starts[-1] + len(raw))
    assert (clean, lines) == (2, 6)
    assert events == [(i, starts[i], starts[i + 1], code) for i, code in ((1, -1), (2, 7), (4, -1), (5, 7))]

    def boom(keys):
        raise KeyError("from resolve")

    with pytest.raises(KeyError, match="from resolve"):
        chatgate.scan(data, 1 << 20, boom, chatgate.CHAT)
