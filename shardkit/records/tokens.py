"""Token counting: load a Hugging Face tokenizer, pick the text of a record, count in batches.

The `tokenizers` package is optional (``pip install 'shardkit[tokens]'``) and imported only
when a tokenizer is loaded, so nothing else in shardkit pays for it.

Counts are of the record's *text* (`record_text`) without special tokens: a chat template
adds a few tokens per message on top, so treat the numbers as a close lower bound when
comparing with a trainer's ``max_seq_length``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from shardkit.core.errors import InputError, UsageError

__all__ = [
    "TokenCount",
    "TokenTally",
    "TokenizerLike",
    "count_spans",
    "loses_everything",
    "count_tokens",
    "load_tokenizer",
    "span_tokens",
    "record_text",
    "text_parts",
]

TOKENIZER_FILE = "tokenizer.json"
SEPARATOR = "\n"  # between the parts of one record's text


class TokenizerLike(Protocol):
    """What shardkit needs of a tokenizer: `tokenizers.Tokenizer` has it."""

    def encode_batch(self, inputs: list[str], add_special_tokens: bool = ...) -> list[Any]: ...


def load_tokenizer(path: str | Path) -> Any:
    """Load a `tokenizers.Tokenizer` from a ``tokenizer.json`` file, a model folder holding
    one, or a model id (``Qwen/Qwen3-0.6B``) already in the local Hugging Face cache
    (offline: nothing is downloaded).

    Truncation and padding stored in the file are switched off, so counts are never capped.
    Raises `UsageError` when the `tokenizers` package is missing and `InputError` when the
    path has no readable tokenizer.
    """
    file = _tokenizer_file(Path(path))
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError(
            "counting tokens needs the 'tokenizers' package: pip install 'shardkit[tokens]'"
        ) from None
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{file}: not a Hugging Face tokenizer file ({reason})") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _tokenizer_file(path: Path) -> Path:
    if path.is_dir():
        file = path / TOKENIZER_FILE
        if not file.is_file():
            raise InputError(
                f"{path}: no {TOKENIZER_FILE} in this folder "
                "(expected a Hugging Face model folder such as models/Qwen3-0.6B/)"
            )
        return file
    if not path.exists():
        cached = _from_hf_cache(str(path))
        if cached is not None:
            return cached
        where = f"; not a model in the Hugging Face cache either (looked in {hf_cache_dir() / _cache_name(str(path))})" \
            if _looks_like_model_id(str(path)) else ""
        raise InputError(f"{path}: no such file or folder (expected {TOKENIZER_FILE} or a model folder){where}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (expected {TOKENIZER_FILE} or a model folder)")
    return path


# ----- a model id (`Qwen/Qwen3-0.6B`) found in the local Hugging Face cache, offline


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps models: $HF_HUB_CACHE, else $HF_HOME/hub, else
    ~/.cache/huggingface/hub ($XDG_CACHE_HOME honoured)."""
    import os

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def _looks_like_model_id(text: str) -> bool:
    parts = text.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") and " " not in p for p in parts)


def _cache_name(model_id: str) -> str:
    return "models--" + model_id.replace("/", "--")


