"""Eval leakage: which eval records also appear in the training data (`shardkit overlap`).

The eval inputs are read first into an index (one 128-bit hash per distinct key, with the
file:line of its first eval record); the training inputs are then streamed against it, so
memory grows with the eval set only. Inputs are JSON Lines or one JSON array (`.json`),
plain, gzip, zstd or stdin.

Keys (what "appears" means):

- ``record``: the whole record, as normalised JSON: decoded and re-encoded with sorted keys
  (orjson), so key order, insignificant whitespace and escape spelling (``\\u00e9`` vs
  ``é``) do not matter; values must be equal (``1`` and ``1.0`` differ). The same hash
  `shardkit stats` and `split --dedup exact` use (first 16 bytes of its sha256).
- ``first-user``: the first user turn: chat -> the first ``user`` message's content;
  sharegpt -> the first ``human`` turn; alpaca -> instruction and input joined by a newline;
  prompt-completion and kto -> the prompt (or, conversational, its first user message);
  preference -> the prompt (or its first user message; with no prompt key, chosen's).
- ``prompt``: everything before the first answer: chat -> the messages before the first
  assistant message (system included); sharegpt -> system and the turns before the first
  gpt/function_call turn; alpaca -> system, history, instruction, input;
  prompt-completion and kto -> the prompt; preference -> the prompt (with no prompt key,
  chosen's messages before its closing assistant turn).
- any other name: that top-level field (a string, or any JSON value normalised as above).

Text keys are normalised with `normalize_text`: Unicode NFKC, case-folded, every run of
whitespace made one space, trimmed; so ``"What  is\\nX?"`` and ``"what is x?"`` match.
Multi-part parts are joined by a newline before normalising. A record without the key
(e.g. a text record for ``first-user``) or a line that is not a JSON object is counted as
``unkeyed`` and never matches.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import orjson

from shardkit.core.errors import UsageError
from shardkit.core.io import BackgroundHasher, InputSpec, inspect_input
from shardkit.pipeline.shard import open_input
from shardkit.records.ngrams import DEFAULT_NGRAM, ngram_hashes, record_words
from shardkit.records.preference import prompt_messages
from shardkit.records.tokens import add_content_parts
from shardkit.records.validate import detect_kind

__all__ = [
    "BUILTIN_KEYS",
    "ContaminationResult",
    "EvalIndex",
    "NgramIndex",
    "OverlapResult",
    "find_contamination",
    "find_overlap",
    "key_function",
    "normalize_text",
    "record_hash",
]

BUILTIN_KEYS = ("record", "first-user", "prompt")
HASH_BYTES = 16

KeyFunction = Callable[[object], bytes | None]


def record_hash(obj: object) -> bytes:
    """128-bit hash of a decoded record's normalised JSON (sorted keys); as `stats` computes it."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).digest()[:HASH_BYTES]


def normalize_text(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed to one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def key_function(key: str) -> KeyFunction:
    """The key bytes of a decoded record for `key` (None: the record has no such key)."""
    if not key or type(key) is not str:
        raise UsageError(f"--key must be record, first-user, prompt or a field name (got {key!r})")
    if key == "record":
        return lambda obj: orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) if type(obj) is dict else None
    if key == "first-user":
        return lambda obj: _text_key(_first_user(obj))
    if key == "prompt":
        return lambda obj: _text_key(_prompt(obj))
    return lambda obj: _field_key(obj, key)


def _text_key(parts: list[str] | None) -> bytes | None:
    if not parts:
        return None
    text = normalize_text("\n".join(parts))
    return text.encode() if text else None


def _field_key(obj: object, name: str) -> bytes | None:
    if type(obj) is not dict or name not in obj or obj[name] is None:
        return None
    value = obj[name]
    if type(value) is str:
        return _text_key([value])
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _content_text(content: object) -> list[str]:
    if type(content) is str:
        return [content] if content else []
    parts: list[str] = []
    if type(content) is list:
        add_content_parts(parts, content)
    return parts


def _strings(obj: dict, *keys: str) -> list[str]:
    return [v for k in keys if type(v := obj.get(k)) is str and v]


