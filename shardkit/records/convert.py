"""`split --to chat`: turn alpaca, sharegpt and prompt/completion records into chat `messages`.

One format for the trainer: ``{"messages": [{"role": ..., "content": ...}, ...]}``, the
shape `validate --kind chat` accepts. `to_chat` is pure and never raises per record: a
record it cannot map comes back as ``(None, reason)`` and the pipeline rejects it with that
reason (nothing is dropped silently). A chat record is returned as it is (the pipeline keeps
its original bytes); every converted record is re-serialised by the pipeline.

Mappings (`MAPPING` goes into the manifest as it is):

- alpaca: ``system`` (if non-empty) -> system; each ``history`` pair [query, response] ->
  user, assistant; ``instruction`` and ``input`` joined by ``"\\n"`` (``input`` left out
  when empty, as LLaMA-Factory does) -> user; ``output`` -> assistant.
- sharegpt: ``system`` (if non-empty) -> system first; each turn's ``from`` through
  `SHAREGPT_ROLES` (human -> user, gpt -> assistant, ...) and ``value`` -> content. A
  ``function_call`` turn holds a JSON call ``{"name", "arguments"}`` (or a list of them) and
  becomes an assistant message with ``tool_calls`` (each with a stable ``id``: 9 letters and
  digits hashed from the record and the call's place); ``observation``/``tool`` become tool
  messages answering the calls in order (``tool_call_id``, ``name``; a result that answers no
  call is unmappable); ``tools`` (a JSON string or an array) becomes the chat record's ``tools`` array.
- prompt-completion: ``prompt`` -> user, ``completion`` -> assistant; TRL's conversational
  form (both lists of messages) is concatenated.
- ``id`` is kept; any other key the format does not map is kept under ``metadata`` (merged
  into an existing ``metadata`` object), so no field is lost.

Rejected (reason given): text records (no roles to map), unknown kinds, wrong types, an
unknown sharegpt role, a function_call that is not a JSON call, and a conversation whose
turns map to no assistant message.
"""

from __future__ import annotations

import hashlib

import orjson

from shardkit.records.validate import detect_kind, json_type_name

__all__ = ["MAPPING", "SHAREGPT_ROLES", "to_chat"]

SHAREGPT_ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

MAPPING: dict[str, dict[str, str]] = {
    "sharegpt": {**SHAREGPT_ROLES, "system (key)": "system"},
    "alpaca": {
        "system": "system",
        "history[i][0]": "user",
        "history[i][1]": "assistant",
        "instruction + \\n + input": "user",
        "output": "assistant",
    },
    "prompt-completion": {"prompt": "user", "completion": "assistant"},
    "chat": {"messages": "messages (unchanged)"},
}

_ALPACA_KEYS = ("instruction", "input", "output", "system", "history")
_SHAREGPT_KEYS = ("conversations", "system", "tools")
_PROMPT_COMPLETION_KEYS = ("prompt", "completion")
_KEPT_KEYS = ("id",)


def to_chat(obj: object, kind: str | None = None) -> tuple[dict | None, str]:
    """`obj` as a chat record, or ``(None, reason)`` when it cannot be mapped.

    `kind` is the record's kind when known (from validation), else it is detected from
    the keys (`validate.detect_kind`). A chat record is returned unchanged.
    """
    if type(obj) is not dict:
        return None, f"expected a JSON object, got {json_type_name(obj)}"
    if kind is None:
        kind = detect_kind(obj)
    convert = _CONVERTERS.get(kind)  # type: ignore[arg-type]
    if kind == "chat":
        return obj, ""
    if kind in ("preference", "kto"):
        return None, f"{kind} record: --to chat would drop a side of the pair (preference data stays as it is)"
    if kind == "text":
        return None, "text record: no roles to map to chat messages (--to chat needs chat, alpaca, sharegpt or prompt-completion)"
    if convert is None:
        keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
        return None, f"unknown record kind (keys: {keys}); --to chat maps alpaca, sharegpt and prompt-completion"
    try:
        messages, extra = convert(obj)
    except _Unmappable as e:
        return None, str(e)
    if not any(m["role"] == "assistant" for m in messages):
        return None, f"{kind} record maps to no assistant message"
    return _finish(obj, messages, extra, mapped=_MAPPED_KEYS[kind])


class _Unmappable(Exception):
    """The reason a record cannot be mapped (caught in `to_chat`)."""


def _finish(obj: dict, messages: list[dict], extra: dict, *, mapped: tuple[str, ...]) -> tuple[dict | None, str]:
    record: dict = {"messages": messages, **extra}
    for key in _KEPT_KEYS:
        if key in obj:
            record[key] = obj[key]
    leftover = {k: v for k, v in obj.items() if k not in mapped and k not in _KEPT_KEYS and k != "metadata"}
    if "metadata" not in obj:
        if leftover:
            record["metadata"] = leftover
        return record, ""
    metadata = obj["metadata"]
    if leftover:
        if type(metadata) is not dict:
            return None, f"metadata is {json_type_name(metadata)}, so the unmapped keys {sorted(leftover)} have nowhere to go"
        clash = sorted(metadata.keys() & leftover.keys())
        if clash:
            return None, f"unmapped keys {clash} are also in metadata; keeping both would lose one"
        metadata = {**metadata, **leftover}
    record["metadata"] = metadata
    return record, ""


# ---------------------------------------------------------------- per kind


