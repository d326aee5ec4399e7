"""Records as the token streams a trainer reads: `input_ids` and `labels` (-100 where no loss).

A record is rendered by the model's chat template (`records.template`; alpaca, sharegpt and
prompt-completion records mapped to messages as ``--to chat`` maps them) and tokenized with its
``tokenizer.json`` (no special tokens added: the template writes its own). Its labels are
its tokens inside the assistant spans (the template's ``{% generation %}`` blocks, or the
prefix rule: each assistant turn's content and end-of-turn markup, not its role header) and
-100 elsewhere, so system, user and tool turns are masked. A text record is all labels.
Records are tokenized in batches (`encode`), so the tokenizer works on all cores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

from shardkit.core.errors import UsageError
from shardkit.records.template import TemplateError, chat_view, load_chat_template
from shardkit.records.tokens import load_tokenizer, record_text, span_tokens
from shardkit.records.validate import detect_kind

__all__ = ["IGNORE", "TokenModel", "Tokenized"]

IGNORE = -100  # the label of a token with no loss (PyTorch's cross-entropy ignore_index)


class Tokenized(NamedTuple):
    input_ids: list[int]
    labels: list[int]
    label_tokens: int  # tokens with a loss


class TokenModel:
    """A model folder's tokenizer and chat template, with the sha256 of each (the manifest
    records them, so a run can be reproduced and audited)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.tokenizer = load_tokenizer(path)
        self.template = load_chat_template(path)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        self.tokenizer_sha256 = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
        self.template_sha256 = hashlib.sha256(self.template.source.encode()).hexdigest() if self.template else None

    def describe(self) -> dict:
        return {"model": self.path, "tokenizer_sha256": self.tokenizer_sha256,
                "chat_template": self.template.name if self.template else None, "template_sha256": self.template_sha256}

    def encode(self, objs: list[Any]) -> list[Tokenized | tuple[str, str]]:
        """Each decoded record as a Tokenized, or (code, reason) when it cannot be."""
        out: list[Any] = [None] * len(objs)
        texts: list[str] = []
        spans: list[Any] = []
        where: list[int] = []
        for i, obj in enumerate(objs):
            kind = detect_kind(obj)
            if kind == "text":
                text = record_text(obj, kind)
                if not text:
                    out[i] = ("no_loss", "the record has no text")
                    continue
                texts.append(text)
                spans.append(None)  # every token a label
                where.append(i)
                continue
            view = chat_view(obj, kind)
            if view is None:
                out[i] = ("not_tokenizable", f"--tokenize takes chat, alpaca, sharegpt, prompt-completion and text records, "
                                             f"not {kind or 'this record'}")
                continue
            if self.template is None:
                out[i] = ("no_template", f"{self.path} has no chat template to render {kind} records with")
                continue
            try:
                rendered = self.template.assistant_spans(view[0], tools=view[1])
            except TemplateError as e:
                out[i] = ("template_error", f"the chat template cannot render this record: {e}")
                continue
            if rendered.problem is not None:
                out[i] = ("template_prefix", f"assistant tokens unknown: {rendered.problem}")
                continue
            texts.append(rendered.text)
            spans.append(rendered.spans)
            where.append(i)
        if texts:
            encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
            for i, text_spans, encoding in zip(where, spans, encodings, strict=True):
                out[i] = _labelled(encoding, text_spans)
        return out


def _labelled(encoding: Any, spans: Any) -> Tokenized:
    ids = encoding.ids  # a new list on every access
    if spans is None:
        return Tokenized(ids, encoding.ids, len(ids))
    labels = [IGNORE] * len(ids)
    count = 0
    for k0, k1 in span_tokens(encoding, spans):
        labels[k0 : k1 + 1] = ids[k0 : k1 + 1]
        count += k1 - k0 + 1
    return Tokenized(ids, labels, count)


def check_seq_len(seq_len: Any) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise UsageError(f"--seq-len must be a whole number >= 1 (got {seq_len!r})")
    return seq_len