def _first_user(obj: object) -> list[str] | None:
    kind = detect_kind(obj)  # None unless obj is a dict
    if kind == "chat":
        return _first_message(obj.get("messages"), "role", "content", ("user",))
    if kind == "sharegpt":
        return _first_message(obj.get("conversations"), "from", "value", ("human", "user"))
    if kind == "alpaca":
        return _strings(obj, "instruction", "input")
    if kind in ("prompt-completion", "kto"):
        prompt = obj.get("prompt")
        if type(prompt) is list:
            return _first_message(prompt, "role", "content", ("user",))
        return _strings(obj, "prompt")
    if kind == "preference":
        prompt = obj.get("prompt", obj.get("chosen"))  # no prompt key: chosen carries it
        if type(prompt) is list:
            return _first_message(prompt, "role", "content", ("user",))
        return [prompt] if type(prompt) is str and prompt else None
    return None


def _first_message(turns: object, role_key: str, text_key: str, roles: tuple[str, ...]) -> list[str] | None:
    if type(turns) is not list:
        return None
    for turn in turns:
        if type(turn) is dict and turn.get(role_key) in roles:
            return _content_text(turn.get(text_key))
    return None


def _prompt(obj: object) -> list[str] | None:
    kind = detect_kind(obj)
    if kind == "chat":
        return _before_answer(obj.get("messages"), "role", "content", ("assistant",))
    if kind == "sharegpt":
        before = _before_answer(obj.get("conversations"), "from", "value", ("gpt", "function_call", "assistant"))
        return _strings(obj, "system") + (before or [])
    if kind == "alpaca":
        parts = _strings(obj, "system")
        history = obj.get("history")
        if type(history) is list:
            for pair in history:
                if type(pair) is list:
                    parts.extend(s for s in pair if type(s) is str and s)
        return parts + _strings(obj, "instruction", "input")
    if kind in ("prompt-completion", "kto"):
        prompt = obj.get("prompt")
        if type(prompt) is list:
            return _before_answer(prompt, "role", "content", ("assistant",))
        return _strings(obj, "prompt")
    if kind == "preference":
        if "prompt" not in obj and type(obj.get("chosen")) is list:
            return [t for m in prompt_messages(obj["chosen"]) if type(m) is dict for t in _content_text(m.get("content"))]
        prompt = obj.get("prompt")
        if type(prompt) is list:
            return [t for m in prompt if type(m) is dict for t in _content_text(m.get("content"))]
        return _strings(obj, "prompt")
    return None


def _before_answer(turns: object, role_key: str, text_key: str, answers: tuple[str, ...]) -> list[str] | None:
    if type(turns) is not list:
        return None
    parts: list[str] = []
    for turn in turns:
        if type(turn) is not dict:
            continue
        if turn.get(role_key) in answers:
            break
        parts.extend(_content_text(turn.get(text_key)))
    return parts


# ---------------------------------------------------------------- reading


@dataclass(slots=True)
class SourceTally:
    """What was read from one input."""

    path: str
    records: int = 0
    unkeyed: int = 0  # not a JSON object, or no such key
    invalid: int = 0  # of those: lines that are not JSON (never compared, so counted apart)
    blank: int = 0
    bytes: int = 0
    sha256: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "records": self.records,
                "unkeyed": self.unkeyed, "invalid": self.invalid, "blank": self.blank}


BOM = b"\xef\xbb\xbf"


def loads_record(raw: bytes, loads=orjson.loads, decode_error=orjson.JSONDecodeError) -> object:
    """A line's JSON value; a leading UTF-8 BOM is skipped (the record is the same record
    for a leak check); NOT_JSON when it is not JSON."""
    try:
        return loads(raw)
    except decode_error:
        if raw.startswith(BOM):
            return loads_record(raw[3:])
        return NOT_JSON


NOT_JSON = type("NotJson", (), {"__repr__": lambda self: "NOT_JSON"})()


