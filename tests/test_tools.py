"""Tool calls against the record's declared tools: names, arguments against the parameters
JSON Schema, and calls paired with tool results (shardkit.records.tools), chat and sharegpt."""

from __future__ import annotations

import orjson
import pytest
from conftest import run_cli

from shardkit.records.validate import Validator

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, {"type": "function", "function": {"name": "get_time"}}]


def call(name="get_weather", arguments='{"city": "Paris", "unit": "celsius"}', id="c1"):
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if id is not None:
        out["id"] = id
    return out


def calls(*c):
    return {"role": "assistant", "content": None, "tool_calls": list(c)}


def result(id="c1", content="18C, clear"):
    out = {"role": "tool", "content": content}
    if id is not None:
        out["tool_call_id"] = id
    return out


USER = {"role": "user", "content": "Weather in Paris?"}
DONE = {"role": "assistant", "content": "It is 18C and clear."}


def found(obj, kind="chat"):
    res = Validator(kind).check(orjson.dumps(obj))
    return res.ok, [(i.code, i.severity, i.path) for i in res.issues], [i.message for i in res.issues]


def only(obj, kind="chat"):
    ok, issues, messages = found(obj, kind)
    assert len(issues) == 1, issues
    return ok, issues[0], messages[0]


# ------------------------------------------------------------------ records that pass


@pytest.mark.parametrize(
    "messages",
    [
        [USER, calls(call()), result(), DONE],
        # arguments as an object, two parallel calls answered in any order
        [USER, calls(call(arguments={"city": "Oslo"}), call("get_time", "{}", "c2")), result("c2"), result("c1"), DONE],
        # a record may end on the call itself: it teaches the call
        [USER, calls(call())],
        # calls without ids, answered one each in order
        [USER, calls(call(id=None), call("get_time", "{}", id=None)), result(None), result(None), DONE],
        # two rounds of calls
        [USER, calls(call()), result(), calls(call(id="c2")), result("c2"), DONE],
    ],
)
def test_well_formed_tool_use_passes(messages):
    assert found({"messages": messages, "tools": TOOLS}) == (True, [], [])


def test_sharegpt_tool_use_passes():
    obj = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 18}'},
            {"from": "gpt", "value": "18C."},
        ],
        "tools": orjson.dumps([WEATHER["function"]]).decode(),
    }
    assert found(obj, "sharegpt") == (True, [], [])
    assert found(obj, "auto") == (True, [], [])


# ------------------------------------------------------------------ names


def test_call_to_an_undeclared_function_is_an_error_with_a_hint():
    ok, issue, message = only({"messages": [USER, calls(call("get_wether")), result(), DONE], "tools": TOOLS})
    assert (ok, issue) == (False, ("unknown_tool", "error", "messages[1].tool_calls[0].function.name"))
    assert message == (
        "calls 'get_wether', which the record's tools do not declare "
        "(declared: get_time, get_weather; did you mean 'get_weather'?)"
    )


def test_calls_with_no_tools_declared_is_a_warning():
    ok, issue, message = only({"messages": [USER, calls(call()), result(), DONE]})
    assert (ok, issue) == (True, ("undeclared_tools", "warning", "messages[1].tool_calls[0].function.name"))
    assert "declares no tools" in message


