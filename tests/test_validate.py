"""Tests for shardkit.records.validate: decoding, record kinds, the report, hostile input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardkit.core.errors import UsageError
from shardkit.records.validate import (
    _EXPLAINERS,
    _GATES,
    CODES,
    DEFAULT_MAX_DEPTH,
    KINDS,
    Issue,
    RecordResult,
    Report,
    Validator,
    decode_line,
    detect_kind,
    format_issue,
)

REALDATA = Path("/work/shared/realdata")


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def chat(*messages: dict, **extra: object) -> dict:
    return {"messages": list(messages), **extra}


def user(content: object = "Hi", **extra: object) -> dict:
    return {"role": "user", "content": content, **extra}


def assistant(content: object = "Hello!", **extra: object) -> dict:
    return {"role": "assistant", "content": content, **extra}


def issues_of(kind: str, obj: object) -> list[tuple[str, str, str, str]]:
    result = Validator(kind).check(dumps(obj))
    return [(i.code, i.severity, i.path, i.message) for i in result.issues]


def only_issue(kind: str, obj: object) -> tuple[str, str, str, str]:
    found = issues_of(kind, obj)
    assert len(found) == 1, found
    return found[0]


def orjson_reason(raw: bytes) -> str:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return exc.msg
    raise AssertionError("expected orjson to fail")


# --------------------------------------------------------------------------- Issue, format


def test_format_issue_matches_the_documented_line():
    issue = Issue(
        "unknown_role",
        "error",
        "messages[2].role",
        "unknown role 'bot' (expected system, user, assistant, tool; did you mean 'assistant'?)",
    )
    assert format_issue("inbox/a.jsonl", 1234, issue) == (
        "inbox/a.jsonl:1234: messages[2].role: unknown role 'bot' "
        "(expected system, user, assistant, tool; did you mean 'assistant'?)"
    )


def test_format_issue_without_path_and_for_warnings():
    assert format_issue("a.jsonl", 3, Issue("bom", "error", "", "m")) == "a.jsonl:3: m"
    warning = Issue("placeholder", "warning", "output", "unfilled template placeholder '{{x}}'")
    assert format_issue(Path("d/a.jsonl"), 7, warning) == (
        "d/a.jsonl:7: output: warning: unfilled template placeholder '{{x}}'"
    )


def test_issue_is_frozen():
    issue = Issue("bom", "error", "", "m")
    with pytest.raises(AttributeError):
        issue.code = "other"  # type: ignore[misc]


def test_every_code_has_a_severity():
    assert set(CODES.values()) == {"error", "warning"}


# --------------------------------------------------------------------------- decode_line


def test_decode_line_valid_object():
    assert decode_line(b'{"text": "a"}') == ({"text": "a"}, None)


def test_decode_line_strips_crlf():
    assert decode_line(b'{"text": "a"}\r') == ({"text": "a"}, None)
    assert Validator("text").check(b'{"text": "a"}\r').ok


def test_line_too_long_is_not_decoded():
    obj, issue = decode_line(b'{"text": "abc"}', max_line_bytes=10)
    assert obj is None
    assert issue == Issue(
        "line_too_long", "error", "", "line is 15 bytes, over the limit of 10 bytes (not decoded)"
    )


def test_line_too_long_uses_thousands_separators():
    _, issue = decode_line(b"x" * 2_000_001, max_line_bytes=1_000_000)
    assert issue.message == (
        "line is 2,000,001 bytes, over the limit of 1,000,000 bytes (not decoded)"
    )


def test_bom_is_an_error_but_the_rest_is_still_decoded():
    obj, issue = decode_line(b'\xef\xbb\xbf{"text": "a"}')
    assert obj == {"text": "a"}
    assert issue == Issue(
        "bom",
        "error",
        "",
        "line starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM",
    )
    result = Validator("auto").check(b'\xef\xbb\xbf{"text": "a"}')
    assert result.kind == "text"
    assert not result.ok
    assert [i.code for i in result.issues] == ["bom"]


def test_bom_followed_by_bad_json_reports_the_json_error_in_line_columns():
    obj, issue = decode_line(b'\xef\xbb\xbf{"a": 1')
    assert obj is None
    assert issue.code == "invalid_json"
    # '{"a": 1' ends at character 7; the BOM is one more character.
    reason = orjson_reason(b'{"a": 1')
    assert issue.message == f"invalid JSON at column 9: {reason}"


def test_bom_followed_by_invalid_utf8_counts_bom_bytes():
    _, issue = decode_line(b'\xef\xbb\xbf{"a": "\xff"}')
    assert issue == Issue(
        "invalid_utf8",
        "error",
        "",
        "invalid UTF-8 at byte column 11 (byte 0xff: invalid start byte)",
    )


def test_invalid_utf8_gives_the_byte_column():
    _, issue = decode_line(b'{"text": "caf\xe9"}')
    assert issue == Issue(
        "invalid_utf8",
        "error",
        "",
        "invalid UTF-8 at byte column 14 (byte 0xe9: invalid continuation byte)",
    )


def test_truncated_utf8_sequence():
    _, issue = decode_line(b'{"text": "\xe2\x82')
    assert issue.code == "invalid_utf8"
    assert issue.message == "invalid UTF-8 at byte column 11 (byte 0xe2: unexpected end of data)"


def test_utf16_gets_a_hint():
    _, issue = decode_line('{"text": "a"}'.encode("utf-16"))
    assert issue.code == "invalid_utf8"
    assert issue.message == (
        "invalid UTF-8 at byte column 1 (byte 0xff: invalid start byte); the line looks UTF-16 encoded"
    )


def test_invalid_json_gives_a_one_based_character_column():
    raw = '{"é😀": x}'.encode()
    _, issue = decode_line(raw)
    # x is the 8th character (the emoji is one character, four bytes).
    assert issue == Issue(
        "invalid_json", "error", "", f"invalid JSON at column 8: {orjson_reason(raw)}"
    )


@pytest.mark.parametrize(
    ("raw", "column"),
    [(b'{"a":1', 7), (b'{"a":1}x', 8), (b'{"a" 1}', 6), (b"{'a': 1}", 2), (b"nul", 4)],
)
def test_invalid_json_columns(raw, column):
    _, issue = decode_line(raw)
    assert issue.code == "invalid_json"
    assert issue.path == ""
    assert issue.message == f"invalid JSON at column {column}: {orjson_reason(raw)}"


def test_invalid_json_with_nul_bytes_gets_a_hint():
    raw = b'{"a": \x00}'
    _, issue = decode_line(raw)
    assert issue.message == (
        f"invalid JSON at column 7: {orjson_reason(raw)}"
        " (the line contains NUL bytes: binary or UTF-16 data?)"
    )


@pytest.mark.parametrize("raw", [b"", b"   ", b"\r", b" \t "])
def test_blank_input_is_invalid_json(raw):
    assert decode_line(raw) == (
        None,
        Issue("invalid_json", "error", "", "line is blank (expected a JSON object)"),
    )


@pytest.mark.parametrize(
    ("raw", "literal", "column", "path"),
    [
        (b'{"a": NaN}', "NaN", 7, "a"),
        (b'{"a": Infinity}', "Infinity", 7, "a"),
        (b'{"a": -Infinity}', "-Infinity", 7, "a"),
        (b'{"a": +Infinity}', "+Infinity", 7, "a"),
        (b'{"a": -NaN}', "-NaN", 7, "a"),
        (
            b'{"messages": [{"role": "assistant", "content": "x", "weight": NaN}]}',
            "NaN",
            63,
            "messages[0].weight",
        ),
        (b'{"a": [1, NaN, NaN, Infinity]}', "NaN", 11, "a[1]"),
        (b'{"odd key": {"b": Infinity}}', "Infinity", 19, '["odd key"].b'),
        (b"[NaN]", "NaN", 2, "[0]"),
    ],
)
def test_nan_and_infinity_are_reported_with_their_path(raw, literal, column, path):
    obj, issue = decode_line(raw)
    assert obj is None
    assert issue == Issue(
        "nan_infinity",
        "error",
        path,
        f"{literal} is not valid JSON at column {column}; use null or a string",
    )


def test_nan_in_a_line_with_other_errors_has_no_path():
    _, issue = decode_line(b'{"a": NaN, "b": x}')
    assert issue == Issue(
        "nan_infinity", "error", "", "NaN is not valid JSON at column 7; use null or a string"
    )


def test_nan_inside_a_string_is_fine():
    assert decode_line(b'{"text": "NaN and Infinity"}') == ({"text": "NaN and Infinity"}, None)


def test_number_overflowing_a_double():
    _, issue = decode_line(b'{"text": "a", "n": [1, -1e999]}')
    assert issue == Issue(
        "nan_infinity",
        "error",
        "n[1]",
        "number '-1e999' at column 24 overflows a double (it would become Infinity)",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000,
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 1025 + b"]" * 1025,
    ],
)
def test_too_deep(raw):
    assert decode_line(raw) == (
        None,
        Issue("too_deep", "error", "", "nesting deeper than 1024 levels"),
    )


def test_default_depth_limit_is_orjsons():
    assert DEFAULT_MAX_DEPTH == 1024
    obj, issue = decode_line(b'{"a":' * 1023 + b"[1]" + b"}" * 1023)
    assert issue is None and obj is not None


def test_a_lower_depth_limit():
    deep = {"text": "a", "meta": {"b": {"c": [1]}}}  # four levels
    assert decode_line(dumps(deep), max_depth=4) == (deep, None)
    assert decode_line(dumps(deep), max_depth=3) == (
        None,
        Issue("too_deep", "error", "", "nesting deeper than 3 levels"),
    )
    result = Validator("text", max_depth=3).check(dumps(deep))
    assert [i.code for i in result.issues] == ["too_deep"]
    assert Validator("text", max_depth=4).check(dumps(deep)).ok


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"42", "a number"),
        (b"4.2", "a number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_not_object(raw, what):
    assert decode_line(raw) == (
        None,
        Issue("not_object", "error", "", f"top-level value is {what}, expected an object"),
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"max_depth": 0}, {"max_depth": 1025}, {"max_line_bytes": 0}, {"max_depth": "9"}],
)
def test_bad_limits_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        decode_line(b"{}", **kwargs)
    with pytest.raises(UsageError):
        Validator("auto", **kwargs)


def test_duplicate_keys_are_an_opt_in_warning():
    raw = b'{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}'
    assert Validator("chat").check(raw).issues == ()
    result = Validator("chat", check_duplicate_keys=True).check(raw)
    assert result.ok
    assert result.issues == (
        Issue(
            "duplicate_key",
            "warning",
            "messages[0].content",
            "duplicate key 'content'; the last value wins",
        ),
    )
    assert result.obj["messages"][0]["content"] == "b"


def test_duplicate_key_check_on_clean_and_broken_lines():
    v = Validator("text", check_duplicate_keys=True)
    assert v.check(b'{"text": "a"}').issues == ()
    assert v.check(b'{"text": "a", "text": "b"}').issues[0].path == "text"
    assert v.check(b'{"text": NaN}').issues[0].code == "nan_infinity"


# --------------------------------------------------------------------------- detect_kind


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"messages": []}, "chat"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "a", "output": "b"}, "alpaca"),
        ({"instruction": "a"}, "alpaca"),
        ({"input": "a", "output": "b"}, "alpaca"),
        ({"prompt": "a", "completion": "b"}, "prompt-completion"),
        ({"prompt": "a"}, "prompt-completion"),
        ({"text": "a"}, "text"),
        ({"messages": [], "text": "a"}, "chat"),
        ({"foo": 1}, None),
        ({}, None),
        ([], None),
        ("messages", None),
        (None, None),
    ],
)
def test_detect_kind(obj, kind):
    assert detect_kind(obj) == kind


def test_unknown_kind_names_the_keys():
    assert only_issue("auto", {"question": "a", "answer": "b"}) == (
        "unknown_kind",
        "error",
        "",
        "unknown record kind: keys 'question', 'answer' match none of chat (messages), "
        "sharegpt (conversations), alpaca (instruction, output), "
        "prompt-completion (prompt, completion), text (text), "
        "preference (prompt, chosen, rejected), kto (prompt, completion, label)",
    )


def test_unknown_kind_suggests_a_close_key():
    code, _, _, message = only_issue("auto", {"mesages": []})
    assert code == "unknown_kind"
    assert message.endswith("; did you mean 'messages'?")


def test_unknown_kind_for_an_empty_object():
    assert only_issue("auto", {}) == (
        "unknown_kind",
        "error",
        "",
        "unknown record kind: the object has no keys",
    )


def test_unknown_kind_clips_many_keys():
    obj = {f"k{i}": i for i in range(20)}
    message = only_issue("auto", obj)[3]
    assert "'k7', ..." in message and "'k8'" not in message


def test_fixed_kind_on_another_kind_says_what_it_looks_like():
    assert only_issue("chat", {"instruction": "a", "output": "b"}) == (
        "missing_key",
        "error",
        "messages",
        "missing required key 'messages' (the record looks like alpaca)",
    )
    assert only_issue("text", {"foo": "a"}) == (
        "missing_key",
        "error",
        "text",
        "missing required key 'text'",
    )


def test_unknown_kind_name_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        Validator("chatt")
    assert str(info.value) == (
        "unknown kind 'chatt' (expected auto, chat, prompt-completion, alpaca, sharegpt, text, preference, kto; "
        "did you mean 'chat'?)"
    )


# --------------------------------------------------------------------------- chat


def test_valid_chat_records():
    for obj in [
        chat(user(), assistant()),
        chat({"role": "system", "content": "Be nice."}, user(), assistant(), user(), assistant()),
        chat(user(), assistant(weight=0), user(), assistant(weight=1, name="bot")),
        chat(user([{"type": "text", "text": "Hi"}]), assistant([{"type": "text", "text": "Yo"}])),
        chat(user([{"type": "image_url", "image_url": {"url": "x"}}]), assistant()),
        chat(user(), assistant(), id="r1", metadata={"src": "x"}),
        chat(
            user(),
            assistant(
                None,
                tool_calls=[
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"x": 1}'},
                    }
                ],
            ),
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            assistant("It is 42."),
            tools=[{"type": "function", "function": {"name": "f"}}],
        ),
        chat(
            user(),
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            tools=[{"type": "function", "function": {"name": "f"}}],
        ),
    ]:
        result = Validator("chat").check(dumps(obj))
        assert result.ok and result.issues == () and result.kind == "chat", (obj, result)
        assert result.obj == obj


@pytest.mark.parametrize(
    ("role", "hint"),
    [
        ("bot", "; did you mean 'assistant'?"),
        ("gpt", "; did you mean 'assistant'?"),
        ("model", "; did you mean 'assistant'?"),
        ("human", "; did you mean 'user'?"),
        ("User", "; did you mean 'user'?"),
        ("asistant", "; did you mean 'assistant'?"),
        ("developer", "; did you mean 'system'?"),
        ("function", "; did you mean 'tool'?"),
        ("narrator", ""),
    ],
)
def test_unknown_role(role, hint):
    obj = chat(user(), assistant(), {"role": role, "content": "x"}, assistant())
    assert only_issue("chat", obj) == (
        "unknown_role",
        "error",
        "messages[2].role",
        f"unknown role {role!r} (expected system, user, assistant, tool{hint})",
    )


def test_unknown_role_does_not_also_report_no_assistant():
    assert only_issue("chat", chat(user(), {"role": "bot", "content": "x"}))[0] == "unknown_role"


def test_long_role_is_clipped_in_the_message():
    role = "r" * 1000
    message = only_issue("chat", chat(user(), assistant(), {"role": role, "content": "x"}))[3]
    assert message == f"unknown role {'r' * 37 + '...'!r} (expected system, user, assistant, tool)"


def test_missing_messages_key_role_and_content():
    assert only_issue("chat", {"messages": [user(), {"content": "x"}, assistant()]}) == (
        "missing_key",
        "error",
        "messages[1].role",
        "missing required key 'role'",
    )
    assert only_issue("chat", chat(user(), {"role": "assistant"})) == (
        "missing_key",
        "error",
        "messages[1].content",
        "missing required key 'content'",
    )


@pytest.mark.parametrize(
    ("obj", "path", "message"),
    [
        ({"messages": "hi"}, "messages", "expected an array, got a string"),
        ({"messages": {"role": "user"}}, "messages", "expected an array, got an object"),
        (chat(user(), "hello", assistant()), "messages[1]", "expected an object, got a string"),
        (
            chat(user(), {"role": 1, "content": "x"}, assistant()),
            "messages[1].role",
            "expected a string, got a number",
        ),
        (
            chat(user(7), assistant()),
            "messages[0].content",
            "expected a string, an array of content parts, or null, got a number",
        ),
        (
            chat(user(), assistant(weight="1")),
            "messages[1].weight",
            "expected a number, got a string",
        ),
        (
            chat(user(), assistant(weight=True)),
            "messages[1].weight",
            "expected a number, got a boolean",
        ),
        (
            chat(user(loss_weight=None), assistant()),
            "messages[0].loss_weight",
            "expected a number, got null",
        ),
        (chat(user(name=3), assistant()), "messages[0].name", "expected a string, got a number"),
        (
            chat(user(["hi"]), assistant()),
            "messages[0].content[0]",
            "expected an object, got a string",
        ),
        (
            chat(user([{"type": "text", "text": 5}]), assistant()),
            "messages[0].content[0].text",
            "expected a string, got a number",
        ),
        (
            chat(user([{"type": 1, "text": "a"}]), assistant()),
            "messages[0].content[0].type",
            "expected a string, got a number",
        ),
        (
            chat(user(), assistant(tool_calls={})),
            "messages[1].tool_calls",
            "expected an array, got an object",
        ),
        (
            chat(user(), assistant(tool_calls=[{"function": {"name": 1}}])),
            "messages[1].tool_calls[0].function.name",
            "expected a string, got a number",
        ),
        (
            chat(
                user(),
                assistant(tool_calls=[{"function": {"name": "f", "arguments": 1}}]),
                tools=[{"type": "function", "function": {"name": "f"}}],
            ),
            "messages[1].tool_calls[0].function.arguments",
            "expected a JSON string or an object, got a number",
        ),
        (chat(user(), assistant(), tools={}), "tools", "expected an array, got an object"),
    ],
)
def test_chat_wrong_types(obj, path, message):
    assert only_issue("chat", obj) == ("wrong_type", "error", path, message)


def test_missing_part_keys():
    assert only_issue("chat", chat(user([{"text": "a"}]), assistant())) == (
        "missing_key",
        "error",
        "messages[0].content[0].type",
        "missing required key 'type'",
    )
    assert only_issue("chat", chat(user([{"type": "text"}]), assistant())) == (
        "missing_key",
        "error",
        "messages[0].content[0].text",
        "missing required key 'text'",
    )
    assert only_issue("chat", chat(user(), assistant(tool_calls=[{"id": "x"}]))) == (
        "missing_key",
        "error",
        "messages[1].tool_calls[0].function",
        "missing required key 'function'",
    )


def test_empty_messages():
    assert only_issue("chat", {"messages": []}) == (
        "empty_list",
        "error",
        "messages",
        "messages is empty",
    )


def test_null_content():
    assert only_issue("chat", chat(user(None), assistant())) == (
        "null_content",
        "error",
        "messages[0].content",
        "content is null; only an assistant message with tool_calls may have null content",
    )
    assert only_issue("chat", chat(user(), assistant(None)))[0] == "null_content"
    assert only_issue("chat", chat(user(), assistant(None, tool_calls=[])))[0] == "null_content"


def test_no_assistant():
    obj = chat({"role": "system", "content": "s"}, user(), user("again"))
    assert only_issue("chat", obj) == (
        "no_assistant",
        "error",
        "messages",
        "no assistant message (roles: system, user); a chat record needs at least one",
    )


def test_unknown_keys_are_warnings_with_hints():
    obj = chat(user(), assistant(contnet="x"), source="web")
    assert issues_of("chat", obj) == [
        ("unknown_key", "warning", "source", "unknown key 'source'"),
        (
            "unknown_key",
            "warning",
            "messages[1].contnet",
            "unknown key 'contnet' (did you mean 'content'?)",
        ),
    ]
    assert Validator("chat").check(dumps(obj)).ok


def test_sharegpt_style_turns_in_chat():
    obj = chat({"from": "human", "value": "hi"}, assistant())
    assert issues_of("chat", obj) == [
        ("unknown_key", "warning", "messages[0].from", "unknown key 'from' (did you mean 'role'?)"),
        (
            "unknown_key",
            "warning",
            "messages[0].value",
            "unknown key 'value' (did you mean 'content'?)",
        ),
        ("missing_key", "error", "messages[0].role", "missing required key 'role'"),
        ("missing_key", "error", "messages[0].content", "missing required key 'content'"),
    ]


def test_unknown_key_with_odd_characters_is_quoted_in_the_path():
    assert issues_of("chat", chat(user(), assistant(), **{"my key": 1})) == [
        ("unknown_key", "warning", '["my key"]', "unknown key 'my key'"),
    ]


def test_many_unknown_keys_are_summarised():
    obj = chat(user(), assistant(), **{f"x{i}": i for i in range(15)})
    found = issues_of("chat", obj)
    assert len(found) == 11
    assert found[-1] == ("unknown_key", "warning", "", "... and 5 more unknown keys")


def test_empty_content_is_a_warning():
    assert issues_of("chat", chat(user(""), assistant("  \n"))) == [
        ("empty_text", "warning", "messages[0].content", "empty string"),
        ("empty_text", "warning", "messages[1].content", "string is only whitespace"),
    ]
    assert Validator("chat").check(dumps(chat(user(""), assistant()))).ok
    assert issues_of("chat", chat(user([]), assistant())) == [
        ("empty_text", "warning", "messages[0].content", "empty array of content parts"),
    ]


def test_empty_content_beside_tool_calls_is_fine():
    calls = [{"function": {"name": "f", "arguments": "{}"}}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert issues_of("chat", chat(user(), assistant("", tool_calls=calls), tools=tools)) == []


def test_placeholders_are_warnings():
    obj = chat(user("Hi {{ name }}"), assistant("I am {{name}} by {{author}}, {{a}} {{b}}"))
    assert issues_of("chat", obj) == [
        (
            "placeholder",
            "warning",
            "messages[0].content",
            "unfilled template placeholder '{{ name }}'",
        ),
        (
            "placeholder",
            "warning",
            "messages[1].content",
            "unfilled template placeholders '{{name}}', '{{author}}', '{{a}}', ...",
        ),
    ]


@pytest.mark.parametrize(
    "text", ["style={{color: 'red'}}", "a{b}c", "{{}}", "x^{{2}}", "{ {name} }"]
)
def test_braces_that_are_not_placeholders(text):
    assert issues_of("chat", chat(user(text), assistant())) == []


def test_llama_factory_parts_with_value():
    obj = chat(
        user([{"type": "text", "value": "hi"}], loss_weight=0.0),
        assistant([{"type": "text", "value": "I am {{name}}"}], loss_weight=1.0),
    )
    assert issues_of("chat", obj) == [
        (
            "part_value",
            "warning",
            "messages[0].content[0].value",
            "content part uses 'value' instead of 'text' (LLaMA-Factory style); most trainers expect 'text'",
        ),
        (
            "part_value",
            "warning",
            "messages[1].content[0].value",
            "content part uses 'value' instead of 'text' (LLaMA-Factory style); most trainers expect 'text'",
        ),
        (
            "placeholder",
            "warning",
            "messages[1].content[0].value",
            "unfilled template placeholder '{{name}}'",
        ),
    ]


def test_system_not_first_is_a_warning():
    obj = chat(user(), {"role": "system", "content": "s"}, assistant())
    assert issues_of("chat", obj) == [
        (
            "system_not_first",
            "warning",
            "messages[1]",
            "system message at position 1; most chat templates accept a system message only first",
        )
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            '"{\\"location\\": \\"current\\"}"',
            "arguments is a JSON string holding a string, not an object (double-encoded?)",
        ),
        ("[1, 2]", "arguments is JSON but not an object (got an array)"),
        ("{location: 1}", "arguments is not valid JSON (column 2: {reason})"),
    ],
)
def test_tool_arguments(arguments, message):
    calls = [{"type": "function", "function": {"name": "f", "arguments": arguments}}]
    obj = chat(
        user(), assistant(None, tool_calls=calls), {"role": "tool", "content": "x"}, assistant()
    )
    if "{reason}" in message:
        message = message.format(reason=orjson_reason(arguments.encode()))
    obj["tools"] = [{"type": "function", "function": {"name": "f"}}]
    assert only_issue("chat", obj) == (
        "tool_arguments",
        "error",
        "messages[1].tool_calls[0].function.arguments",
        message,
    )


def test_legacy_function_call():
    obj = chat(
        user(), assistant(None, function_call={"name": "f", "arguments": "{}"}), functions=[{"name": "f"}]
    )
    assert issues_of("chat", obj) == []
    obj = chat(user(), assistant(None, function_call={"arguments": "{}"}))
    assert only_issue("chat", obj) == (
        "missing_key",
        "error",
        "messages[1].function_call.name",
        "missing required key 'name'",
    )


def test_too_many_issues_are_capped():
    obj = chat(*[{"role": "bot", "content": ""} for _ in range(80)])
    result = Validator("chat").check(dumps(obj))
    assert len(result.issues) == 101
    assert result.issues[-1] == Issue(
        "too_many_issues", "warning", "", "60 more issues in this record not shown"
    )
    assert not result.ok


# --------------------------------------------------------------------------- other kinds


def test_prompt_completion():
    assert issues_of("prompt-completion", {"prompt": "Q?", "completion": " A."}) == []
    assert only_issue("prompt-completion", {"prompt": "Q?"}) == (
        "missing_key",
        "error",
        "completion",
        "missing required key 'completion'",
    )
    assert only_issue("prompt-completion", {"prompt": 1, "completion": "a"}) == (
        "wrong_type",
        "error",
        "prompt",
        "expected a string, got a number",
    )
    assert issues_of("prompt-completion", {"prompt": "Q", "completion": "", "score": 1}) == [
        ("unknown_key", "warning", "score", "unknown key 'score'"),
        ("empty_text", "warning", "completion", "empty string"),
    ]
    assert only_issue("prompt-completion", {"text": "a"}) == (
        "missing_key",
        "error",
        "prompt",
        "missing required key 'prompt' (the record looks like text)",
    )


def test_conversational_prompt_completion():
    obj = {"prompt": [user()], "completion": [assistant()]}
    assert issues_of("prompt-completion", obj) == []
    assert only_issue("prompt-completion", {"prompt": [user()], "completion": [user()]}) == (
        "no_assistant",
        "error",
        "completion",
        "no assistant message (roles: user); a chat record needs at least one",
    )
    assert only_issue("auto", {"prompt": [{"role": "bot", "content": "x"}], "completion": "a"})[
        2
    ] == ("prompt[0].role")


def test_alpaca():
    assert issues_of("alpaca", {"instruction": "Do", "input": "", "output": "Done"}) == []
    assert (
        issues_of(
            "alpaca",
            {"instruction": "Do", "output": "Done", "system": "s", "history": [["a", "b"]]},
        )
        == []
    )
    assert only_issue("alpaca", {"instruction": "Do", "input": ""}) == (
        "missing_key",
        "error",
        "output",
        "missing required key 'output'",
    )
    assert only_issue("alpaca", {"input": "x", "output": "y"}) == (
        "missing_key",
        "error",
        "instruction",
        "missing required key 'instruction'",
    )
    assert only_issue("alpaca", {"instruction": "Do", "input": None, "output": "y"}) == (
        "wrong_type",
        "error",
        "input",
        "expected a string, got null",
    )
    assert only_issue("alpaca", {"instruction": "Do", "output": "y", "history": [["a"]]}) == (
        "wrong_type",
        "error",
        "history[0]",
        "expected an [instruction, response] pair, got an array",
    )
    assert issues_of("alpaca", {"instruction": "", "output": "y", "inputs": "z"}) == [
        ("unknown_key", "warning", "inputs", "unknown key 'inputs' (did you mean 'input'?)"),
        ("empty_text", "warning", "instruction", "empty string"),
    ]
    assert only_issue("alpaca", {"instruction": "x", "input": "{{q}}", "output": "y"}) == (
        "placeholder",
        "warning",
        "input",
        "unfilled template placeholder '{{q}}'",
    )


def test_sharegpt():
    good = {
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "function_call", "value": '{"name": "f"}'},
            {"from": "observation", "value": "{}"},
            {"from": "gpt", "value": "done"},
        ],
        "tools": '[{"name": "f"}]',
        "system": "",
    }
    assert issues_of("sharegpt", good) == []
    assert (
        issues_of(
            "sharegpt",
            {"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "x"}]},
        )
        == []
    )
    assert only_issue(
        "sharegpt",
        {"conversations": [{"from": "user", "value": "hi"}, {"from": "gpt", "value": "x"}]},
    ) == (
        "unknown_role",
        "error",
        "conversations[0].from",
        "unknown role 'user' (expected human, gpt, system, function_call, observation, tool; "
        "did you mean 'human'?)",
    )
    assert only_issue("sharegpt", {"conversations": [{"from": "human", "value": "hi"}]}) == (
        "no_assistant",
        "error",
        "conversations",
        "no gpt or function_call turn (from: human); a conversation needs at least one",
    )
    assert only_issue("sharegpt", {"conversations": []}) == (
        "empty_list",
        "error",
        "conversations",
        "conversations is empty",
    )
    assert issues_of(
        "sharegpt",
        {"conversations": [{"role": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]},
    ) == [
        (
            "unknown_key",
            "warning",
            "conversations[0].role",
            "unknown key 'role' (did you mean 'from'?)",
        ),
        ("missing_key", "error", "conversations[0].from", "missing required key 'from'"),
    ]
    assert only_issue(
        "sharegpt",
        {"conversations": [{"from": "human", "value": 1}, {"from": "gpt", "value": "x"}]},
    ) == (
        "wrong_type",
        "error",
        "conversations[0].value",
        "expected a string, got a number",
    )
    assert only_issue(
        "sharegpt", {"conversations": [{"from": "gpt", "value": "x"}], "tools": 3}
    ) == (
        "wrong_type",
        "error",
        "tools",
        "expected a JSON string or an array, got a number",
    )


def test_text():
    assert issues_of("text", {"text": "Once upon a time", "url": "u", "timestamp": "t"}) == []
    assert only_issue("text", {"text": ["a"]}) == (
        "wrong_type",
        "error",
        "text",
        "expected a string, got an array",
    )
    assert only_issue("text", {"text": "  "}) == (
        "empty_text",
        "warning",
        "text",
        "string is only whitespace",
    )


# --------------------------------------------------------------------------- auto and Report


def test_auto_detects_per_record():
    v = Validator("auto")
    assert v.check(dumps(chat(user(), assistant()))).kind == "chat"
    assert v.check(b'{"text": "a"}').kind == "text"
    assert v.check(b'{"prompt": "a", "completion": "b"}').kind == "prompt-completion"
    assert v.check(b'{"instruction": "a", "output": "b"}').kind == "alpaca"
    assert v.check(b'{"conversations": [{"from": "gpt", "value": "x"}]}').kind == "sharegpt"
    bad = v.check(b'{"foo": 1}')
    assert bad.kind is None and not bad.ok


def test_record_result_shape():
    result = Validator("text").check(b'{"text": "a"}')
    assert isinstance(result, RecordResult)
    assert result == RecordResult({"text": "a"}, "text", (), True)
    broken = Validator("text").check(b"{")
    assert broken.obj is None and broken.kind is None and not broken.ok


def filled_report(max_examples: int = 5) -> Report:
    report = Report(max_examples=max_examples)
    v = Validator("auto")
    lines = [
        dumps(chat(user(), assistant())),
        dumps(
            chat(
                user([{"type": "text", "value": "a"}]), assistant([{"type": "text", "value": "b"}])
            )
        ),
        b'{"instruction": "a", "output": "b"}',
        dumps(chat(user(), {"role": "bot", "content": "x"})),
        b'{"a": NaN}',
    ]
    for number, raw in enumerate(lines, 1):
        report.add("inbox/a.jsonl", number, v.check(raw))
    report.add_blank("inbox/a.jsonl", 6)
    report.add("inbox/b.jsonl", 1, v.check(b'{"text": "x"}'))
    return report


def test_report_counts():
    report = filled_report()
    assert (report.records, report.valid, report.invalid, report.blank) == (6, 4, 2, 1)
    assert report.kinds == {"chat": 3, "alpaca": 1, "text": 1}
    assert report.count("part_value") == 2
    assert report.count("unknown_role") == 1
    assert report.count("nope") == 0
    assert report.errors == 2
    assert report.warnings == 3
    assert report.mixed_files() == {"inbox/a.jsonl": {"chat": 3, "alpaca": 1}}


def test_report_to_dict_is_json_serialisable():
    data = filled_report().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["records"] == {"read": 6, "valid": 4, "invalid": 2, "blank": 1}
    assert data["mixed_kinds"] is True
    assert [f["file"] for f in data["files"]] == ["inbox/a.jsonl", "inbox/b.jsonl"]
    assert data["files"][1] == {
        "file": "inbox/b.jsonl",
        "records": 1,
        "valid": 1,
        "invalid": 0,
        "blank": 0,
        "kinds": {"text": 1},
        "mixed_kinds": False,
    }
    codes = [(i["code"], i["severity"], i["count"], i["records"]) for i in data["issues"]]
    assert codes == [
        ("nan_infinity", "error", 1, 1),
        ("unknown_role", "error", 1, 1),
        ("part_value", "warning", 2, 1),
        ("blank_line", "warning", 1, 1),
    ]
    example = data["issues"][1]["examples"][0]
    assert example == {
        "file": "inbox/a.jsonl",
        "line": 4,
        "path": "messages[1].role",
        "message": "unknown role 'bot' (expected system, user, assistant, tool; did you mean 'assistant'?)",
        "text": "inbox/a.jsonl:4: messages[1].role: unknown role 'bot' "
        "(expected system, user, assistant, tool; did you mean 'assistant'?)",
    }


def test_report_lines():
    assert filled_report(max_examples=1).lines() == [
        "6 records read: 4 valid, 2 invalid (2 errors, 3 warnings, 1 blank lines skipped)",
        "kinds: chat 3, alpaca 1, text 1",
        "mixed kinds in inbox/a.jsonl: chat 3, alpaca 1",
        "error nan_infinity: 1 time in 1 record",
        "  inbox/a.jsonl:5: a: NaN is not valid JSON at column 7; use null or a string",
        "error unknown_role: 1 time in 1 record",
        "  inbox/a.jsonl:4: messages[1].role: unknown role 'bot' "
        "(expected system, user, assistant, tool; did you mean 'assistant'?)",
        "warning part_value: 2 times in 1 record",
        "  inbox/a.jsonl:2: messages[0].content[0].value: warning: content part uses 'value' "
        "instead of 'text' (LLaMA-Factory style); most trainers expect 'text'",
        "  ... and 1 more",
        "warning blank_line: 1 time in 1 line",
        "  inbox/a.jsonl:6: warning: blank line skipped",
    ]


def test_a_warning_on_every_message_stays_one_entry():
    report = Report()
    v = Validator("chat")
    raw = dumps(
        chat(user([{"type": "text", "value": "a"}]), assistant([{"type": "text", "value": "b"}]))
    )
    for number in range(1, 501):
        report.add("v1.jsonl", number, v.check(raw))
    data = report.to_dict()
    assert len(data["issues"]) == 1
    entry = data["issues"][0]
    assert (entry["code"], entry["count"], entry["records"], len(entry["examples"])) == (
        "part_value",
        1000,
        500,
        5,
    )
    assert len(report.lines()) == 1 + 1 + 1 + 5 + 1
    assert report.valid == 500


def test_report_max_examples_validation():
    assert Report(max_examples=0).max_examples == 0
    with pytest.raises(UsageError):
        Report(max_examples=-1)


def test_empty_report():
    report = Report()
    assert report.lines() == ["0 records read: 0 valid, 0 invalid (0 errors, 0 warnings)"]
    assert report.to_dict()["issues"] == []


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "raw",
    [
        bytes(range(256)),
        b"\x00" * 100,
        b"\xff\xfe\x00{\x00}",
        b"[" * 5000,
        b"{" * 5000,
        b'{"a":' * 5000,
        b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"a": NaN}',
        b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        b'{"a": "\\ud800"}',
        b"\xef\xbb\xbf" * 3,
        b'{"messages": [' + b'{"role": "bot", "content": ""},' * 20000 + b"1]}",
    ],
)
def test_hostile_lines_never_raise(raw):
    for kind in ("auto", *KINDS):
        result = Validator(kind).check(raw)
        assert not result.ok
        assert all(i.code != "internal_error" for i in result.issues)


def test_eight_megabyte_lines():
    big = "word " * (8 * 1024 * 1024 // 5)
    valid = dumps(chat(user(big), assistant(big[: 1024 * 1024])))
    assert len(valid) > 8 * 1024 * 1024
    assert Validator("chat").check(valid).ok
    assert Validator("auto").check(valid[:-2]).issues[0].code == "invalid_json"
    broken = valid[: 4 * 1024 * 1024] + b"\xff" + valid[4 * 1024 * 1024 :]
    assert Validator("auto").check(broken).issues[0].code == "invalid_utf8"
    result = Validator("auto", max_line_bytes=1024 * 1024).check(valid)
    assert [i.code for i in result.issues] == ["line_too_long"]


def test_memoryview_input():
    line = memoryview(b'xx{"text": "a"}')[2:]
    assert Validator("auto").check(line).ok
    assert Validator("auto").check(memoryview(b'{"text": NaN}')).issues[0].code == "nan_infinity"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(raw):
    result = Validator("auto").check(raw)
    assert isinstance(result, RecordResult)
    assert all(i.code in CODES and i.code != "internal_error" for i in result.issues)
    assert result.ok == (not any(i.severity == "error" for i in result.issues))


@pytest.mark.parametrize("raw", [b"{\r", b"{\r\n", b"[\r", b'{"a":\r'])
def test_a_line_cut_before_its_cr_is_invalid_json_not_a_validator_bug(raw):
    """orjson's error position lies past the text once the CR is stripped (found by the
    random-bytes property: an IndexError reported as internal_error)."""
    result = Validator("auto").check(raw)
    assert [i.code for i in result.issues] == ["invalid_json"], result.issues
    assert "unexpected end of data" in result.issues[0].message


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.sampled_from(
    ["hi", "", "  ", "{{name}}", "a{b", "x{{y}}z", "Hello {{ user }}!", "日本語"]
) | st.text(max_size=10)
roles = (
    st.sampled_from(["system", "user", "assistant", "tool", "bot", "human", "User", ""])
    | json_values
)
parts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["text", "image_url"]) | json_values,
        "text": texts | json_values,
        "value": texts,
        "image_url": json_values,
    },
)
contents = texts | st.none() | st.lists(parts | json_values, max_size=3) | json_values
tool_calls = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "function": st.fixed_dictionaries(
                {},
                optional={
                    "name": texts | json_values,
                    "arguments": st.sampled_from(['{"a": 1}', '"{}"', "[", "{}"]) | json_values,
                },
            )
            | json_values,
            "type": st.just("function"),
        },
    )
    | json_values,
    max_size=2,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "role": roles,
        "content": contents,
        "weight": st.sampled_from([0, 1, 0.5, True, "1"]) | json_values,
        "loss_weight": st.floats(allow_nan=False),
        "name": texts | json_values,
        "tool_calls": tool_calls,
        "tool_call_id": texts,
        "function_call": json_values,
        "from": roles,
        "contnet": texts,
    },
)
turns = st.fixed_dictionaries(
    {},
    optional={
        "from": st.sampled_from(
            ["human", "gpt", "system", "function_call", "observation", "tool", "user"]
        )
        | json_values,
        "value": texts | json_values,
        "role": texts,
    },
)
records = st.one_of(
    st.fixed_dictionaries(
        {"messages": st.lists(messages, max_size=5) | json_values},
        optional={
            "id": json_values,
            "tools": json_values,
            "foo": json_values,
            "metadata": json_values,
            "parallel_tool_calls": json_values,
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt": texts | st.lists(messages, max_size=3) | json_values,
            "completion": texts | st.lists(messages, max_size=3) | json_values,
            "id": json_values,
            "x": json_values,
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "instruction": texts | json_values,
            "input": texts | json_values,
            "output": texts | json_values,
            "system": texts | json_values,
            "history": json_values,
            "extra": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"conversations": st.lists(turns, max_size=5) | json_values},
        optional={
            "system": texts | json_values,
            "tools": json_values,
            "images": json_values,
            "id": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"text": texts | json_values},
        optional={"url": json_values, "meta": json_values, "other": json_values},
    ),
    st.dictionaries(st.text(max_size=12), json_values, max_size=5),
)


good_texts = st.sampled_from(["hi", "Hello there", "日本語", "a{b}", "x", "😀 ok"])
good_parts = st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": good_texts}), min_size=1, max_size=2
)
good_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]), "content": good_texts | good_parts},
    optional={
        "weight": st.sampled_from([0, 1]),
        "loss_weight": st.floats(0, 1),
        "name": good_texts,
    },
)
good_turns = st.fixed_dictionaries(
    {
        "from": st.sampled_from(["human", "gpt"]),
        "value": good_texts,
    }
)


@st.composite
def valid_records(draw):
    kind = draw(st.sampled_from(KINDS))
    if kind == "chat":
        messages = draw(st.lists(good_messages, max_size=4))
        if draw(st.booleans()):
            messages.insert(0, {"role": "system", "content": draw(good_texts)})
        messages.append({"role": "assistant", "content": draw(good_texts)})
        return {"messages": messages}
    if kind == "sharegpt":
        turns = draw(st.lists(good_turns, max_size=4)) + [
            {"from": "gpt", "value": draw(good_texts)}
        ]
        return {"conversations": turns, "tools": "[]"}
    if kind == "alpaca":
        return {
            "instruction": draw(good_texts),
            "input": draw(good_texts),
            "output": draw(good_texts),
        }
    if kind == "prompt-completion":
        return {"prompt": draw(good_texts), "completion": draw(good_texts)}
    if kind == "preference":
        chosen, rejected = draw(st.lists(good_texts, min_size=2, max_size=2, unique=True))
        return {"prompt": draw(good_texts), "chosen": chosen, "rejected": rejected}
    if kind == "kto":
        return {"prompt": draw(good_texts), "completion": draw(good_texts), "label": draw(st.booleans())}
    return {"text": draw(good_texts)}


MUTATION_KEYS = sorted(
    {
        "role",
        "content",
        "type",
        "text",
        "value",
        "from",
        "weight",
        "loss_weight",
        "name",
        "tool_calls",
    }
    | {"tool_call_id", "messages", "conversations", "prompt", "completion", "instruction", "input"}
    | {"output", "system", "tools", "history", "id", "metadata", "url", "functions", "odd"}
)
odd_values = (
    st.sampled_from(
        ["", " ", "{{x}}", "a {{ b }}", None, 0, 1.5, True, [], {}, "bot", "system", "assistant"]
        + ["user", "human", "gpt", "text", "image_url", "[]"]
    )
    | st.just([{"type": "text", "text": "a"}])
    | st.just([{"type": "text", "value": "a"}])
    | st.just([{"type": "image_url"}])
    | st.just([{"function": {"name": "f", "arguments": '"{}"'}}])
    | json_values
)


def containers(value: object) -> list:
    found, stack = [], [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict | list):
            found.append(node)
            stack.extend(node.values() if isinstance(node, dict) else node)
    return found


@st.composite
def near_valid_records(draw):
    """A valid record of some kind with 0-2 small edits anywhere in it."""
    record = draw(valid_records())
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(containers(record)))
        if isinstance(target, dict):
            key = draw(st.sampled_from(MUTATION_KEYS + list(target)))
            if draw(st.booleans()) or key not in target:
                target[key] = copy.deepcopy(draw(odd_values))
            else:
                del target[key]
        elif target:
            index = draw(st.integers(0, len(target) - 1))
            if draw(st.booleans()):
                target[index] = copy.deepcopy(draw(odd_values))
            else:
                del target[index]
    return record


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records | near_valid_records())
def test_gate_accepts_only_records_without_issues(obj):
    """The fast path (gate) must never hide an issue the explainer would report."""
    for kind, gate in _GATES.items():
        found: list[Issue] = []
        _EXPLAINERS[kind](obj, found)
        if gate(obj) is not None:
            assert gate(obj) == kind
            assert found == [], (kind, obj, found)


@settings(max_examples=300, deadline=None)
@given(valid_records())
def test_gate_accepts_valid_records(obj):
    """The property above is only worth something if the gates do pass valid records."""
    kind = detect_kind(obj)
    assert _GATES[kind](obj) == kind
    assert Validator("auto").check(dumps(obj)) == RecordResult(obj, kind, (), True)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records | near_valid_records())
def test_check_never_raises_on_near_valid_records(obj):
    raw = dumps(obj)
    for kind in ("auto", *KINDS):
        result = Validator(kind).check(raw)
        assert all(i.code in CODES and i.code != "internal_error" for i in result.issues), result
        assert all(i.severity == CODES[i.code] for i in result.issues)
        assert result.ok == (not any(i.severity == "error" for i in result.issues))
        slow = Validator(kind, check_duplicate_keys=True).check(raw)  # the thorough path only
        assert slow.issues == result.issues and slow.kind == result.kind


# --------------------------------------------------------------------------- real files


def real_lines(name: str) -> list[bytes]:
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    data = path.read_bytes()
    if name.endswith(".json"):
        return [orjson.dumps(obj) for obj in orjson.loads(data)]
    return [line for line in data.split(b"\n") if line.strip()]


@pytest.mark.parametrize(
    ("name", "kind", "records", "warnings"),
    [
        ("toy_chat_fine_tuning.jsonl", "chat", 5, {}),
        ("v1_sft_demo.jsonl", "chat", 500, {"part_value": 1000, "placeholder": 50}),
        ("train.jsonl", "prompt-completion", 1800, {}),
        ("c4_demo.jsonl", "text", 300, {}),
        ("alpaca_en_demo.json", "alpaca", 999, {}),
        ("identity.json", "alpaca", 91, {"placeholder": 85}),
    ],
)
def test_real_files_are_accepted(name, kind, records, warnings):
    lines = real_lines(name)
    for validator_kind in (kind, "auto"):
        report = Report()
        validator = Validator(validator_kind)
        for number, raw in enumerate(lines, 1):
            report.add(name, number, validator.check(raw))
        assert (report.records, report.valid, report.invalid) == (records, records, 0)
        assert report.kinds == {kind: records}
        assert {i["code"]: i["count"] for i in report.to_dict()["issues"]} == warnings


def test_real_tool_calls_file_has_one_call_off_its_schema():
    """glaive_toolcall_en_demo.json (LLaMA-Factory's demo): record 260 calls track_calories with
    calories_per_item [150, 350, 800], where the declared parameters say a number."""
    lines = real_lines("glaive_toolcall_en_demo.json")
    for validator_kind in ("sharegpt", "auto"):
        validator = Validator(validator_kind)
        bad = [(n, validator.check(raw)) for n, raw in enumerate(lines, 1)]
        bad = [(n, r) for n, r in bad if r.issues]
        assert [(n, r.ok, [(i.code, i.path) for i in r.issues]) for n, r in bad] == [
            (260, False, [("arguments_schema", "conversations[3].value.arguments.calories_per_item")])
        ]
        assert "is not of type 'number'" in bad[0][1].issues[0].message


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("sharegpt", {"conversations": [{"from": "gpt", "value": "hi"}], "tools": None}),
        ("sharegpt", {"conversations": [{"from": "gpt", "value": "hi"}], "system": None}),
        ("alpaca", {"instruction": "a", "output": "b", "history": [["x"]]}),
        ("chat", chat(user(loss_weight=None), assistant())),
        ("chat", chat(user(name=None), assistant())),
    ],
)
def test_gate_regressions(kind, obj):
    """Records the fast path once let through although the explainer reports an error."""
    assert _GATES[kind](obj) is None
    assert not Validator(kind).check(dumps(obj)).ok


@settings(max_examples=500, deadline=None)
@given(valid_records(), st.data())
def test_corrupted_lines_never_raise(obj, data):
    raw = bytearray(dumps(obj))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(raw)))
        junk = data.draw(
            st.sampled_from([b"NaN", b"\xff", b"\xef\xbb\xbf", b"{", b"]", b",", b"\x00", b"\\"])
            | st.binary(max_size=3)
        )
        raw[at:at] = junk
    result = Validator("auto").check(bytes(raw))
    assert all(i.code in CODES and i.code != "internal_error" for i in result.issues)


@pytest.mark.parametrize("kind", ["chat", "auto"])
def test_chat_with_extra_top_level_keys_fast_path_equals_thorough_path(kind) -> None:
    """The shortcut for chat records with unknown top-level keys gives the thorough path's result."""
    import itertools

    bodies = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "{{x}}"}],
        [{"role": "bot", "content": "x"}],
        [{"role": "user", "content": [{"type": "text", "text": "a"}]}, {"role": "assistant", "content": "b"}],
    ]
    extras = [{"source": "web"}, {"lang": "en", "id": 4}, {"sourse": 1, "metadata": {}}, {"tools": "x", "src": 1}, {}]
    v = Validator(kind)
    hits = 0
    for body, extra in itertools.product(bodies, extras):
        for record in ({"messages": body, **extra}, {**extra, "messages": body}):  # key order: another cache entry
            raw = orjson.dumps(record)
            thorough = v._check_thoroughly(raw, None)
            assert v.check(raw) == thorough, raw
            assert v.check_decoded(raw, orjson.loads(raw)) == thorough, raw  # parsed once, same answer
            for _ in range(2):  # the second time from the cache of key sets
                fast = v.gate_extra(orjson.loads(raw))
                if fast is not None:
                    hits += 1
                    assert (fast.kind, fast.issues, fast.ok) == (thorough.kind, thorough.issues, thorough.ok), raw
    assert hits >= 8  # the shortcut is taken (a test of the shortcut that never takes it proves nothing)


