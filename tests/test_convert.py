"""--to chat: alpaca, sharegpt and prompt/completion become chat messages; the rest is rejected with a reason."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import orjson
import pytest
from conftest import ROOT

from shardkit.records.convert import MAPPING, SHAREGPT_ROLES, to_chat
from shardkit.records.validate import Validator

REALDATA = ROOT.parent / "shared" / "realdata"


def _load_mixed():
    spec = importlib.util.spec_from_file_location("shardkit_fixture_mixed", ROOT / "fixtures" / "mixed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mixed = _load_mixed()
CHAT = Validator("chat")


def chat_errors(record: dict) -> list[str]:
    result = CHAT.check(orjson.dumps(record))
    return [f"{i.path}: {i.message}" for i in result.issues if i.severity == "error"]


def test_alpaca_instruction_and_input_join_with_a_newline():
    chat, reason = to_chat({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"})
    assert reason == ""
    assert chat == {"messages": [
        {"role": "user", "content": "Translate.\nBonjour"},
        {"role": "assistant", "content": "Hello"},
    ]}


def test_alpaca_empty_input_is_left_out_system_and_history_come_first():
    chat, _ = to_chat({
        "instruction": "And now?", "input": "", "output": "Done.", "system": "Be brief.",
        "history": [["Hi", "Hello"], ["How?", "Like this."]], "id": 7,
    })
    assert chat == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "How?"},
            {"role": "assistant", "content": "Like this."},
            {"role": "user", "content": "And now?"},
            {"role": "assistant", "content": "Done."},
        ],
        "id": 7,
    }
    assert chat_errors(chat) == []


def test_unmapped_keys_are_kept_under_metadata_never_dropped():
    chat, _ = to_chat({"instruction": "Q", "output": "A", "category": "math", "source": "web"})
    assert chat["metadata"] == {"category": "math", "source": "web"}
    chat, _ = to_chat({"prompt": "Q", "completion": "A", "metadata": {"a": 1}, "lang": "en"})
    assert chat["metadata"] == {"a": 1, "lang": "en"}
    chat, reason = to_chat({"prompt": "Q", "completion": "A", "metadata": {"lang": "fr"}, "lang": "en"})
    assert chat is None and "also in metadata" in reason
    chat, reason = to_chat({"prompt": "Q", "completion": "A", "metadata": "x", "lang": "en"})
    assert chat is None and "nowhere to go" in reason


def test_sharegpt_roles_are_mapped_with_tools_and_function_calls():
    record = {
        "system": "You call tools.",
        "tools": '[{"name": "search", "parameters": {}}]',
        "conversations": [
            {"from": "human", "value": "Find rice."},
            {"from": "function_call", "value": '{"name": "search", "arguments": {"q": "rice"}}'},
            {"from": "observation", "value": '{"hits": 3}'},
            {"from": "gpt", "value": "Three hits."},
        ],
    }
    chat, reason = to_chat(record)
    assert reason == ""
    call_id = chat["messages"][2]["tool_calls"][0]["id"]
    assert re.fullmatch(r"[0-9A-Za-z]{9}", call_id)
    assert chat == {
        "messages": [
            {"role": "system", "content": "You call tools."},
            {"role": "user", "content": "Find rice."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "search", "arguments": '{"q":"rice"}'}}]},
            {"role": "tool", "tool_call_id": call_id, "name": "search", "content": '{"hits": 3}'},
            {"role": "assistant", "content": "Three hits."},
        ],
        "tools": [{"name": "search", "parameters": {}}],
    }
    assert chat_errors(chat) == []
    assert SHAREGPT_ROLES["human"] == "user" and SHAREGPT_ROLES["gpt"] == "assistant"
    assert MAPPING["sharegpt"]["observation"] == "tool"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from: unknown role 'bot'"),
        ({"conversations": []}, "conversations: expected a non-empty array"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "oops"}]},
         "conversations[1].value: function_call is not JSON"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "a"}]},
         "conversations[1]: a tool result (observation) that answers no function_call"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt record maps to no assistant message"),
        ({"conversations": [{"from": "human", "value": 3}]}, "conversations[0].value: expected a string, got a number"),
        ({"instruction": "", "input": "", "output": "A"}, "instruction and input are both missing or empty"),
        ({"instruction": "Q", "output": 5}, "output: expected a string, got a number"),
        ({"instruction": "Q"}, "missing required key 'output'"),
        ({"instruction": "Q", "output": "A", "history": [["only one"]]}, "history[0]: expected a [query, response] pair"),
        ({"prompt": "Q"}, "missing required key 'completion'"),
        ({"text": "plain prose"}, "text record: no roles to map"),
        ({"foo": 1}, "unknown record kind (keys: 'foo')"),
        ([1, 2], "expected a JSON object, got an array"),
    ],
)
def test_records_that_cannot_be_mapped_say_why(record, reason):
    chat, why = to_chat(record)
    assert chat is None
    assert reason in why


def test_prompt_completion_both_forms():
    assert to_chat({"prompt": "2+2?", "completion": "4"})[0] == {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    }
    conversational = {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    assert to_chat(conversational)[0] == {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    }


def test_chat_records_come_back_unchanged():
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x": 1}
    chat, reason = to_chat(record)
    assert chat is record and reason == ""


def test_every_generated_record_converts_to_valid_chat(tmp_path):
    mixed.write_mixed(tmp_path / "m.jsonl", records=200, seed=5)
    lines = (tmp_path / "m.jsonl").read_bytes().splitlines()
    for line in lines:
        chat, reason = to_chat(orjson.loads(line))
        assert chat is not None, reason
        assert chat_errors(chat) == [], line


@pytest.mark.parametrize(
    ("name", "count", "broken"),
    [
        ("alpaca_en_demo.json", 999, {}),
        # the one call off its declared schema (test_validate's real-file test) stays off it
        ("glaive_toolcall_en_demo.json", 300, {259: "messages[3].tool_calls[0].function.arguments.calories_per_item"}),
    ],
)
def test_real_data_converts_to_valid_chat(name, count, broken):
    path = REALDATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared real-data folder)")
    records = orjson.loads(Path(path).read_bytes())
    assert len(records) == count
    failures = []
    for i, record in enumerate(records):
        chat, reason = to_chat(record)
        if chat is None:
            failures.append((i, reason))
        elif errors := chat_errors(chat):
            failures.append((i, errors))
    assert [(i, e[0].split(":")[0]) for i, e in failures] == list(broken.items())


def test_tool_call_ids_are_stable_and_pair_calls_with_results():
    """Issue 17.9: --to chat wrote tool calls without `id` and tool messages without `tool_call_id`."""
    record = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris and Rome?"},
            {"from": "function_call", "value": '[{"name": "weather", "arguments": {"city": "Paris"}},'
                                               ' {"name": "weather", "arguments": {"city": "Rome"}}]'},
            {"from": "observation", "value": "12C"},
            {"from": "observation", "value": "19C"},
            {"from": "function_call", "value": '{"name": "convert", "arguments": {"c": 12}}'},
            {"from": "observation", "value": "53F"},
            {"from": "gpt", "value": "Paris 12C (53F), Rome 19C."},
        ],
    }
    first, _ = to_chat(record)
    again, _ = to_chat(orjson.loads(orjson.dumps(record)))
    assert first == again  # same input, same ids
    calls = [c for m in first["messages"] if m.get("tool_calls") for c in m["tool_calls"]]
    results = [m for m in first["messages"] if m["role"] == "tool"]
    assert len({c["id"] for c in calls}) == 3
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in calls]
    assert [r["name"] for r in results] == ["weather", "weather", "convert"]
    other, _ = to_chat({**record, "conversations": [{"from": "human", "value": "Other?"}, *record["conversations"][1:]]})
    assert [c["id"] for m in other["messages"] if m.get("tool_calls") for c in m["tool_calls"]] != [c["id"] for c in calls]
    assert chat_errors(first) == []