def iter_records(spec: InputSpec, tally: SourceTally) -> Iterator[tuple[int, object]]:
    """(line, decoded record or NOT_JSON) of every non-blank line of one input; counts
    into `tally` (records, invalid, blank, bytes, sha256)."""
    from shardkit.pipeline.scan import open_records

    sha = BackgroundHasher(lane=0)
    with open_input(spec, on_raw=sha.update) as stream:  # JSONL, or Parquet read as JSONL
        source = open_records(spec.path, stream)
        for line, _offset, raw in source:
            tally.records += 1
            obj = loads_record(raw)
            if obj is NOT_JSON:
                tally.invalid += 1
            yield line, obj
        tally.blank = source.blank
        tally.bytes = stream.raw_bytes
    tally.sha256 = sha.hexdigest()


def iter_keys(
    spec: InputSpec, key_of: KeyFunction, tally: SourceTally, transform: Callable[[dict], dict | None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """(line, 128-bit key hash) of every keyed record of one input; counts into `tally`."""
    sha256 = hashlib.sha256
    for line, obj in iter_records(spec, tally):
        if type(obj) is dict and transform is not None:
            obj = transform(obj)
        key = key_of(obj) if type(obj) is dict else None
        if key is None:
            tally.unkeyed += 1
            continue
        yield line, sha256(key).digest()[:HASH_BYTES]


def inspect_inputs(paths: Sequence[str | os.PathLike], what: str) -> list[InputSpec]:
    names = [os.fspath(p) for p in paths]
    if not names:
        raise UsageError(f"give at least one {what} file")
    return [inspect_input(p) for p in names]


class EvalIndex:
    """Key hash -> (eval input, line) of the first eval record with that key.

    Memory: about 300 bytes per distinct eval key (measured: 200k keys, +59 MB RSS); the
    training side is streamed, never kept.
    """

    def __init__(self, key: str = "record", transform: Callable[[dict], dict | None] | None = None) -> None:
        self.key = key
        self.key_of = key_function(key)
        self.transform = transform
        self.first: dict[bytes, tuple[int, int]] = {}
        self.copies: dict[bytes, int] = {}  # eval records per key (eval duplicates included)
        self.sources: list[SourceTally] = []
        self.specs: list[InputSpec] = []

    def load(self, specs: Sequence[InputSpec]) -> EvalIndex:
        for spec in specs:
            i = len(self.specs)
            self.specs.append(spec)
            tally = SourceTally(spec.display)
            self.sources.append(tally)
            first, copies = self.first, self.copies
            for line, h in iter_keys(spec, self.key_of, tally, self.transform):
                if h not in first:
                    first[h] = (i, line)
                copies[h] = copies.get(h, 0) + 1
        records = sum(t.records for t in self.sources)
        if records and not self.first:  # a check that compares nothing must not pass
            invalid = sum(t.invalid for t in self.sources)
            raise UsageError(
                f"none of the {records:,} eval record(s) has the key {self.key!r} ({invalid:,} not valid JSON): "
                "nothing to compare; check the key (record, first-user, prompt or a field name) and the eval files"
            )
        return self

    def where(self, h: bytes) -> str | None:
        """`file:line` of the first eval record with this key hash, or None."""
        hit = self.first.get(h)
        return None if hit is None else f"{self.specs[hit[0]].display}:{hit[1]}"

    def __len__(self) -> int:
        return len(self.first)


class NgramIndex:
    """Every word n-gram of the eval inputs (`records.ngrams`): its hash -> (eval input, line)
    of the first eval record holding it. A training record is contaminated when it shares any
    n-gram with an eval record; `match` says which, and where.

    Memory: about 100 bytes per distinct eval n-gram (a 10k-question eval set of 60 words
    each: ~50 MB); the training side is streamed, never kept."""

    def __init__(self, n: int = DEFAULT_NGRAM) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
            raise UsageError(f"--ngram must be a whole number from 1 to 64 (got {n!r})")
        self.n = n
        self.first: dict[int, tuple[int, int]] = {}
        self.sources: list[SourceTally] = []
        self.specs: list[InputSpec] = []
        self._sorted = None

    def load(self, specs: Sequence[InputSpec]) -> NgramIndex:
        first = self.first
        for spec in specs:
            i = len(self.specs)
            self.specs.append(spec)
            tally = SourceTally(spec.display)
            self.sources.append(tally)
            for line, obj in iter_records(spec, tally):
                hashes = ngram_hashes(record_words(obj), self.n) if isinstance(obj, dict | list) else ()
                if not len(hashes):
                    tally.unkeyed += 1  # not JSON, or fewer than n words
                    continue
                for h in hashes.tolist():
                    if h not in first:
                        first[h] = (i, line)
        import numpy

        self._sorted = numpy.array(sorted(first), dtype=numpy.uint64)
        return self

    def match(self, obj: object) -> tuple[str, str] | None:
        """(eval `file:line`, the shared n-gram's words) of the first n-gram of `obj` found
        in the eval set, or None."""
        if not len(self.first):
            return None
        ws = record_words(obj)
        hashes = ngram_hashes(ws, self.n)
        if not len(hashes):
            return None
        keys = self._sorted
        at = keys.searchsorted(hashes).clip(0, len(keys) - 1)
        hit = keys[at] == hashes
        if not hit.any():
            return None
        k = int(hit.argmax())
        i, line = self.first[int(hashes[k])]
        return f"{self.specs[i].display}:{line}", " ".join(ws[k : k + self.n])

    def __len__(self) -> int:
        return len(self.first)


# ---------------------------------------------------------------- the report


@dataclass
class OverlapResult:
    """Eval records whose key also occurs in the training inputs."""

    key: str
    train: list[SourceTally]
    eval: list[SourceTally]
    eval_keys: int  # distinct keys in the eval inputs
    overlapping_keys: int  # distinct eval keys found in train
    overlapping_eval_records: int  # eval records (copies included) whose key is in train
    matching_train_records: int  # train records whose key is in the eval set
    examples: list[dict] = field(default_factory=list)  # {"eval": "f:l", "train": "f:l"}, eval order

    @property
    def ok(self) -> bool:
        """No eval record appears in the training data (the CLI exits 1 otherwise)."""
        return self.overlapping_eval_records == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "key": self.key,
            "eval_records": sum(t.records for t in self.eval),
            "eval_unkeyed": sum(t.unkeyed for t in self.eval),
            "eval_keys": self.eval_keys,
            "train_records": sum(t.records for t in self.train),
            "train_unkeyed": sum(t.unkeyed for t in self.train),
            "overlapping_keys": self.overlapping_keys,
            "overlapping_eval_records": self.overlapping_eval_records,
            "matching_train_records": self.matching_train_records,
            "examples": self.examples,
            "train": [t.to_dict() for t in self.train],
            "eval": [t.to_dict() for t in self.eval],
        }

    def lines(self) -> list[str]:
        """A human summary, one line each (the CLI prints them)."""
        d = self.to_dict()
        out = [
            f"key {self.key}: {d['overlapping_eval_records']:,} of {d['eval_records']:,} eval record(s) "
            f"appear in the training data ({d['matching_train_records']:,} training record(s) match)"
        ]
        out += [f"  {e['eval']} appears at {e['train']}" for e in self.examples]
        invalid = {side: sum(t.invalid for t in getattr(self, side)) for side in ("eval", "train")}
        if any(invalid.values()):
            out.append(f"  not valid JSON (not compared): eval {invalid['eval']:,}, train {invalid['train']:,}")
        keyless = {side: d[f"{side}_unkeyed"] - invalid[side] for side in ("eval", "train")}
        if any(keyless.values()):
            out.append(f"  without the key {self.key!r} (not compared): eval {keyless['eval']:,}, train {keyless['train']:,}")
        return out


@dataclass
class ContaminationResult:
    """Training records that share a word n-gram with an eval record."""

    ngram: int
    train: list[SourceTally]
    eval: list[SourceTally]
    eval_ngrams: int  # distinct n-grams in the eval inputs
    contaminated_records: int
    examples: list[dict] = field(default_factory=list)  # {"train", "eval", "ngram"}, train order

    @property
    def ok(self) -> bool:
        return self.contaminated_records == 0

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "key": f"ngram:{self.ngram}",
            "ngram": self.ngram,
            "eval_records": sum(t.records for t in self.eval),
            "eval_too_short": sum(t.unkeyed for t in self.eval),
            "eval_ngrams": self.eval_ngrams,
            "train_records": sum(t.records for t in self.train),
            "contaminated_records": self.contaminated_records,
            "examples": self.examples,
            "train": [t.to_dict() for t in self.train],
            "eval": [t.to_dict() for t in self.eval],
        }

    def lines(self) -> list[str]:
        d = self.to_dict()
        out = [
            f"{self.ngram}-grams: {d['contaminated_records']:,} of {d['train_records']:,} training record(s) share a "
            f"word {self.ngram}-gram with the eval set ({d['eval_records']:,} eval record(s), {d['eval_ngrams']:,} distinct {self.ngram}-grams)"
        ]
        out += [f"  {e['train']} shares \"{e['ngram']}\" with {e['eval']}" for e in self.examples]
        if d["eval_too_short"]:
            out.append(f"  eval records with fewer than {self.ngram} words (never matched): {d['eval_too_short']:,}")
        return out