def _text(obj: dict, key: str, *, required: bool = True) -> str | None:
    """obj[key] as a string (empty allowed: `validate` warns about it); None when absent."""
    if key not in obj:
        if required:
            raise _Unmappable(f"missing required key {key!r}")
        return None
    value = obj[key]
    if value is None and not required:
        return None
    if type(value) is not str:
        raise _Unmappable(f"{key}: expected a string, got {json_type_name(value)}")
    return value


def _alpaca(obj: dict) -> tuple[list[dict], dict]:
    messages: list[dict] = []
    system = _text(obj, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = obj.get("history")
    if history is not None:
        if type(history) is not list:
            raise _Unmappable(f"history: expected an array of [query, response] pairs, got {json_type_name(history)}")
        for i, pair in enumerate(history):
            if type(pair) is not list or len(pair) != 2 or not all(type(s) is str for s in pair):
                raise _Unmappable(f"history[{i}]: expected a [query, response] pair of strings")
            messages.append({"role": "user", "content": pair[0]})
            messages.append({"role": "assistant", "content": pair[1]})
    instruction = _text(obj, "instruction", required=False) or ""
    extra = _text(obj, "input", required=False) or ""
    query = "\n".join(part for part in (instruction, extra) if part)
    if not query:
        raise _Unmappable("instruction and input are both missing or empty: no user message")
    messages.append({"role": "user", "content": query})
    messages.append({"role": "assistant", "content": _text(obj, "output")})
    return messages, {}


def _sharegpt(obj: dict) -> tuple[list[dict], dict]:
    turns = obj.get("conversations")
    if type(turns) is not list or not turns:
        raise _Unmappable("conversations: expected a non-empty array of turns")
    messages: list[dict] = []
    system = _text(obj, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    pending: list[dict] = []  # calls of the last function_call turn not answered yet, in order
    ids = _CallIds(obj)
    for i, turn in enumerate(turns):
        if type(turn) is not dict:
            raise _Unmappable(f"conversations[{i}]: expected an object, got {json_type_name(turn)}")
        source = turn.get("from")
        role = SHAREGPT_ROLES.get(source) if type(source) is str else None
        if role is None:
            known = ", ".join(SHAREGPT_ROLES)
            raise _Unmappable(f"conversations[{i}].from: unknown role {source!r} (known: {known})")
        value = turn.get("value")
        if type(value) is not str:
            raise _Unmappable(f"conversations[{i}].value: expected a string, got {json_type_name(value)}")
        if source == "function_call":
            calls = _tool_calls(value, i, ids)
            pending = list(calls)
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        elif role == "tool":
            if not pending:
                raise _Unmappable(f"conversations[{i}]: a tool result ({source}) that answers no function_call")
            call = pending.pop(0)
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                             "content": value})
        else:
            messages.append({"role": role, "content": value})
    extra: dict = {}
    if "tools" in obj and obj["tools"] not in ("", None):
        extra["tools"] = _tools(obj["tools"])
    return messages, extra


class _CallIds:
    """Tool call ids for one record: 9 letters and digits (the shape the strictest chat
    templates accept), from a hash of the record and the call's place in it, so the same
    input always gets the same ids."""

    def __init__(self, obj: dict) -> None:
        self.obj = obj
        self.seed: bytes | None = None

    def __call__(self, turn: int, k: int) -> str:
        if self.seed is None:
            self.seed = hashlib.sha256(orjson.dumps(self.obj, option=orjson.OPT_SORT_KEYS)).digest()
        n = int.from_bytes(hashlib.sha256(self.seed + b"%d:%d" % (turn, k)).digest()[:8], "big")
        chars = []
        for _ in range(9):
            n, r = divmod(n, 62)
            chars.append(_ID_ALPHABET[r])
        return "".join(chars)


_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _tool_calls(value: str, i: int, ids: _CallIds) -> list[dict]:
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise _Unmappable(f"conversations[{i}].value: function_call is not JSON") from None
    calls = decoded if type(decoded) is list else [decoded]
    out = []
    for call in calls:
        if type(call) is not dict or type(call.get("name")) is not str:
            raise _Unmappable(f"conversations[{i}].value: function_call is not a {{\"name\", \"arguments\"}} object")
        arguments = call.get("arguments", {})
        if type(arguments) is not str:
            arguments = orjson.dumps(arguments).decode()
        out.append({"id": ids(i, len(out)), "type": "function",
                    "function": {"name": call["name"], "arguments": arguments}})
    return out


def _tools(tools: object) -> list:
    if type(tools) is str:
        try:
            tools = orjson.loads(tools)
        except orjson.JSONDecodeError:
            raise _Unmappable("tools: a string that is not JSON") from None
    if type(tools) is not list:
        raise _Unmappable(f"tools: expected an array (or a JSON string of one), got {json_type_name(tools)}")
    return tools


def _prompt_completion(obj: dict) -> tuple[list[dict], dict]:
    prompt, completion = obj.get("prompt"), obj.get("completion")
    if type(prompt) is list and type(completion) is list:  # TRL's conversational form
        messages = prompt + completion
        if not all(type(m) is dict and type(m.get("role")) is str for m in messages):
            raise _Unmappable("prompt/completion: expected arrays of {role, content} messages")
        return messages, {}
    return [
        {"role": "user", "content": _text(obj, "prompt")},
        {"role": "assistant", "content": _text(obj, "completion")},
    ], {}


_CONVERTERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "prompt-completion": _prompt_completion}
_MAPPED_KEYS = {"alpaca": _ALPACA_KEYS, "sharegpt": _SHAREGPT_KEYS, "prompt-completion": _PROMPT_COMPLETION_KEYS}