def test_legacy_functions_list_declares_too():
    obj = {
        "messages": [USER, {"role": "assistant", "content": None, "function_call": {"name": "nope", "arguments": "{}"}}],
        "functions": [{"name": "get_weather", "parameters": WEATHER["function"]["parameters"]}],
    }
    assert only(obj)[1] == ("unknown_tool", "error", "messages[1].function_call.name")


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    ("arguments", "path", "message"),
    [
        ('{"city": "Paris", "unit": "kelvin"}', "arguments.unit", "'kelvin' is not one of ['celsius', 'fahrenheit']"),
        ('{"unit": "celsius"}', "arguments", "'city' is a required property"),
        ('{"city": "Paris", "days": [1, "two"]}', "arguments.days[1]", "'two' is not of type 'integer'"),
        ({"city": 7}, "arguments.city", "7 is not of type 'string'"),
        ('{"city": "Paris", "lang": "fr"}', "arguments", "Additional properties are not allowed ('lang' was unexpected)"),
    ],
)
def test_arguments_are_checked_against_the_parameters_schema(arguments, path, message):
    ok, issue, text = only({"messages": [USER, calls(call(arguments=arguments)), result(), DONE], "tools": TOOLS})
    assert (ok, issue) == (False, ("arguments_schema", "error", f"messages[1].tool_calls[0].function.{path}"))
    assert text == f"{message} (the parameters of 'get_weather')"


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        ("{city: 1}", "tool_arguments", "arguments is not valid JSON (column 2: "),
        ("[1, 2]", "tool_arguments", "arguments is JSON but not an object (got an array)"),
        ('"{\\"city\\": \\"Paris\\"}"', "tool_arguments", "double-encoded?"),
        (3, "wrong_type", "expected a JSON string or an object, got a number"),
    ],
)
def test_arguments_must_be_an_object(arguments, code, message):
    ok, issue, text = only({"messages": [USER, calls(call(arguments=arguments)), result(), DONE], "tools": TOOLS})
    assert (ok, issue) == (False, (code, "error", "messages[1].tool_calls[0].function.arguments"))
    assert message in text


def test_a_broken_parameters_schema_is_reported_where_it_is_declared():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]
    ok, issue, message = only({"messages": [USER, calls(call("f", "{}")), result(), DONE], "tools": tools})
    assert (ok, issue) == (False, ("tool_schema", "error", "tools[0].function.parameters"))
    assert message.startswith("the function's parameters is not a valid JSON Schema: ")


def test_many_schema_errors_are_capped():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"additionalProperties": {"type": "string"}}}}]
    args = {f"k{i}": i for i in range(9)}
    ok, issues, messages = found({"messages": [USER, calls(call("f", args)), result(), DONE], "tools": tools})
    assert not ok and [i[0] for i in issues] == ["arguments_schema"] * 6
    assert messages[-1] == "... and 4 more schema errors"


# ------------------------------------------------------------------ pairing


def test_a_call_nobody_answers_before_the_next_turn():
    ok, issue, message = only(
        {"messages": [USER, calls(call(), call("get_time", "{}", "c2")), result("c1"), DONE], "tools": TOOLS}
    )
    assert (ok, issue) == (False, ("unanswered_tool_call", "error", "messages[1].tool_calls[1].id"))
    assert message == "no tool message answers call 'c2' before messages[3]"


def test_half_answered_calls_at_the_end_of_the_record():
    ok, issue, message = only({"messages": [USER, calls(call(), call("get_time", "{}", "c2")), result("c2")], "tools": TOOLS})
    assert (ok, issue) == (False, ("unanswered_tool_call", "error", "messages[1].tool_calls[0].id"))
    assert message == "no tool message answers call 'c1' before the end of the record"


def test_a_tool_result_with_no_call():
    ok, issue, message = only({"messages": [USER, result(), DONE], "tools": TOOLS})
    assert (ok, issue) == (False, ("orphan_tool_result", "error", "messages[1]"))
    assert message == "tool message answers no tool call (no assistant message with tool_calls before it)"


def test_a_tool_result_for_an_unknown_id():
    ok, issues, messages = found({"messages": [USER, calls(call()), result("c9"), DONE], "tools": TOOLS})
    assert (ok, issues) == (
        False,
        [
            ("orphan_tool_result", "error", "messages[2].tool_call_id"),
            ("unanswered_tool_call", "error", "messages[1].tool_calls[0].id"),
        ],
    )
    assert messages[0] == "answers no tool call of messages[1]: no call has id 'c9' (still unanswered: 'c1')"


def test_a_call_answered_twice():
    ok, issue, message = only({"messages": [USER, calls(call()), result(), result(), DONE], "tools": TOOLS})
    assert (ok, issue) == (False, ("duplicate_tool_result", "error", "messages[3].tool_call_id"))
    assert message == "answers call 'c1' a second time (messages[2] answered it)"