def find_contamination(
    train_inputs: Sequence[str | os.PathLike],
    eval_inputs: Sequence[str | os.PathLike],
    *,
    ngram: int = DEFAULT_NGRAM,
    examples: int = 10,
) -> ContaminationResult:
    """Training records that share any word `ngram`-gram (case-folded, punctuation removed)
    with an eval record."""
    if not eval_inputs:
        raise UsageError("give at least one eval file (--against)")
    index = NgramIndex(ngram)
    train_specs = inspect_inputs(train_inputs, "training")
    eval_specs = inspect_inputs(eval_inputs, "eval (--against)")
    if sum(s.is_stdin for s in train_specs + eval_specs) > 1:
        raise UsageError("stdin (-) can be given only once")
    index.load(eval_specs)
    train: list[SourceTally] = []
    found = 0
    shown: list[dict] = []
    for spec in train_specs:
        tally = SourceTally(spec.display)
        train.append(tally)
        for line, obj in iter_records(spec, tally):
            hit = index.match(obj) if isinstance(obj, dict | list) else None
            if hit is None:
                continue
            found += 1
            if len(shown) < examples:
                shown.append({"train": f"{spec.display}:{line}", "eval": hit[0], "ngram": hit[1]})
    return ContaminationResult(ngram, train, index.sources, len(index), found, shown)


