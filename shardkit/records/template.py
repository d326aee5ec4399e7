"""A model's chat template, rendered offline the way transformers renders it, and the
assistant spans a trainer computes its loss on.

The template is the ``chat_template`` of the model folder's ``tokenizer_config.json`` (a string,
or a list of named templates: ``default`` is used) or its ``chat_template.jinja`` file, which
wins when both exist, as in transformers. It is rendered by jinja2's immutable sandbox with
transformers' settings (``trim_blocks``, ``lstrip_blocks``, the loop-controls extension, a
``tojson`` that keeps non-ASCII, ``raise_exception``, ``strftime_now``) and the special tokens
of the config (``bos_token``, ``eos_token``, ...) as variables. transformers is not needed.

Assistant spans (what a trainer's loss mask keeps), in characters of the rendered text:

- a template with ``{% generation %}`` blocks marks them itself: each block's output is a span;
- otherwise assistant message ``i`` spans from the end of rendering ``messages[:i]`` with
  ``add_generation_prompt=True`` to the end of rendering ``messages[:i+1]``: its role header
  falls outside, its content and end-of-turn markup inside. This *prefix rule* needs each of
  those renderings to be a prefix of the whole conversation's; a template that rewrites
  earlier turns (one that drops the reasoning of past turns, say) breaks it, and
  `Rendered.problem` says where.

``strftime_now`` gives the date of $SOURCE_DATE_EPOCH when set, else 2024-07-26 (the date
Llama 3.1's template falls back to), so a rendering never depends on the day it runs.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from shardkit.core.errors import InputError, UsageError
from shardkit.records.convert import to_chat

__all__ = ["ChatTemplate", "Rendered", "TemplateError", "chat_view", "load_chat_template"]

CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_DEFAULT_DATE = datetime.datetime(2024, 7, 26, tzinfo=datetime.UTC)


class TemplateError(Exception):
    """The template refused or failed to render a record (its message says why)."""


class Rendered(NamedTuple):
    """One record through the template: the text, the assistant spans (start, end) in
    characters, and why the spans are unknown (None when they are known)."""

    text: str
    spans: tuple[tuple[int, int], ...]
    problem: str | None


def load_chat_template(path: str | Path) -> ChatTemplate | None:
    """The chat template of a model folder (or of the folder a tokenizer.json is in); None
    when it has none. Raises `InputError` for an unreadable config or a template that does
    not compile, `UsageError` when jinja2 is missing."""
    folder = Path(path)
    if not folder.is_dir():
        folder = folder.parent
    source, name = None, None
    config: dict = {}
    config_file = folder / CONFIG_FILE
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{config_file}: cannot read it as JSON ({e})") from None
        if type(config) is not dict:
            raise InputError(f"{config_file}: expected a JSON object")
        source, name = _from_config(config.get("chat_template"), config_file)
    template_file = folder / TEMPLATE_FILE
    if template_file.is_file():
        try:
            source, name = template_file.read_text(encoding="utf-8"), str(template_file)
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{template_file}: cannot read it ({e})") from None
    if source is None:
        return None
    return ChatTemplate(source, special_tokens=_special_tokens(config), name=name)


def _from_config(value: object, where: Path) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if type(value) is str:
        return value, f"{where}: chat_template"
    if type(value) is list:  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in value if type(t) is dict}
        chosen = named.get("default", next(iter(named.values()), None))
        if type(chosen) is str:
            return chosen, f"{where}: chat_template 'default'"
    raise InputError(f"{where}: chat_template is neither a string nor a list of named templates")


def _special_tokens(config: dict) -> dict[str, str]:
    out = {}
    for key in _SPECIAL_KEYS:
        value = config.get(key)
        if type(value) is dict:  # {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if type(value) is str:
            out[key] = value
    return out


def _environment() -> Any:
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise UsageError("chat templates need the 'jinja2' package: pip install 'shardkit[tokens]'") from None

    class GenerationBlocks(Extension):
        """``{% generation %}...{% endgeneration %}``: records where each block's output lands."""

        tags = {"generation"}

        def __init__(self, environment: Any) -> None:
            super().__init__(environment)
            self.written: list[str] | None = None  # what the render has produced so far
            self.spans: list[tuple[int, int]] = []

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

        def _mark(self, caller: Any) -> str:
            out = caller()
            if self.written is not None:
                start = sum(map(len, self.written))
                self.spans.append((start, start + len(out)))
            return out

    def raise_exception(message: str) -> None:
        raise TemplateError(str(message))

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch and epoch.isdigit() else _DEFAULT_DATE
        return when.strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env, GenerationBlocks, jinja2.TemplateError


