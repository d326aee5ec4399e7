"""Tool calls checked against the tools a record declares.

A chat template renders the record's `tools` into the prompt; a trainer then teaches the model
the calls in the assistant turns. Three things go wrong in real data and are found only
mid-run, if at all:

- a call names a function the record never declared (the model learns to call a tool it was
  never shown);
- a call's `arguments` is not a JSON object, or breaks the function's `parameters` JSON Schema
  (a required property missing, a wrong type, a value outside its enum);
- tool results and calls do not pair up: a call no `tool` message answers before the next
  assistant or user turn, a result that answers no call, a call answered twice.

`check_chat_tools` (OpenAI `messages` with `tool_calls` / `tool` messages) and
`check_sharegpt_tools` (`function_call` / `observation` turns, `tools` as a JSON string) add
one `Issue` per finding, at a JSON path such as
``messages[3].tool_calls[0].function.arguments.unit``. They run in the explain step only: the
validator's fast gate sends every record with tool calls or tool results here.

Codes:
  unknown_tool          error    calls {name!r}, which the record's tools do not declare (...)
  undeclared_tools      warning  the record calls tools but declares none (`tools` is missing)
  tool_arguments        error    arguments is not valid JSON | not an object | double-encoded
  arguments_schema      error    {jsonschema's message}  (at the argument's path)
  tool_schema           error    the function's parameters is not a valid JSON Schema: ...
  duplicate_call_id     error    tool call id {id!r} is used twice in this turn
  unanswered_tool_call  error    no tool message answers call {id!r} before messages[j]
  orphan_tool_result    error    answers no tool call (...)
  duplicate_tool_result error    answers call {id!r} a second time (messages[j] answered it)
"""

from __future__ import annotations

import functools

import orjson

from shardkit.records.issue import Issue, closest, error, json_type_name, key_path, show, warning

__all__ = ["TOOL_CODES", "check_chat_tools", "check_sharegpt_tools", "has_tool_traffic"]

TOOL_CODES = {
    "unknown_tool": "error",
    "undeclared_tools": "warning",
    "tool_arguments": "error",
    "arguments_schema": "error",
    "tool_schema": "error",
    "duplicate_call_id": "error",
    "unanswered_tool_call": "error",
    "orphan_tool_result": "error",
    "duplicate_tool_result": "error",
}

MAX_SCHEMA_ERRORS = 5  # per call: the first few say enough


def has_tool_traffic(messages: object) -> bool:
    """True when a chat record has tool calls or tool results (then `check_chat_tools` runs)."""
    for m in messages if type(messages) is list else ():
        if type(m) is dict and (m.get("role") == "tool" or "tool_calls" in m or "function_call" in m):
            return True
    return False


# ------------------------------------------------------------------ declarations


class _Declared:
    """The functions a record declares: name -> (path of its parameters, schema or None)."""

    def __init__(self) -> None:
        self.functions: dict[str, tuple[str, object]] = {}
        self.present = False  # a tools (or functions) list exists, even an empty one

    def add(self, entry: object, path: str) -> None:
        if type(entry) is not dict:
            return  # the kind's explainer reports the wrong type
        function = entry.get("function") if type(entry.get("function")) is dict else entry
        base = f"{path}.function" if function is not entry else path
        name = function.get("name")
        if type(name) is str:
            self.functions[name] = (f"{base}.parameters", function.get("parameters"))


def _chat_declared(obj: dict) -> _Declared:
    declared = _Declared()
    for key in ("tools", "functions"):
        entries = obj.get(key)
        if type(entries) is list:
            declared.present = True
            for i, entry in enumerate(entries):
                declared.add(entry, f"{key}[{i}]")
    return declared


def _sharegpt_declared(obj: dict, issues: list[Issue]) -> _Declared:
    declared = _Declared()
    tools = obj.get("tools")
    if type(tools) is str:
        if not tools.strip():
            return declared
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError as exc:
            issues.append(error("tool_schema", "tools", f"tools is not valid JSON (column {exc.pos + 1}: {exc.msg})"))
            return declared
    if type(tools) is list:
        declared.present = True
        for i, entry in enumerate(tools):
            declared.add(entry, f"tools[{i}]")
    elif tools is not None:
        issues.append(error("tool_schema", "tools", f"tools should hold an array, got {json_type_name(tools)}"))
    return declared


# ------------------------------------------------------------------ one call