def test_an_answer_after_the_user_spoke_again():
    ok, issues, _ = found({"messages": [USER, calls(call()), USER, result(), DONE], "tools": TOOLS})
    assert (ok, issues) == (
        False,
        [
            ("unanswered_tool_call", "error", "messages[1].tool_calls[0].id"),
            ("orphan_tool_result", "error", "messages[3]"),
        ],
    )


def test_the_same_call_id_twice_in_one_turn():
    ok, issues, _ = found({"messages": [USER, calls(call(), call("get_time", "{}")), result(), DONE], "tools": TOOLS})
    assert (ok, issues[0]) == (False, ("duplicate_call_id", "error", "messages[1].tool_calls[1].id"))


def test_tool_results_without_ids_when_the_calls_have_ids():
    ok, issues, messages = found({"messages": [USER, calls(call()), result(None), DONE], "tools": TOOLS})
    assert issues == [
        ("orphan_tool_result", "error", "messages[2]"),
        ("unanswered_tool_call", "error", "messages[1].tool_calls[0].id"),
    ]
    assert messages[0] == "tool message has no tool_call_id, but the calls of messages[1] have ids ('c1')"
    # and more results than anonymous calls
    ok, issue, _ = only({"messages": [USER, calls(call(id=None)), result(None), result(None), DONE], "tools": TOOLS})
    assert issue == ("orphan_tool_result", "error", "messages[3]")


# ------------------------------------------------------------------ sharegpt


def sharegpt(*turns, tools=(WEATHER["function"],)):
    return {
        "conversations": [{"from": f, "value": v} for f, v in turns],
        "tools": orjson.dumps(list(tools)).decode(),
    }


def test_sharegpt_undeclared_function():
    obj = sharegpt(("human", "hi"), ("function_call", '{"name": "get_time", "arguments": {}}'), ("observation", "{}"), ("gpt", "ok"))
    ok, issue, message = only(obj, "sharegpt")
    assert (ok, issue) == (False, ("unknown_tool", "error", "conversations[1].value.name"))
    assert "declared: get_weather" in message


def test_sharegpt_parallel_calls_are_checked_each():
    value = orjson.dumps([{"name": "get_weather", "arguments": {"city": "A"}}, {"name": "get_weather", "arguments": {"city": 1}}])
    obj = sharegpt(("human", "hi"), ("function_call", value.decode()), ("observation", "{}"), ("gpt", "ok"))
    assert only(obj, "sharegpt")[1] == ("arguments_schema", "error", "conversations[1].value[1].arguments.city")


def test_sharegpt_pairing():
    orphan = sharegpt(("human", "hi"), ("observation", "{}"), ("gpt", "ok"))
    assert only(orphan, "sharegpt")[1] == ("orphan_tool_result", "error", "conversations[1]")
    unanswered = sharegpt(("human", "hi"), ("function_call", '{"name": "get_weather", "arguments": {"city": "A"}}'), ("gpt", "ok"))
    ok, issue, message = only(unanswered, "sharegpt")
    assert issue == ("unanswered_tool_call", "error", "conversations[1]")
    assert message == "no observation turn answers this function_call before conversations[2]"
    not_json = sharegpt(("human", "hi"), ("function_call", "get_weather(city='A')"), ("observation", "{}"), ("gpt", "ok"))
    assert only(not_json, "sharegpt")[1] == ("tool_arguments", "error", "conversations[1].value")


# ------------------------------------------------------------------ the command line


def test_validate_reports_file_line_and_path(tmp_path):
    good = {"messages": [USER, calls(call()), result(), DONE], "tools": TOOLS}
    bad = {"messages": [USER, calls(call(arguments='{"city": "Paris", "unit": "kelvin"}')), result(), DONE], "tools": TOOLS}
    path = tmp_path / "tools.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in (good, bad, good)) + b"\n")
    proc = run_cli("validate", str(path), "--kind", "chat")
    assert proc.returncode == 1, proc.stderr
    out = (proc.stdout + proc.stderr).decode()
    assert "3 records read: 2 valid, 1 invalid" in out
    assert (
        f"{path}:2: messages[1].tool_calls[0].function.arguments.unit: "
        "'kelvin' is not one of ['celsius', 'fahrenheit'] (the parameters of 'get_weather')"
    ) in out