def _from_hf_cache(model_id: str) -> Path | None:
    """tokenizer.json of `model_id`'s snapshot in the cache: the one refs/main names, else
    the newest snapshot that has one; None when the cache does not hold it."""
    if not _looks_like_model_id(model_id):
        return None
    repo = hf_cache_dir() / _cache_name(model_id)
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    try:
        main = (repo / "refs" / "main").read_text().strip()
    except OSError:
        main = None
    if main and (snapshots / main / TOKENIZER_FILE).is_file():
        return snapshots / main / TOKENIZER_FILE
    found = [d / TOKENIZER_FILE for d in snapshots.iterdir() if (d / TOKENIZER_FILE).is_file()]
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens in each text (no special tokens), encoded as one batch on all cores."""
    if not texts:
        return []
    encode = getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch
    return [len(encoding) for encoding in encode(texts, add_special_tokens=False)]


class TokenCount(NamedTuple):
    """One rendered record's tokens: all of them, those in assistant spans, and the index of
    the first assistant token (-1: none; `assistant` is None when the spans are unknown)."""

    tokens: int
    assistant: int | None
    first_assistant: int


def count_spans(tokenizer: Any, texts: list[str], spans: list[tuple[tuple[int, int], ...] | None]) -> list[TokenCount]:
    """Tokenize `texts` as one batch (no special tokens added: a template writes its own) and
    count, per text, the tokens that overlap its character `spans` (None: spans unknown).

    A token that straddles a span's edge counts as inside, as transformers' assistant mask
    does (it maps the span's first and last characters to their tokens)."""
    if not texts:
        return []
    out = []
    for text_spans, encoding in zip(spans, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True):
        n = len(encoding)
        if text_spans is None:
            out.append(TokenCount(n, None, -1))
            continue
        ranges = span_tokens(encoding, text_spans)
        out.append(TokenCount(n, sum(k1 - k0 + 1 for k0, k1 in ranges), ranges[0][0] if ranges else -1))
    return out


def span_tokens(encoding: Any, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (first, last) token of each character span of an encoded text; a token that
    straddles a span's edge is inside it; a span holding no token is left out."""
    out = []
    char_to_token = encoding.char_to_token
    for start, end in spans:
        k0 = next((k for pos in range(start, end) if (k := char_to_token(pos)) is not None), None)
        if k0 is None:
            continue  # the span holds no token (empty, or only what the normalizer drops)
        k1 = next(k for pos in range(end - 1, start - 1, -1) if (k := char_to_token(pos)) is not None)
        out.append((k0, k1))
    return out


@dataclass
class TokenTally:
    """Token lengths of checked records, mergeable across blocks and processes: exact
    percentiles in memory that grows with the distinct lengths, not the records."""

    limit: int | None = None
    template: str | None = None  # the chat template records were rendered with
    lengths: dict[int, int] = field(default_factory=dict)
    tokens: int = 0
    assistant: int = 0  # tokens in assistant spans, over the records whose spans are known
    spanned_tokens: int = 0  # all tokens of those records
    over: int = 0
    no_loss: int = 0  # over the limit with every assistant token beyond it (or none at all)

    def add(self, count: TokenCount) -> None:
        n = count.tokens
        self.lengths[n] = self.lengths.get(n, 0) + 1
        self.tokens += n
        if count.assistant is not None:
            self.assistant += count.assistant
            self.spanned_tokens += n
        if self.limit is not None and n > self.limit:
            self.over += 1
        if loses_everything(count, self.limit):
            self.no_loss += 1

    def merge(self, other: TokenTally) -> None:
        for n, k in other.lengths.items():
            self.lengths[n] = self.lengths.get(n, 0) + k
        self.tokens += other.tokens
        self.assistant += other.assistant
        self.spanned_tokens += other.spanned_tokens
        self.over += other.over
        self.no_loss += other.no_loss

    @property
    def records(self) -> int:
        return sum(self.lengths.values())

    def percentile(self, q: float) -> int:
        """The smallest length at least a `q` share of the records have at most (nearest rank)."""
        total = self.records
        if not total:
            return 0
        rank = max(1, math.ceil(q * total))
        seen = 0
        for n in sorted(self.lengths):
            seen += self.lengths[n]
            if seen >= rank:
                return n
        return max(self.lengths)

    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "limit": self.limit,
            "records": self.records,
            "total": self.tokens,
            "p50": self.percentile(0.5),
            "p90": self.percentile(0.9),
            "p99": self.percentile(0.99),
            "max": max(self.lengths, default=0),
            "over_limit": self.over,
            "no_loss": self.no_loss,
            "assistant_tokens": self.assistant if self.template else None,
            "assistant_share": round(self.assistant / self.spanned_tokens, 4) if self.template and self.spanned_tokens else None,
        }

    def lines(self) -> list[str]:
        d = self.to_dict()
        how = "after the chat template" if self.template else "of the record text (no chat template)"
        out = [
            f"tokens {how}: {d['total']:,} in {d['records']:,} records; p50 {d['p50']:,}  p90 {d['p90']:,}  "
            f"p99 {d['p99']:,}  max {d['max']:,}"
        ]
        if self.limit is not None:
            out.append(
                f"  over --max-tokens {self.limit:,}: {self.over:,} records; with no assistant token "
                f"within it (no loss at all): {self.no_loss:,}"
            )
        if d["assistant_share"] is not None:
            out.append(f"  assistant tokens (the loss): {d['assistant_tokens']:,}, {d['assistant_share']:.1%} of the templated tokens")
        return out


def loses_everything(count: TokenCount, limit: int | None) -> bool:
    """Truncated to `limit`, the record keeps no assistant token: it adds no loss at all."""
    if limit is None or count.assistant is None:
        return False
    return count.assistant == 0 or count.first_assistant >= limit


# --------------------------------------------------------------- the text of a record


def record_text(obj: object, kind: str | None) -> str:
    """The text that gets tokenized for a record of `kind`, its parts joined by newlines.

    chat: every message's content (a string, or a list of parts with ``text`` or
    ``value``); sharegpt: every turn's ``value``; alpaca: system, history, instruction,
    input, output; prompt-completion: prompt, completion; text: text; preference: prompt,
    chosen, rejected; kto: prompt, completion. Empty parts and
    values of the wrong type are left out; an unknown kind gives ''.
    """
    return SEPARATOR.join(text_parts(obj, kind))


def text_parts(obj: object, kind: str | None) -> list[str]:
    """The non-empty strings `record_text` joins (stats sums their lengths without joining)."""
    if type(obj) is not dict:
        return []
    extract = _EXTRACTORS.get(kind)  # type: ignore[arg-type]
    return extract(obj) if extract is not None else []


def _chat_parts(obj: dict) -> list[str]:
    return _message_parts(obj.get("messages"))


def _message_parts(messages: object) -> list[str]:
    parts: list[str] = []
    if type(messages) is not list:
        return parts
    append = parts.append
    for message in messages:
        if type(message) is dict:
            content = message.get("content")
            if type(content) is str:  # the common case, inline
                if content:
                    append(content)
            elif type(content) is list:
                add_content_parts(parts, content)
    return parts


def add_content_parts(parts: list[str], content: list) -> None:
    """Append the text of a list of content parts: strings, or objects with text or value."""
    for part in content:
        if type(part) is str:
            text = part
        elif type(part) is dict:
            text = part.get("text")
            if type(text) is not str:
                text = part.get("value")
        else:
            continue
        if type(text) is str and text:
            parts.append(text)


def _sharegpt_parts(obj: dict) -> list[str]:
    turns = obj.get("conversations")
    if type(turns) is not list:
        return []
    return [v for t in turns if type(t) is dict and type(v := t.get("value")) is str and v]


def _alpaca_parts(obj: dict) -> list[str]:
    parts = _strings(obj, ("system",))
    history = obj.get("history")
    if type(history) is list:
        for pair in history:
            if type(pair) is list:
                parts.extend(s for s in pair if type(s) is str and s)
    parts.extend(_strings(obj, ("instruction", "input", "output")))
    return parts


def _strings(obj: dict, keys: Sequence[str]) -> list[str]:
    return [v for k in keys if type(v := obj.get(k)) is str and v]


def _prompt_completion_parts(obj: dict) -> list[str]:
    return _strings(obj, ("prompt", "completion"))


def _text_parts(obj: dict) -> list[str]:
    return _strings(obj, ("text",))


def _sides(*keys: str):
    """Parts of keys that hold a string or a list of messages (preference, kto)."""

    def parts(obj: dict) -> list[str]:
        out: list[str] = []
        for key in keys:
            value = obj.get(key)
            if type(value) is str:
                if value:
                    out.append(value)
            elif type(value) is list:
                out.extend(_message_parts(value))
        return out

    return parts


_EXTRACTORS = {
    "chat": _chat_parts,
    "sharegpt": _sharegpt_parts,
    "alpaca": _alpaca_parts,
    "prompt-completion": _prompt_completion_parts,
    "text": _text_parts,
    "preference": _sides("prompt", "chosen", "rejected"),
    "kto": _sides("prompt", "completion"),
}