def chat_view(obj: object, kind: str | None) -> tuple[list, list | None] | None:
    """(messages, tools) a record is rendered from: a chat record's own; alpaca, sharegpt and
    prompt-completion records mapped to chat as `split --to chat` maps them; None for kinds
    a chat template does not render (text, preference, kto)."""
    if kind == "chat" and type(obj) is dict:
        chat = obj
    elif kind in ("alpaca", "sharegpt", "prompt-completion"):
        chat = to_chat(obj, kind)[0]
        if chat is None:
            return None
    else:
        return None
    messages, tools = chat.get("messages"), chat.get("tools")
    if type(messages) is not list:
        return None
    return messages, tools if type(tools) is list else None


class ChatTemplate:
    """A compiled chat template. `render` gives the text; `assistant_spans` the text and the
    character spans of the assistant turns (see the module docstring)."""

    def __init__(self, source: str, *, special_tokens: dict[str, str] | None = None, name: str = "chat template") -> None:
        env, extension, jinja_error = _environment()
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        self.marks_generation = bool(_GENERATION_TAG.search(source))
        self._jinja_error = jinja_error
        try:
            self._template = env.from_string(source)
        except jinja_error as e:
            raise InputError(f"{name}: the chat template does not compile: {e}") from None
        self._tracker = env.extensions[extension.identifier]
        # rendered through the compiled root function with a shared context: a third less
        # per-render overhead than Template.generate, which copies the globals every time
        self._globals = {**env.globals, **self.special_tokens}

    def render(self, messages: list, *, tools: list | None = None, add_generation_prompt: bool = False) -> str:
        """The text of `messages` (raises `TemplateError` when the template refuses them)."""
        return self._render(messages, tools, add_generation_prompt, track=False)[0]

    def _render(self, messages: list, tools: list | None, add_generation_prompt: bool, track: bool) -> tuple[str, list]:
        variables = {**self._globals, "messages": messages, "add_generation_prompt": add_generation_prompt}
        if tools is not None:
            variables["tools"] = tools
        tracker = self._tracker
        written: list[str] = []
        tracker.written, tracker.spans = (written, []) if track else (None, [])
        template = self._template
        try:
            for chunk in template.root_render_func(template.new_context(variables, shared=True)):
                written.append(chunk)
        except TemplateError:
            raise
        except self._jinja_error as e:
            raise TemplateError(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # whatever a template's expressions raise on odd data
            raise TemplateError(f"the template failed on this record ({type(e).__name__}: {e})") from None
        finally:
            tracker.written = None
        return "".join(written), tracker.spans

    def assistant_spans(self, messages: list, *, tools: list | None = None) -> Rendered:
        """The whole conversation's text and its assistant spans."""
        text, marked = self._render(messages, tools, False, track=self.marks_generation)
        if self.marks_generation:
            return Rendered(text, tuple(marked), None)
        spans = []
        for i, m in enumerate(messages):
            if type(m) is not dict or m.get("role") != "assistant":
                continue
            try:
                before = self._render(messages[:i], tools, True, track=False)[0]
            except TemplateError:
                if i:
                    raise
                before = ""  # a template that needs a message before the first answer
            last = i == len(messages) - 1
            through = text if last else self._render(messages[: i + 1], tools, False, track=False)[0]
            if not through.startswith(before):
                return Rendered(text, (), f"rendering messages[:{i}] with add_generation_prompt=True is not a prefix of rendering messages[:{i + 1}]")
            if not text.startswith(through):
                return Rendered(text, (), f"rendering messages[:{i + 1}] is not a prefix of the whole conversation's (the template rewrites earlier turns)")
            spans.append((len(before), len(through)))
        return Rendered(text, tuple(spans), None)