def find_overlap(
    train_inputs: Sequence[str | os.PathLike],
    eval_inputs: Sequence[str | os.PathLike],
    *,
    key: str = "record",
    examples: int = 10,
) -> OverlapResult:
    """Eval records that also appear in the training inputs, by `key` (see the module doc).

    Raises UsageError or InputError (missing file, corrupt compression, malformed JSON array).
    """
    if not eval_inputs:
        raise UsageError("give at least one eval file (--against)")
    train_specs = inspect_inputs(train_inputs, "training")
    eval_specs = inspect_inputs(eval_inputs, "eval (--against)")
    if sum(s.is_stdin for s in train_specs + eval_specs) > 1:
        raise UsageError("stdin (-) can be given only once")
    index = EvalIndex(key).load(eval_specs)
    found: dict[bytes, tuple[int, int]] = {}  # eval key -> first train (input, line)
    train: list[SourceTally] = []
    matching = 0
    for i, spec in enumerate(train_specs):
        tally = SourceTally(spec.display)
        train.append(tally)
        first = index.first
        for line, h in iter_keys(spec, index.key_of, tally):
            if h in first:
                matching += 1
                if h not in found:
                    found[h] = (i, line)
    ordered = sorted(found, key=index.first.__getitem__)
    shown = [
        {"eval": index.where(h), "train": f"{train_specs[found[h][0]].display}:{found[h][1]}"}
        for h in ordered[:examples]
    ]
    return OverlapResult(
        key=key,
        train=train,
        eval=index.sources,
        eval_keys=len(index),
        overlapping_keys=len(found),
        overlapping_eval_records=sum(index.copies[h] for h in found),
        matching_train_records=matching,
        examples=shown,
    )