def _check_call(
    name: object, arguments: object, has_arguments: bool, path: str, declared: _Declared, issues: list[Issue]
) -> None:
    """One call: its name is declared, its arguments an object valid against the parameters."""
    if type(name) is str and name not in declared.functions:
        if not declared.present:
            issues.append(
                warning(
                    "undeclared_tools",
                    f"{path}.name",
                    f"calls {show(name)}, but the record declares no tools: the chat template "
                    "shows the model no function to call",
                )
            )
        else:
            names = sorted(declared.functions)
            listed = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"
            guess = closest(name, names)
            hint = f"; did you mean {guess!r}?" if guess else ""
            issues.append(
                error(
                    "unknown_tool",
                    f"{path}.name",
                    f"calls {show(name)}, which the record's tools do not declare (declared: {listed}{hint})",
                )
            )
    value = _arguments_object(arguments, f"{path}.arguments", issues) if has_arguments else {}
    if value is None or type(name) is not str or name not in declared.functions:
        return
    schema_path, schema = declared.functions[name]
    if schema is None:
        return
    validator = _validator(schema, schema_path, issues)
    if validator is None:
        return
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    for e in errors[:MAX_SCHEMA_ERRORS]:
        at = f"{path}.arguments"
        for part in e.absolute_path:
            at = f"{at}[{part}]" if isinstance(part, int) else key_path(at, str(part))
        issues.append(error("arguments_schema", at, f"{e.message} (the parameters of {name!r})"))
    if len(errors) > MAX_SCHEMA_ERRORS:
        more = len(errors) - MAX_SCHEMA_ERRORS
        issues.append(error("arguments_schema", f"{path}.arguments", f"... and {more} more schema errors"))


def _arguments_object(arguments: object, path: str, issues: list[Issue]) -> dict | None:
    """The arguments as an object (decoded when given as a JSON string), else None with an issue."""
    if type(arguments) is dict:
        return arguments
    if type(arguments) is not str:
        issues.append(
            error("wrong_type", path, f"expected a JSON string or an object, got {json_type_name(arguments)}")
        )
        return None
    try:
        decoded = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        issues.append(error("tool_arguments", path, f"arguments is not valid JSON (column {exc.pos + 1}: {exc.msg})"))
        return None
    if type(decoded) is dict:
        return decoded
    if type(decoded) is str:
        message = "arguments is a JSON string holding a string, not an object (double-encoded?)"
    else:
        message = f"arguments is JSON but not an object (got {json_type_name(decoded)})"
    issues.append(error("tool_arguments", path, message))
    return None


def _validator(schema: object, path: str, issues: list[Issue]):
    try:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        key = None
    if key is None:
        issues.append(error("tool_schema", path, "the function's parameters is not a valid JSON Schema"))
        return None
    validator, problem = _compiled(key)
    if problem is not None:
        issues.append(error("tool_schema", path, f"the function's parameters is not a valid JSON Schema: {problem}"))
    return validator