_BODIES_BY_KIND = {
    "alpaca": [
        {"instruction": "Sum 2 and 2.", "output": "4"},
        {"instruction": "Sum 2 and 2.", "input": "", "output": "4"},
        {"instruction": "Sum {{a}}.", "output": "4"},
        {"instruction": "x", "output": ""},
        {"instruction": "x", "output": "y", "system": "be brief", "history": [["a", "b"]]},
        {"instruction": "x", "input": 3, "output": "y"},
    ],
    "prompt-completion": [
        {"prompt": "2+2=", "completion": "4"},
        {"prompt": "2+2=", "completion": " "},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}]},
        {"prompt": "x"},
    ],
    "text": [{"text": "plain words"}, {"text": ""}, {"text": "a {{slot}}"}, {"text": 5}],
    "sharegpt": [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "system": "s"},
        {"conversations": [{"from": "human", "value": "hi"}]},
        {"conversations": [{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "yo"}], "images": ["a"]},
    ],
    "preference": [
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "good", "rejected": "bad", "score_chosen": 2},
    ],
    "kto": [
        {"prompt": "q", "completion": "a", "label": True},
        {"prompt": "q", "completion": "a", "label": "yes"},
    ],
}


@pytest.mark.parametrize("kind", sorted(_BODIES_BY_KIND))
@pytest.mark.parametrize("auto", [False, True])
def test_every_kind_with_extra_top_level_keys_fast_path_equals_thorough_path(kind, auto) -> None:
    """Records of every kind with unknown top-level keys (a `meta` object, `source`...) take
    the shared-result shortcut, and it gives the thorough path's result."""
    import itertools

    extras = [{"meta": {"lang": "en"}}, {"source": "web", "lang": "en"}, {"outputs": 1, "id": 4}, {"meta": None, "tools": 3}, {}]
    v = Validator("auto" if auto else kind)
    hits = 0
    for body, extra in itertools.product(_BODIES_BY_KIND[kind], extras):
        for record in ({**body, **extra}, {**extra, **body}):  # key order: another cache entry
            raw = orjson.dumps(record)
            thorough = v._check_thoroughly(raw, None)
            assert v.check(raw) == thorough, raw
            assert v.check_decoded(raw, orjson.loads(raw)) == thorough, raw
            for _ in range(2):  # the second time from the cache of key sets
                fast = v.gate_extra(orjson.loads(raw))
                if fast is not None:
                    hits += 1
                    assert (fast.kind, fast.issues, fast.ok) == (thorough.kind, thorough.issues, thorough.ok), raw
                    assert fast.ok and any(i.code == "unknown_key" for i in fast.issues), raw
    assert hits >= 8  # the shortcut is taken