@functools.lru_cache(maxsize=512)
def _compiled(key: bytes):
    """(validator, None) or (None, why): one compile per distinct parameters schema."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    schema = orjson.loads(key)
    if type(schema) is not dict and type(schema) is not bool:
        return None, f"expected an object, got {json_type_name(schema)}"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        return None, e.message
    return Draft202012Validator(schema), None


# ------------------------------------------------------------------ chat


def check_chat_tools(obj: dict, issues: list[Issue]) -> None:
    """Every assistant tool call is declared, well-formed and answered exactly once by a
    `tool` message before the next assistant or user turn; every tool message answers one.

    A record may end on an assistant turn that calls tools (it teaches the call itself);
    otherwise each call is answered by a tool message with its `tool_call_id`, or, when the
    calls carry no ids, by the tool messages that follow, one each, in order."""
    messages = obj.get("messages")
    if type(messages) is not list:
        return
    declared = _chat_declared(obj)
    pending: dict[str, str] = {}  # call id -> path of the call
    anonymous = 0  # calls without an id still to answer
    answered: dict[str, int] = {}  # call id -> index of the tool message that answered it
    opened_at = -1  # index of the assistant turn whose calls are pending
    for i, m in enumerate(messages):
        if type(m) is not dict:
            continue
        role = m.get("role")
        if role == "tool":
            if opened_at < 0:
                issues.append(
                    error(
                        "orphan_tool_result",
                        f"messages[{i}]",
                        "tool message answers no tool call (no assistant message with tool_calls before it)",
                    )
                )
                continue
            call_id = m.get("tool_call_id")
            if type(call_id) is str:
                if call_id in pending:
                    del pending[call_id]
                    answered[call_id] = i
                elif call_id in answered:
                    issues.append(
                        error(
                            "duplicate_tool_result",
                            f"messages[{i}].tool_call_id",
                            f"answers call {show(call_id)} a second time (messages[{answered[call_id]}] answered it)",
                        )
                    )
                elif anonymous:
                    anonymous -= 1
                else:
                    waiting = ", ".join(show(k) for k in pending) or "none"
                    issues.append(
                        error(
                            "orphan_tool_result",
                            f"messages[{i}].tool_call_id",
                            f"answers no tool call of messages[{opened_at}]: no call has id {show(call_id)} (still unanswered: {waiting})",
                        )
                    )
            elif anonymous:
                anonymous -= 1
            elif pending:
                waiting = ", ".join(show(k) for k in pending)
                issues.append(
                    error(
                        "orphan_tool_result",
                        f"messages[{i}]",
                        f"tool message has no tool_call_id, but the calls of messages[{opened_at}] have ids ({waiting})",
                    )
                )
            else:
                issues.append(
                    error(
                        "orphan_tool_result",
                        f"messages[{i}]",
                        f"tool message answers no tool call: every call of messages[{opened_at}] is answered already",
                    )
                )
            continue
        if role in ("assistant", "user", "system"):
            _unanswered(pending, anonymous, opened_at, f"messages[{i}]", issues)
            pending, anonymous, answered, opened_at = {}, 0, {}, -1
        if role != "assistant":
            continue
        calls = m.get("tool_calls")
        if type(calls) is list and calls:
            opened_at = i
            for k, call in enumerate(calls):
                path = f"messages[{i}].tool_calls[{k}]"
                if type(call) is not dict:
                    continue
                function = call.get("function")
                if type(function) is dict:
                    _check_call(
                        function.get("name"), function.get("arguments"), "arguments" in function,
                        f"{path}.function", declared, issues,
                    )
                call_id = call.get("id")
                if type(call_id) is str:
                    if call_id in pending:
                        issues.append(
                            error("duplicate_call_id", f"{path}.id", f"tool call id {show(call_id)} is used twice in this turn")
                        )
                    pending[call_id] = path
                else:
                    anonymous += 1
        function_call = m.get("function_call")
        if type(function_call) is dict:  # the legacy single call, answered by a `function` message
            _check_call(
                function_call.get("name"), function_call.get("arguments"), "arguments" in function_call,
                f"messages[{i}].function_call", declared, issues,
            )
    last = len(messages) - 1
    if opened_at != last:  # a record may end on the call itself; not on half its answers
        _unanswered(pending, anonymous, opened_at, "the end of the record", issues)


def _unanswered(pending: dict[str, str], anonymous: int, opened_at: int, before: str, issues: list[Issue]) -> None:
    for call_id, path in pending.items():
        issues.append(
            error("unanswered_tool_call", f"{path}.id", f"no tool message answers call {show(call_id)} before {before}")
        )
    if anonymous:
        issues.append(
            error(
                "unanswered_tool_call",
                f"messages[{opened_at}].tool_calls",
                f"{anonymous} call(s) without an id have no tool message answering them before {before}",
            )
        )


# ------------------------------------------------------------------ sharegpt


def check_sharegpt_tools(obj: dict, issues: list[Issue]) -> None:
    """ShareGPT tool use (LLaMA-Factory's layout): a `function_call` turn holds a JSON call
    ({"name", "arguments"}, or an array of them) of a function declared in `tools` (a JSON
    string); the `observation` (or `tool`) turn right after it answers it; an observation
    anywhere else answers nothing."""
    turns = obj.get("conversations")
    if type(turns) is not list:
        return
    declared: _Declared | None = None
    waiting = -1  # index of a function_call turn not yet answered
    for i, turn in enumerate(turns):
        if type(turn) is not dict:
            continue
        role = turn.get("from")
        if role in ("observation", "tool"):
            if waiting < 0 and not (i and type(turns[i - 1]) is dict and turns[i - 1].get("from") in ("observation", "tool")):
                issues.append(
                    error(
                        "orphan_tool_result",
                        f"conversations[{i}]",
                        f"{role} turn answers no tool call (no function_call turn right before it)",
                    )
                )
            waiting = -1
            continue
        if waiting >= 0:
            issues.append(
                error(
                    "unanswered_tool_call",
                    f"conversations[{waiting}]",
                    f"no observation turn answers this function_call before conversations[{i}]",
                )
            )
            waiting = -1
        if role != "function_call":
            continue
        waiting = i
        if declared is None:
            declared = _sharegpt_declared(obj, issues)
        value = turn.get("value")
        if type(value) is not str:
            continue
        path = f"conversations[{i}].value"
        try:
            call = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            issues.append(error("tool_arguments", path, f"the function call is not valid JSON (column {exc.pos + 1}: {exc.msg})"))
            continue
        calls = call if type(call) is list else [call]
        for k, one in enumerate(calls):
            at = f"{path}[{k}]" if type(call) is list else path
            if type(one) is not dict:
                issues.append(error("tool_arguments", at, f"expected a call object (name, arguments), got {json_type_name(one)}"))
                continue
            _check_call(one.get("name"), one.get("arguments"), "arguments" in one, at, declared, issues)