@pytest.mark.parametrize(
    ("record", "ok", "where"),
    [
        # LLaMA-Factory's ShareGPT-vision style: one <image> per entry of images
        ({"conversations": [{"from": "human", "value": "<image>What is it?"}, {"from": "gpt", "value": "A cat."}],
          "images": ["a.jpg"]}, True, None),
        ({"conversations": [{"from": "human", "value": "<image><image>Compare."}, {"from": "gpt", "value": "Same."}],
          "images": ["a.jpg"]}, False, "images"),
        ({"conversations": [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "x"}]}, False, ""),
        # chat messages with placeholders, and OpenAI-style image content parts
        ({"messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "ok"}],
          "images": ["a.png"]}, True, None),
        ({"messages": [{"role": "user", "content": "<image>Describe."}, {"role": "assistant", "content": "ok"}],
          "images": []}, False, "images"),
        ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                       {"role": "assistant", "content": "ok"}], "images": ["a.png"]}, True, None),
        ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]},
                       {"role": "assistant", "content": "ok"}], "images": ["a.png"]}, False, "images"),
        ({"messages": [{"role": "user", "content": "Describe <image> here."}, {"role": "assistant", "content": "ok"}]},
         False, ""),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], "images": "a.png"},
         False, "images"),
    ],
)
@pytest.mark.parametrize("kind", ["auto", "chat", "sharegpt"])
def test_image_placeholders_match_the_images_list(record, ok, where, kind):
    """Issue 20.3: <image> placeholders (or image parts) equal the images list, one for one."""
    if kind != "auto" and (kind == "chat") != ("messages" in record):
        return  # the other kind's records
    v = Validator(kind)
    raw = orjson.dumps(record)
    result = v.check(raw)
    assert result.ok is ok, result.issues
    assert v.check(raw) == v._check_thoroughly(raw, None)  # the fast paths never hide it
    if not ok:
        codes = {(i.code, i.path) for i in result.issues if i.severity == "error"}
        assert ("image_count", where) in codes or ("wrong_type", where) in codes, codes
        assert v.gate(orjson.loads(raw)) is None and v.gate_extra(orjson.loads(raw)) is None
