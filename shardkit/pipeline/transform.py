"""Training-ready shards: the record pipeline behind `split --shuffle/--holdout/--dedup/--exclude/--to`.

Records flow left to right, one step with one job each::

    inputs (JSONL: plain, .gz, .zst, stdin)
      -> validation      --validate: `check.Checks` by blocks; invalid -> rejects.jsonl
      -> convert         --to chat: alpaca/sharegpt/prompt-completion -> messages; unmappable -> rejects
      -> exclude         --exclude EVAL: key in the eval set -> excluded.jsonl
      -> dedup           --dedup exact: normalised record seen before -> duplicates.jsonl
      -> route           --holdout F: train or validation, by a stable hash
      -> size gate       a record over --max-bytes: own shard (warned), reject or error
      -> sink            per input (`{stem}-{split}-00000.jsonl`), or --shuffle: one stream
      -> shard writers   one per split, rolling at --max-records/--max-bytes, atomic commits
      -> manifest        `split` per file, counts, seed, role mapping, side files

Without --to, records are copied byte for byte. With --to chat, converted records are
re-serialised by orjson (chat records keep their bytes); side files keep original bytes.

**Conservation.** ``read = written + rejected + duplicates + excluded + blank`` (written =
train + validation, counted from the shards written): checked at the end of every run,
dry runs included; a mismatch raises `ConservationError` (a bug, never bad data).

**Shuffle** (two passes, Rao's external shuffle): pass 1 scatters each record into one of
k temp bucket files in ``OUT/.shardkit-shuffle/`` with a seeded RNG (uniform, per record);
pass 2 loads one bucket at a time, permutes it with its own seeded RNG and writes it out.
Scattering uniformly and then permuting every bucket uniformly gives a uniformly random
permutation of the whole stream. k comes from the input size (compressed inputs count 4x,
stdin 1 GiB) so that a bucket is planned at a quarter of --shuffle-memory; a bucket that
still comes out larger than --shuffle-memory (bytes + 16 bytes per record for its offsets
and permutation) is re-scattered into sub-buckets before it is loaded. The order is a
function of (seed, --shuffle-memory, input sizes, records): the same inputs and options
give byte-identical shards. Temp disk: about the size of the output, freed bucket by bucket.
Memory: one bucket (planned at --shuffle-memory/4, never over --shuffle-memory) plus 8 MiB
of pass-1 write buffers plus the interpreter; measured on the 290 MB / 100k-record file
with the default 256 MiB: 94 MiB peak RSS, 99 MiB on the doubled file (bench/shuffle.py).

**Holdout.** A record goes to ``validation`` iff the first 8 bytes of
``sha256("shardkit-holdout:{seed}:" + k)`` read as a fraction are below --holdout. By
default (--holdout-key first-user) k is ``p`` + the record's prompt, taken from the source
record before any --to chat: the first user message (chat, sharegpt), instruction + input
(alpaca), the prompt (prompt/completion), normalised as `overlap` does; so one prompt with
several answers never lands in both splits. A record with no prompt (text, not JSON) uses
its 128-bit normalised hash, which is what --holdout-key record uses for every record.
--holdout-key prompt takes everything before the first answer (system included);
--holdout-key FIELD the field's value (``s`` + a string's UTF-8 bytes, or ``j`` + any other
value as normalised JSON; records sharing a value stay together; a record without it is
rejected, code ``holdout_key``). It depends on nothing else, so adding, removing or
reordering files never moves a record between splits. The manifest's ``holdout`` says how
many held-out prompts also occur in train (0 by construction with first-user; counted with
the other keys, which keeps an 8-byte hash per distinct prompt in memory), and split warns
when that is above 0. Without --holdout every shard's `split` is ``train``.

**Dedup** keeps the first copy of every normalised record (the `stats` hash: sha256 of the
JSON re-encoded with sorted keys, first 16 bytes; a line that is not JSON hashes its bytes).
Memory: the index is the only structure that grows with the input: a dict from the
128-bit hash (a Python int) to the first copy's packed (input, line), which names it in
duplicates.jsonl. Measured with CPython 3.11: 121 bytes per distinct record (1M distinct
records: peak RSS 38 -> 153 MiB), i.e. 16 bytes of hash plus ~105 of int objects and dict
slots; a bare set of the hashes would still take ~82. Budget ~8M distinct records per GB.

**Crash safety.** Shards are written under temp names and committed without replacing
(`shard.ShardFile`); the manifest is rewritten with ``"complete": false`` after each.
Side files are appended under ``.shardkit-partial-NAME`` and published at the end. A
``--resume`` of an interrupted run restarts it from scratch: it deletes exactly the files
its manifest lists, the temp buckets and the partial files, and runs again; as the output is
deterministic, a shard committed just before a crash (not yet listed) is adopted only if
identical. The result equals an uninterrupted run. A lock (flock on OUT) refuses a second
run into the same folder while one is writing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import shutil
from array import array
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from shardkit.core import faults
from shardkit.core.blocks import NL, BlockReader, nonblank_runs
from shardkit.core.errors import DataError, ShardkitError, UsageError
from shardkit.core.io import deferred_signals, env_error, inspect_input, write_all
from shardkit.core.jsonarray import ARRAY_BATCH, JsonArraySource, compact
from shardkit.pipeline.neardup import NEAR_DUPLICATES_NAME, NearDedup
from shardkit.pipeline.overlap import (
    HASH_BYTES,
    NOT_JSON,
    EvalIndex,
    NgramIndex,
    inspect_inputs,
    key_function,
    loads_record,
)
from shardkit.pipeline.shard import (
    DEFAULT_NAME,
    DEFAULT_PARQUET_NAME,
    ParquetShardFile,
    ShardFile,
    SplitOptions,
    reject_record,
    rejects_outside,
    shard_quota,
)
from shardkit.pipeline.tokenstage import OVERFLOW, TokenizeStep, TokenRows, token_schema
from shardkit.records.check import Bad, reason_of
from shardkit.records.convert import MAPPING, to_chat
from shardkit.records.minhash import DEFAULT_SHINGLE, lsh_params
from shardkit.records.ngrams import DEFAULT_NGRAM
from shardkit.records.tokenize import check_seq_len
from shardkit.store.manifest import check_rel_name
from shardkit.store.outdir import unlink_if_exists

if TYPE_CHECKING:
    from shardkit.pipeline.run import Run

__all__ = [
    "DEFAULT_SHUFFLE_MEMORY",
    "ConservationError",
    "PipelineOptions",
]

DEFAULT_SHUFFLE_MEMORY = 256 * 1024 * 1024
MIN_SHUFFLE_MEMORY = 64 * 1024
DUPLICATES_NAME = "duplicates.jsonl"
EXCLUDED_NAME = "excluded.jsonl"
CONTAMINATED_NAME = "contaminated.jsonl"
SIDES = ("rejects", "duplicates", "excluded")  # the side files every plan lists in its manifest
TEMP_DIR = ".shardkit-shuffle"
TRAIN, VALIDATION = "train", "validation"
SHUFFLED_STEM = "part"
HOLDOUT_NAME = "{stem}-{split}-{index:05d}.jsonl"
RECORD_OVERHEAD = 16  # bytes per record while a bucket is in memory: offset + permutation entry
BUCKET_SHARE = 4  # buckets are planned at 1/4 of --shuffle-memory (peak RSS flat as input grows)
MAX_BUCKETS = 256  # open files in pass 1; more data than this many buckets hold is re-scattered
MAX_DEPTH = 8  # re-scatter levels before a bucket is loaded whatever its size
COMPRESSED_RATIO = 4  # planning guess: decompressed bytes per compressed byte
STDIN_GUESS = 1 << 30  # planning guess for stdin, whose size is unknown
CHUNK = 1 << 20  # bytes gathered before one write
SCHEMA_BATCH = 8 << 20  # bytes of records per SchemaBuilder call (its fastest chunk size)
PENDING_BUDGET = 8 << 20  # bytes waiting for all bucket files together in pass 1 (64 KiB each at least)
CONVERSIONS = ("chat",)
DEDUP_METHODS = ("exact",)
_HOLDOUT_SCALE = float(1 << 64)


class ConservationError(ShardkitError):
    """read != written + rejected + duplicates + excluded + blank: a shardkit bug."""

    exit_code = 1


# ---------------------------------------------------------------- options


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """`split` options plus the training-ready steps. Checked at construction.

    `split` says how to cut (max_records, max_bytes, oversize, name, rejects, check).
    `split.num_shards` works only with `shuffle` (counts are known after the first pass).
    `name` (--name) may use `{split}` besides `{stem}` and `{index}`; when None, the split's
    name is used, and its default becomes `{stem}-{split}-{index:05d}.jsonl` under
    --holdout. With --shuffle, `{stem}` is `part`.
    """

    split: SplitOptions
    name: str | None = None
    shuffle: bool = False
    seed: int = 0
    shuffle_memory: int = DEFAULT_SHUFFLE_MEMORY
    holdout: float | None = None
    holdout_key: str | None = None
    holdout_seed: int = 0
    dedup: str | None = None
    exclude: tuple[str, ...] = ()
    exclude_key: str = "record"
    decontaminate: tuple[str, ...] = ()
    ngram: int = DEFAULT_NGRAM
    near_dedup: float | None = None
    shingle: int = DEFAULT_SHINGLE
    to: str | None = None
    duplicates: str = DUPLICATES_NAME
    excluded: str = EXCLUDED_NAME
    contaminated: str = CONTAMINATED_NAME
    near_duplicates: str = NEAR_DUPLICATES_NAME
    mix: Any = None  # mix.MixInfo: this run writes a drawn mix (`shardkit mix`)
    tokenize: str | None = None  # a model folder: records become input_ids/labels rows
    seq_len: int | None = None
    overflow: str = "reject"
    pack: bool = False  # --pack: examples laid whole into rows of at most seq_len tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", tuple(os.fspath(p) for p in self.exclude))
        object.__setattr__(self, "decontaminate", tuple(os.fspath(p) for p in self.decontaminate))
        if isinstance(self.ngram, bool) or not isinstance(self.ngram, int) or not 1 <= self.ngram <= 64:
            raise UsageError(f"--ngram must be a whole number from 1 to 64 (got {self.ngram!r})")
        if self.near_dedup is not None:
            lsh_params(self.near_dedup)  # the threshold's range, and datasketch installed
        if self.tokenize is not None and self.seq_len is None:
            raise UsageError("--tokenize needs --seq-len L (the longest row a trainer takes)")
        if self.seq_len is not None:
            if self.tokenize is None:
                raise UsageError("--seq-len goes with --tokenize MODEL_DIR")
            check_seq_len(self.seq_len)
        if self.pack and self.tokenize is None:
            raise UsageError("--pack goes with --tokenize MODEL_DIR --seq-len L")
        if self.overflow not in OVERFLOW:
            raise UsageError(f"--overflow must be one of {', '.join(OVERFLOW)} (got {self.overflow!r})")
        if isinstance(self.shingle, bool) or not isinstance(self.shingle, int) or not 1 <= self.shingle <= 64:
            raise UsageError(f"--shingle must be a whole number from 1 to 64 (got {self.shingle!r})")
        if self.shuffle_memory < MIN_SHUFFLE_MEMORY:
            raise UsageError(f"--shuffle-memory must be at least {MIN_SHUFFLE_MEMORY} bytes (got {self.shuffle_memory})")
        if self.holdout is not None and not 0 < self.holdout < 1:
            raise UsageError(f"--holdout must be a fraction between 0 and 1, exclusive (got {self.holdout})")
        if self.holdout is None and self.holdout_key is not None:
            raise UsageError("--holdout-key needs --holdout FRACTION")
        if self.holdout_key == "":
            raise UsageError("--holdout-key must name a field")
        if self.dedup is not None and self.dedup not in DEDUP_METHODS:
            raise UsageError(f"--dedup must be one of {', '.join(DEDUP_METHODS)} (got {self.dedup!r})")
        if self.to is not None and self.to not in CONVERSIONS:
            raise UsageError(f"--to must be one of {', '.join(CONVERSIONS)} (got {self.to!r})")
        key_function(self.exclude_key)
        if self.split.num_shards is not None and not self.shuffle and not self.streams:
            raise UsageError("--num-shards with --holdout/--dedup/--exclude/--to needs --shuffle "
                             "(record counts are known only after the first pass); use --max-records or --max-bytes")
        names = [self.split.rejects, self.duplicates, self.excluded, self.contaminated, self.near_duplicates]
        for name in names:
            if name is not self.split.rejects or not rejects_outside(name):  # --rejects PATH may be anywhere
                check_rel_name(name)
        if len(set(names)) != len(names):
            raise UsageError(f"the rejects, duplicates, excluded, contaminated and near-duplicates files need different names (got {names})")
        template = self.name_template()
        if "{index" not in template:
            raise UsageError(f"--name {template!r} must contain {{index}} so shard names differ")
        if self.holdout is not None and "{split" not in template:
            raise UsageError(f"--name {template!r} must contain {{split}} with --holdout so train and validation shards differ")
        shard_file_name(template, "x", TRAIN, 0)

    @property
    def streams(self) -> bool:
        """No record stage: runs of lines go to the shards whole (`cutter.StreamFlow`)."""
        return not (self.shuffle or self.holdout is not None or self.dedup or self.exclude or self.decontaminate
                    or self.near_dedup is not None or self.to or self.tokenize)

    def spans_inputs(self, inputs: int) -> bool:
        """--num-shards N over several inputs with no record stage: N shards in total, cut
        from the inputs taken together in order (a shard may span two inputs)."""
        return self.streams and self.split.num_shards is not None and inputs > 1

    def shard_name(self, stem: str, split: str, index: int) -> str:
        return shard_file_name(self.name_template(), stem, split, index)

    @property
    def holdout_key_used(self) -> str | None:
        """--holdout-key, or its default: first-user (the prompt)."""
        if self.holdout is None:
            return None
        return self.holdout_key or "first-user"

    def name_template(self) -> str:
        """--name, or the default for this mode: `{stem}-{index:05d}.jsonl`, `{stem}-{split}-{index:05d}.jsonl` under --holdout."""
        if self.name is not None:
            return self.name
        if self.split.name in (DEFAULT_NAME, DEFAULT_PARQUET_NAME) and self.holdout is not None:
            return HOLDOUT_NAME if self.split.format == "jsonl" else HOLDOUT_NAME.replace(".jsonl", ".parquet")
        return self.split.name

    @property
    def splits(self) -> tuple[str, ...]:
        return (TRAIN, VALIDATION) if self.holdout is not None else (TRAIN,)

    @property
    def sides(self) -> tuple[str, ...]:
        """The side files this plan may write (their keys in the manifest)."""
        mixed = {key for key, _ in self.mix.sides} if self.mix is not None else set()
        return (*SIDES, *(("near_duplicates",) if self.near_dedup is not None or "near_duplicates" in mixed else ()),
                *(("contaminated",) if self.decontaminate or "contaminated" in mixed else ()))

    def params(self, exclude_paths: list[str], decontaminate_paths: list[str] | None = None) -> dict:
        """What the manifest records (and --resume compares); eval paths relative to OUT.
        A plan with no record stage records the cut's options only."""
        if self.streams and self.name is None:
            return self.split.params()
        return {
            **self.split.params(),
            "name": self.name_template(),
            "shuffle": self.shuffle,
            "seed": self.seed if self.shuffle else None,
            "shuffle_memory": self.shuffle_memory if self.shuffle else None,
            "holdout": self.holdout,
            "holdout_key": self.holdout_key_used,
            "holdout_seed": self.holdout_seed if self.holdout is not None else None,
            "dedup": self.dedup,
            "exclude": exclude_paths,
            "exclude_key": self.exclude_key if self.exclude else None,
            **({"decontaminate": decontaminate_paths, "ngram": self.ngram} if self.decontaminate else {}),
            **({"near_dedup": self.near_dedup, "shingle": self.shingle} if self.near_dedup is not None else {}),
            **({"mix": self.mix.params()} if self.mix is not None else {}),
            **({"tokenize": {"model": self.tokenize, "seq_len": self.seq_len, "overflow": self.overflow,
                             **({"pack": True} if self.pack else {})}}
               if self.tokenize is not None else {}),
            "to": self.to,
        }


def shard_file_name(template: str, stem: str, split: str, index: int) -> str:
    """Format a shard name (fields: stem, split, index); refuse names that escape OUT."""
    try:
        name = template.format(stem=stem, split=split, index=index)
    except (KeyError, IndexError, ValueError) as e:
        raise UsageError(f"--name {template!r}: {e.__class__.__name__}: {e} (fields: {{stem}}, {{split}}, {{index}})") from None
    return check_rel_name(name)


# ---------------------------------------------------------------- records


_NOT_YET = object()
INVALID = NOT_JSON  # what `_Record.obj()` gives for a line that is not JSON (overlap's sentinel)


class _Record:
    """One non-blank line on its way through the steps."""

    __slots__ = ("source", "line", "offset", "raw", "original", "split", "_obj", "_hash")

    def __init__(self, source: int, line: int, offset: int, raw: bytes) -> None:
        self.source = source
        self.line = line
        self.offset = offset
        self.raw = raw  # what gets written (converted records: the new bytes)
        self.original = raw  # what side files keep
        self.split = TRAIN
        self._obj: object = _NOT_YET
        self._hash: bytes | None = None

    def obj(self) -> object:
        """The decoded JSON value (decoded once); `INVALID` when the line is not JSON."""
        if self._obj is _NOT_YET:
            self._obj = loads_record(self.raw)  # a leading BOM skipped, as overlap does
        return self._obj

    def replace(self, obj: dict) -> None:
        self._obj, self._hash = obj, None
        self.raw = orjson.dumps(obj) + NL

    def hash(self) -> bytes:
        """128-bit hash of the normalised record (the bytes, for a line that is not JSON)."""
        if self._hash is None:
            obj = self.obj()
            if obj is INVALID:
                normalised = self.raw.rstrip(b"\r\n")
            else:
                normalised = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
            self._hash = hashlib.sha256(normalised).digest()[:HASH_BYTES]
        return self._hash


# ---------------------------------------------------------------- steps (each: record -> keep?)


def input_check(options: PipelineOptions):
    """The check of the records as read. With --to chat, --validate chat means "the records
    written are valid chat": each input record is checked as its own kind (auto) before it
    is converted, and the converted record as chat after (`_Convert`); checking alpaca or
    sharegpt input as chat would reject every record --to chat is there to convert."""
    check = options.split.check
    if check is not None and options.to == "chat" and check.kind == "chat" and check.schema is None:
        return dataclasses.replace(check, kind="auto")
    return check


class _Convert:
    """--to chat. A chat record keeps its bytes; an unmappable record is rejected; with
    --validate chat, a converted record is checked as chat (rejected with the reason)."""

    def __init__(self, p: RecordFlow) -> None:
        self.p = p
        check = p.opts.split.check
        self.validator = None
        if check is not None and check.kind == "chat" and check.schema is None:
            from shardkit.records.validate import Validator

            self.validator = Validator("chat", max_line_bytes=check.max_line_bytes)

    def __call__(self, rec: _Record) -> bool:
        obj = rec.obj()
        if obj is INVALID:
            self.p.reject(rec, "invalid_json", "not valid JSON; --to chat cannot convert it")
            return False
        chat, reason = to_chat(obj)
        if chat is None:
            self.p.reject(rec, "convert", f"--to chat: {reason}")
            return False
        if chat is not obj:
            rec.replace(chat)
            if self.validator is not None:
                result = self.validator.check(rec.raw.rstrip(b"\n"))
                if not result.ok:
                    code, why = reason_of(result.issues)
                    self.p.reject(rec, code, f"--to chat gave an invalid chat record: {why}")
                    return False
        return True


class _Decontaminate:
    """--decontaminate EVAL: a record sharing a word n-gram with an eval record goes to
    contaminated.jsonl, with the eval record and the n-gram (counted as excluded)."""

    def __init__(self, p: RecordFlow, index: NgramIndex) -> None:
        self.p, self.index = p, index

    def __call__(self, rec: _Record) -> bool:
        obj = rec.obj()
        hit = self.index.match(obj) if isinstance(obj, dict | list) else None
        if hit is None:
            return True
        where, ngram = hit
        entry = self.p.side_entry(rec, "contaminated", f"shares the {self.index.n}-gram {ngram!r} with {where}")
        entry["matches"] = where
        entry["ngram"] = ngram
        self.p.contaminated.add(entry)
        self.p.tallies[rec.source].excluded += 1
        return False


class _Exclude:
    """--exclude EVAL: a record whose key is in the eval index goes to excluded.jsonl."""

    def __init__(self, p: RecordFlow, index: EvalIndex) -> None:
        self.p, self.index = p, index
        self.whole = index.key == "record"
        self.not_json = self.keyless = 0  # records kept without being compared (warned at the end)

    def __call__(self, rec: _Record) -> bool:
        obj = rec.obj()
        if obj is INVALID:
            self.not_json += 1
            return True
        if self.whole:
            h = rec.hash()
        else:
            key = self.index.key_of(obj) if type(obj) is dict else None
            if key is None:
                self.keyless += 1
                return True
            h = hashlib.sha256(key).digest()[:HASH_BYTES]
        where = self.index.where(h)
        if where is None:
            return True
        entry = self.p.side_entry(rec, "excluded", f"in the eval set ({self.index.key}): {where}")
        entry["matches"] = where
        self.p.excluded.add(entry)
        self.p.tallies[rec.source].excluded += 1
        return False


class _Dedup:
    """--dedup exact: keep the first copy of each normalised record."""

    def __init__(self, p: RecordFlow) -> None:
        self.p = p
        self.seen: dict[int, int] = {}  # hash -> input << 40 | line of the first copy

    def __call__(self, rec: _Record) -> bool:
        here = rec.source << 40 | rec.line
        first = self.seen.setdefault(int.from_bytes(rec.hash(), "little"), here)
        if first == here:
            return True
        where = f"{self.p.specs[first >> 40].display}:{first & ((1 << 40) - 1)}"
        entry = self.p.side_entry(rec, "duplicate", f"duplicate of {where}")
        entry["duplicate_of"] = where
        self.p.duplicates.add(entry)
        self.p.tallies[rec.source].duplicates += 1
        return False


class _MixSplit:
    """A mix's write stage: its second input holds the held-out records (`mix.py`)."""

    def __call__(self, rec: _Record) -> bool:
        rec.split = VALIDATION if rec.source == 1 else TRAIN
        return True


class _Holdout:
    """--holdout F: validation iff a stable hash of (seed, key) falls under F."""

    def __init__(self, p: RecordFlow, fraction: float, key: str, seed: int) -> None:
        self.p, self.key = p, key
        self.limit = fraction * _HOLDOUT_SCALE
        self.prefix = f"shardkit-holdout:{seed}:".encode()
        self.prompt_of = key_function("first-user")
        self.by_prompt = key in ("first-user", "prompt")
        self.key_of = key_function(key) if self.by_prompt else None
        self.tracked: dict[str, set[int]] | None = None if key == "first-user" else {TRAIN: set(), VALIDATION: set()}

    def source_obj(self, rec: _Record) -> object:
        """The record as read, before --to chat changed it."""
        if rec.original is rec.raw:
            return rec.obj()
        try:
            return orjson.loads(rec.original)
        except orjson.JSONDecodeError:
            return INVALID

    def prompt_overlap(self) -> int:
        """Held-out prompts that also occur in train (0 by construction with first-user)."""
        if self.tracked is None:
            return 0
        return len(self.tracked[TRAIN] & self.tracked[VALIDATION])

    def __call__(self, rec: _Record) -> bool:
        src = self.source_obj(rec) if self.by_prompt or self.tracked is not None else None
        if self.key == "record":
            material = rec.hash()
        elif self.by_prompt:
            key = self.key_of(src) if type(src) is dict else None
            material = b"p" + key if key is not None else rec.hash()
        else:
            obj = rec.obj()
            if type(obj) is not dict or obj.get(self.key) is None:
                what = "not a JSON object" if type(obj) is not dict else f"no {self.key!r} field"
                self.p.reject(rec, "holdout_key", f"{what} to route --holdout by (--holdout-key {self.key})")
                return False
            value = obj[self.key]  # "5" and 5 are different keys
            if type(value) is str:
                material = b"s" + value.encode()
            else:
                material = b"j" + orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.sha256(self.prefix + material).digest()
        rec.split = VALIDATION if int.from_bytes(digest[:8], "big") < self.limit else TRAIN
        if self.tracked is not None:
            prompt = self.prompt_of(src) if type(src) is dict else None
            if prompt is not None:
                self.tracked[rec.split].add(int.from_bytes(hashlib.sha256(prompt).digest()[:8], "little"))
        return True


def holdout_split(normalised_hash: bytes, fraction: float, seed: int = 0) -> str:
    """The split a record with this 128-bit normalised hash goes to (for tests and tools)."""
    digest = hashlib.sha256(f"shardkit-holdout:{seed}:".encode() + normalised_hash).digest()
    return VALIDATION if int.from_bytes(digest[:8], "big") < fraction * _HOLDOUT_SCALE else TRAIN


class _SizeGate:
    """A record over --max-bytes: its own shard (warned), rejected, or an error, as --oversize says."""

    def __init__(self, p: RecordFlow, max_bytes: int, policy: str) -> None:
        self.p, self.max_bytes, self.policy = p, max_bytes, policy

    def __call__(self, rec: _Record) -> bool:
        size = len(rec.raw)
        if size <= self.max_bytes:
            return True
        where = f"{self.p.specs[rec.source].display}:{rec.line}"
        what = f"record is {size} bytes, larger than --max-bytes {self.max_bytes}"
        if self.policy == "error":
            raise DataError(f"{where}: {what} (use --oversize own-shard or --oversize reject)")
        if self.policy == "reject":
            self.p.reject(rec, "oversize", what)
            return False
        self.p.warn(f"{where}: {what}; written to a shard of its own")
        return True


# ---------------------------------------------------------------- shard writers


class _ShardWriter:
    """Shards of one split, rolled at max_records / max_bytes (or a per-index quota)."""

    def __init__(
        self,
        p: Run,
        split: str,
        stem: str,
        source: str | None,
        quota: Callable[[int], int | None],
    ) -> None:
        self.p, self.split, self.stem, self.source = p, split, stem, source
        self.quota = quota
        self.max_bytes = p.opts.split.max_bytes
        self.index = 0
        self.records = self.bytes = 0
        self.first_line: int | None = None
        self.last_line: int | None = None
        self.file: ShardFile | None = None
        self.pending: list = []
        self.pending_bytes = 0
        self.pending_line = 0  # line of the first pending record (Parquet's error messages)
        plan = p.opts
        self.rows = TokenRows(plan.seq_len, plan.pack) if plan.tokenize is not None else None

    def name(self) -> str:
        return self.p.opts.shard_name(self.stem, self.split, self.index)

    def add(self, data, size: int, line: int | None = None) -> None:
        """One record (its bytes, or None in a dry run) of `size` bytes; with --tokenize
        --pack, one example, laid into the current row (whole rows go to the shard)."""
        if self.rows is None or data is None:
            self._add(data, size, line)
            return
        for row, row_line in self.rows.add(data, line):
            self._add(row, len(row), row_line)

    def _add(self, data, size: int, line: int | None) -> None:
        if self.records and self._full(size):
            self._commit()
        if not self.records:
            self.first_line = line
            if not self.p.dry_run:
                self.file = self.p.shard_file(self.name(), self.index)
        self.records += 1
        self.bytes += size
        self.last_line = line
        if data is not None:
            if not self.pending:
                self.pending_line = line or 0
            self.pending.append(data)
            self.pending_bytes += size
            if self.pending_bytes >= CHUNK:
                self.flush()

    def _full(self, size: int) -> bool:
        room = self.quota(self.index)
        if room is not None and self.records >= room:
            return True
        if self.max_bytes is None:
            return False
        if isinstance(self.file, ParquetShardFile):  # its size on disk, as `split` cuts Parquet
            return self.file.estimated_bytes >= self.max_bytes
        return self.bytes + size > self.max_bytes

    def flush(self) -> None:
        """Write what is gathered (it may hold views into a shuffle bucket being released)."""
        if self.pending:
            data = b"".join(self.pending)
            if isinstance(self.file, ParquetShardFile):
                self.file.add(data, len(self.pending), self.pending_line, self.name())
            else:
                self.file.write(data)
            self.pending.clear()
            self.pending_bytes = 0

    def commit(self) -> None:
        """The end of the stream: the last (partial) row too, then the shard."""
        if self.rows is not None:
            for row, row_line in self.rows.flush():
                self._add(row, len(row), row_line)
        self._commit()

    def _commit(self) -> None:
        if not self.records:
            return
        self.flush()
        with deferred_signals():
            parquet = self.p.schema is not None
            sha = self.file.commit(adopt_identical=self.p.adopt_identical) if self.file else None
            size = self.bytes
            if parquet and self.file is not None:
                size = os.stat(self.p.out / self.name()).st_size
            self.file = None
            self.p.committed({
                "path": self.name(), "format": "parquet" if parquet else "jsonl",
                "compression": self.p.opts.split.parquet.compression if parquet else None,
                "records": self.records, "bytes": size, "sha256": sha,
                "source": self.source, "first_line": self.first_line, "last_line": self.last_line,
                "split": self.split, **(self.rows.shard_totals() if self.rows is not None else {}),
            })
        self.index += 1
        self.records = self.bytes = 0

    def abort(self) -> None:
        self.pending.clear()
        if self.file is not None:
            self.file.abort()
            self.file = None


# ---------------------------------------------------------------- sinks


class _PerInputSink:
    """Without --shuffle: each input is cut on its own, one writer per split."""

    def __init__(self, p: Run) -> None:
        self.p = p
        self.writers: dict[str, _ShardWriter] = {}

    def start_input(self, i: int) -> None:
        cap = self.p.opts.split.max_records
        self.writers = {
            s: _ShardWriter(self.p, s, self.p.stems[i], self.p.tallies[i].path, lambda _i: cap)
            for s in self.p.opts.splits
        }

    def add(self, rec: _Record) -> None:
        self.writers[rec.split].add(None if self.p.dry_run else rec.raw, len(rec.raw), rec.line)

    def end_input(self) -> None:
        for w in self.writers.values():
            w.commit()

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


class _FileBucket:
    """Records appended to a temp file in pass 1 (or in a re-scatter), loaded whole in pass 2."""

    def __init__(self, folder: Path, name: str, flush_at: int) -> None:
        self.path = folder / name
        self.flush_at = flush_at
        self.records = self.bytes = 0
        self._fd = -1
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def append(self, raw: bytes) -> None:
        self._pending.append(raw)
        self._pending_bytes += len(raw)
        self.records += 1
        self.bytes += len(raw)
        if self._pending_bytes >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._fd < 0:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            try:
                self._fd = os.open(self.path, flags, 0o600)
            except OSError as e:
                raise env_error(e, self.path) from None
        try:
            write_all(self._fd, b"".join(self._pending))
        except OSError as e:
            raise env_error(e, self.path) from None
        self._pending.clear()
        self._pending_bytes = 0
        faults.hit("after:bucket_write")

    def close(self) -> None:
        """Done appending (no fsync: a crash restarts the run, buckets are never reused)."""
        self._flush()
        self.abandon()

    def abandon(self) -> None:
        """Close without writing what is pending (the run is being aborted)."""
        self._pending.clear()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1  # forgotten first: an interrupt here never closes it twice
            os.close(fd)

    def items(self) -> Iterator[bytes]:
        """The records in append order, streamed (for a re-scatter)."""
        with open(self.path, "rb", buffering=0) as f:
            for block in BlockReader(f):
                buf = bytes(block.buf[: block.end])
                pos, find = 0, buf.find
                while pos < block.end:
                    nxt = find(NL, pos) + 1
                    yield buf[pos:nxt]
                    pos = nxt

    def load(self) -> tuple[bytearray, array]:
        """All bytes in one buffer, and the n+1 record boundaries."""
        buf = bytearray(self.bytes)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            got = 0
            while got < self.bytes:
                n = f.readinto(view[got:])
                if not n:
                    raise DataError(f"{self.path}: temp bucket shorter than written; rerun with --resume")
                got += n
        view.release()
        offsets = array("q", [0])
        pos, find, add = 0, buf.find, offsets.append
        for _ in range(self.records):
            pos = find(NL, pos) + 1
            add(pos)
        return buf, offsets

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _SizeBucket:
    """A dry run's bucket: only record sizes, so the plan (names, records, bytes) is exact."""

    def __init__(self) -> None:
        self.records = self.bytes = 0
        self.sizes = array("Q")

    def append(self, item) -> None:
        size = item if type(item) is int else len(item)
        self.sizes.append(size)
        self.records += 1
        self.bytes += size

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    def items(self) -> Iterator[int]:
        return iter(self.sizes)

    def load(self) -> tuple[None, array]:
        offsets = array("q", [0])
        total = 0
        for size in self.sizes:
            total += size
            offsets.append(total)
        return None, offsets

    def discard(self) -> None:
        self.sizes = array("Q")


class _ShuffleSink:
    """--shuffle: all inputs as one stream per split, shuffled by a two-pass external shuffle."""

    def __init__(self, p: Run, estimate: int) -> None:
        self.p = p
        self.memory = p.opts.shuffle_memory
        self.folder = p.out / TEMP_DIR
        self.writer: _ShardWriter | None = None
        self.live: list = []  # every bucket made, for abort
        self.buckets_made = 0
        self.rescattered = 0
        self.oversized = 0
        if not p.dry_run:
            self.folder.mkdir(mode=0o700)
        shares = {TRAIN: 1.0 - (p.opts.holdout or 0.0), VALIDATION: p.opts.holdout or 0.0}
        self.roots: dict[str, list] = {}
        self.rngs: dict[str, random.Random] = {}
        for split in p.opts.splits:
            k = self._count(shares[split] * estimate)
            self.roots[split] = self._children(split, "", k)
            self.rngs[split] = random.Random(self._seed(split, "", "scatter"))

    def _seed(self, split: str, bucket: str, use: str) -> str:
        return f"shardkit-shuffle:{self.p.opts.seed}:{split}:{bucket}:{use}"

    def _count(self, footprint: float) -> int:
        return max(1, min(MAX_BUCKETS, math.ceil(footprint / (self.memory / BUCKET_SHARE))))

    def _children(self, split: str, parent: str, k: int) -> list:
        self.buckets_made += k
        if self.p.dry_run:
            return [_SizeBucket() for _ in range(k)]
        flush_at = max(64 * 1024, PENDING_BUDGET // k)  # the same total whatever k: flat RSS
        prefix = f"{parent}." if parent else ""
        made = [_FileBucket(self.folder, f"{split}-{prefix}{j}", flush_at) for j in range(k)]
        self.live += made
        return made

    def start_input(self, i: int) -> None:
        pass

    def add(self, rec: _Record) -> None:
        buckets = self.roots[rec.split]
        k = len(buckets)
        buckets[self.rngs[rec.split].randrange(k) if k > 1 else 0].append(rec.raw)

    def end_input(self) -> None:
        pass

    def finish(self) -> None:
        """Pass 2: every bucket, in order, permuted in memory and written out."""
        for buckets in self.roots.values():
            for b in buckets:
                b.close()
        faults.hit("after:scatter_done")
        counts = {s: sum(b.records for b in self.roots[s]) for s in self.p.opts.splits}
        for split in self.p.opts.splits:
            writer = self.writer = _ShardWriter(self.p, split, SHUFFLED_STEM, None, self._quota(counts[split]))
            for j, bucket in enumerate(self.roots[split]):
                self._drain(split, str(j), bucket, writer, 0)
            writer.commit()
        if not self.p.dry_run:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _quota(self, total: int) -> Callable[[int], int | None]:
        return shard_quota(total, self.p.opts.split.num_shards, self.p.opts.split.max_records)

    def _drain(self, split: str, name: str, bucket, writer: _ShardWriter, depth: int) -> None:
        if bucket.records == 0:
            bucket.discard()
            return
        footprint = bucket.bytes + RECORD_OVERHEAD * bucket.records
        if footprint > self.memory and bucket.records > 1 and depth < MAX_DEPTH:
            self._rescatter(split, name, bucket, writer, depth, footprint)
            return
        if footprint > self.memory:
            self.oversized += 1
            self.p.warn(f"shuffle bucket {split}-{name} holds {bucket.records} record(s) of {footprint} bytes, "
                        f"more than --shuffle-memory {self.memory}; loading it anyway")
        data, offsets = bucket.load()
        perm = array("Q", range(bucket.records))
        random.Random(self._seed(split, name, "shuffle")).shuffle(perm)
        add = writer.add
        if data is None:  # dry run: sizes only
            for j in perm:
                add(None, offsets[j + 1] - offsets[j])
        else:
            view = memoryview(data)
            for j in perm:
                start, end = offsets[j], offsets[j + 1]
                add(view[start:end], end - start)
            writer.flush()  # no view into this bucket may outlive it: the next one loads now
            del view
        del data, offsets, perm
        bucket.discard()
        faults.hit("after:bucket_shuffled")

    def _rescatter(self, split: str, name: str, bucket, writer: _ShardWriter, depth: int, footprint: int) -> None:
        self.rescattered += 1
        k = max(2, self._count(footprint))
        children = self._children(split, name, k)
        rng = random.Random(self._seed(split, name, "scatter"))
        for item in bucket.items():
            children[rng.randrange(k)].append(item)
        bucket.discard()
        if not self.p.dry_run:
            self.live = [b for b in self.live if b is not bucket]
        for child in children:
            child.close()
        for j, child in enumerate(children):
            self._drain(split, f"{name}.{j}", child, writer, depth + 1)

    def abort(self) -> None:
        if self.writer is not None:
            with suppress(OSError):
                self.writer.abort()
        for b in self.live:
            with suppress(OSError):
                b.abandon()
        if not self.p.dry_run:
            shutil.rmtree(self.folder, ignore_errors=True)


class _SchemaSink:
    """--format parquet: feeds the records the run writes, in input order, to a SchemaBuilder
    (the scout pass: the Parquet schema is that of exactly the records written)."""

    def __init__(self, p: Run, builder) -> None:
        self.p, self.builder = p, builder
        self.batch: list[bytes] = []
        self.size = self.first = 0
        self.display = ""

    def start_input(self, i: int) -> None:
        self.display = self.p.specs[i].display

    def add(self, rec: _Record) -> None:
        if not self.batch:
            self.first = rec.line
        self.batch.append(rec.raw)
        self.size += len(rec.raw)
        if self.size >= SCHEMA_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            self.builder.add_block(b"".join(self.batch), self.first, self.display, lines=len(self.batch))
            self.batch.clear()
            self.size = 0

    def end_input(self) -> None:
        self.flush()

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        self.batch.clear()


# ---------------------------------------------------------------- the flow


class RecordFlow:
    """Each record through the steps (convert, exclude, dedup, route, size gate) to the
    order stage (input order per input, or the external shuffle), then to shard writers.
    --resume runs it again from the start, adopting the identical shards already there."""

    resume_hint = "to run it again from the start"

    def __init__(self, run: Run, scout_builder=None) -> None:
        self.run = run
        self.opts, self.specs, self.tallies, self.warn = run.opts, run.specs, run.tallies, run.warn
        self.duplicates, self.excluded, self.contaminated = run.duplicates, run.excluded, run.contaminated
        self.near_duplicates = run.near_duplicates
        self.near: NearDedup | None = None
        self.tokens: TokenizeStep | None = None
        self.steps: list[Callable[[_Record], bool]] = []
        self.eval_index: EvalIndex | None = None
        self.ngram_index: NgramIndex | None = None
        self.decontaminate_paths = [run.source_path(inspect_input(p)) for p in run.opts.decontaminate]
        self.holdout: _Holdout | None = None
        self.exclude_paths = [run.source_path(inspect_input(p)) for p in run.opts.exclude]
        self.sink: _PerInputSink | _ShuffleSink | _SchemaSink | None = None
        self.scout_builder = scout_builder  # a scout pass: records go to this SchemaBuilder
        if run.opts.split.num_shards is not None and not run.opts.shuffle:
            raise UsageError("--num-shards with a JSON-array input needs --shuffle (record counts are known only "
                             "after the first pass); use --max-records or --max-bytes")

    @property
    def scouting(self) -> bool:
        return self.scout_builder is not None

    # ----- what the manifest says of this flow

    def params(self) -> dict:
        return self.opts.params(self.exclude_paths, self.decontaminate_paths)

    def manifest_extra(self, complete: bool) -> dict:
        m: dict = {}
        if self.opts.to == "chat":
            m["roles"] = MAPPING
        if self.eval_index is not None:
            m["exclude"] = {"key": self.eval_index.key, "sources": _eval_sources(self.eval_index, self.exclude_paths)}
        if self.near is not None:
            m["near_dedup"] = self.near.manifest()
        if self.tokens is not None:
            m["tokenize"] = self.tokens.manifest(self.run.model_path(self.opts.tokenize), self.run.files, self.opts.pack)
        if self.opts.mix is not None:
            m.update(self.opts.mix.manifest(self.run, complete))
        if self.ngram_index is not None:
            m["decontaminate"] = {"ngram": self.ngram_index.n, "eval_ngrams": len(self.ngram_index),
                                  "sources": _eval_sources(self.ngram_index, self.decontaminate_paths)}
        if self.holdout is not None:
            m["holdout"] = {"key": self.holdout.key, "fraction": self.opts.holdout,
                            "seed": self.opts.holdout_seed, "prompt_overlap": self.holdout.prompt_overlap()}
        if self.run.schema is not None:
            m["parquet"] = {"json_fields": self.run.schema.json_fields, "schema": self.run.schema.to_json()}
        if isinstance(self.sink, _ShuffleSink):
            m["shuffle"] = {"seed": self.opts.seed, "memory": self.opts.shuffle_memory,
                            "buckets": self.sink.buckets_made, "rescattered": self.sink.rescattered}
        if not complete:
            m["resume"] = {"mode": "restart"}  # --resume deletes what this lists and runs again
        return m

    def finish_warnings(self, sides: dict) -> None:
        for key, noun in (("rejects", "rejected"), ("duplicates", "duplicate"), ("excluded", "excluded"),
                          ("contaminated", "contaminated"), ("near_duplicates", "near-duplicate")):
            if sides.get(key):
                to = "would go to" if self.run.dry_run else "written to"
                self.warn(f"{sides[key]['records']} {noun} record(s) {to} {sides[key]['path']}")
        exclude = next((s for s in self.steps if isinstance(s, _Exclude)), None)
        if exclude is not None and (exclude.not_json or exclude.keyless):
            self.warn(f"--exclude: {exclude.not_json + exclude.keyless} record(s) kept without a comparison "
                      f"({exclude.not_json} not valid JSON, {exclude.keyless} without the key {exclude.index.key!r}); "
                      "--validate KIND rejects the invalid ones")
        overlap = self.holdout.prompt_overlap() if self.holdout is not None else 0
        if overlap:
            self.warn(f"{overlap} held-out prompt(s) also occur in train (--holdout-key {self.holdout.key}); "
                      "the default, --holdout-key first-user, keeps each prompt in one split")

    def progressed(self, n: int) -> None:
        pass

    def resume(self, old: dict) -> list[str]:
        """The run starts again and writes the same shards: each one already here (listed, or
        committed just before the kill and not yet listed) is adopted if identical. The
        manifest is not deleted first: killed before the new run wrote one, that would
        leave shards and no manifest, a folder no rerun may touch. Only the side files it
        lists (published at the very end, rewritten by the new run) go now."""
        if self.run.dry_run:
            return []
        self.run.remove_listed_sides(old)
        removed = self.run.clean()
        faults.hit("after:resume_cleaned")
        return removed

    # ----- steps

    def reject(self, rec: _Record, code: str, reason: str) -> None:
        self.run.reject(rec.source, rec.line, rec.offset, code, reason, rec.original)

    def side_entry(self, rec: _Record, code: str, reason: str) -> dict:
        return reject_record(self.specs[rec.source].display, rec.line, rec.offset, code, reason, rec.original)

    def _steps(self) -> list[Callable[[_Record], bool]]:
        o = self.opts
        steps: list[Callable[[_Record], bool]] = []
        if o.to == "chat":
            steps.append(_Convert(self))
        if o.exclude:
            transform = (lambda obj: to_chat(obj)[0] or obj) if o.to == "chat" else None
            specs = inspect_inputs(o.exclude, "eval (--exclude)")
            self.eval_index = EvalIndex(o.exclude_key, transform).load(specs)
            steps.append(_Exclude(self, self.eval_index))
        if o.decontaminate:
            specs = inspect_inputs(o.decontaminate, "eval (--decontaminate)")
            self.ngram_index = NgramIndex(o.ngram).load(specs)
            steps.append(_Decontaminate(self, self.ngram_index))
        if o.dedup:
            steps.append(_Dedup(self))
        if o.near_dedup is not None:
            self.near = NearDedup(self, o.near_dedup, o.shingle, 1 if self.scouting else self.run.jobs)
            steps.append(self.near)
        if o.holdout is not None and o.mix is not None:
            steps.append(_MixSplit())  # each source was held out before the draw
        elif o.holdout is not None:
            self.holdout = _Holdout(self, o.holdout, o.holdout_key_used, o.holdout_seed)
            steps.append(self.holdout)
        if o.tokenize is not None:  # last: the steps before look at the record as it came
            self.tokens = TokenizeStep(self, o.tokenize, o.seq_len, o.overflow)
            steps.append(self.tokens)
        if o.split.max_bytes is not None:
            steps.append(_SizeGate(self, o.split.max_bytes, o.split.oversize))
        return steps

    # ----- the run

    def process(self) -> None:
        run = self.run
        if self.opts.split.format == "parquet" and not self.scouting:
            run.schema = token_schema(self.opts.pack) if self.opts.tokenize is not None else self._infer_schema()
        steps = self.steps = self._steps()
        if self.opts.mix is not None and not self.scouting:
            self.opts.mix.preload(self.run)
        if self.scouting:
            self.sink = _SchemaSink(run, self.scout_builder)
        elif self.opts.shuffle:
            self.sink = _ShuffleSink(run, self._estimate())
        else:
            self.sink = _PerInputSink(run)
        for i, spec in enumerate(self.specs):
            self.sink.start_input(i)
            tally = self.tallies[i]
            records = self._read(i)
            for step in steps:  # a step that works in batches (on all cores) reads ahead
                if hasattr(step, "prefetch"):
                    records = step.prefetch(records)
            for rec in records:
                for step in steps:
                    if not step(rec):
                        break
                else:
                    tally.routed[rec.split] += 1
                    self.sink.add(rec)
            self.sink.end_input()
            if tally.blank:
                self.warn(f"{spec.display}: {tally.blank} blank line(s) skipped")
        self._close_steps()
        self.sink.finish()

    def _infer_schema(self):
        """The Parquet schema of exactly the records this run writes: --schema-from's, or
        a scout pass of the same plan (dry, in input order) feeding a SchemaBuilder."""
        from shardkit.pipeline.parquet import SchemaBuilder, schema_from_parquet

        popts = self.opts.split.parquet
        if popts.schema_from:
            return schema_from_parquet(popts.schema_from)
        for spec in self.specs:
            if not spec.rereadable:
                raise UsageError("--format parquet with --shuffle/--holdout/--dedup/--exclude/--to reads its input "
                                 "twice (once for the schema): give a file, not stdin, or give --schema-from FILE.parquet")
        scout = self.run.scout()
        scout.flow = RecordFlow(scout, scout_builder=SchemaBuilder(popts, warn=self.warn))
        scout.flow.process()
        return scout.flow.scout_builder.result()

    def _estimate(self) -> int:
        total = 0
        for s in self.specs:
            if s.size is None:
                total += STDIN_GUESS
            else:
                total += s.size * (COMPRESSED_RATIO if s.compression else 1)
        return total

    def _read(self, i: int) -> Iterator[_Record]:
        """Non-blank lines (or a JSON array's elements) of one input as records; invalid
        ones (--validate) rejected here."""
        with self.run.opened(i) as stream:
            if self.run.arrays[i]:
                yield from _array_records(self, i, stream)
                return
            for block, bad in self.run.blocks(i, stream):
                yield from self._block_records(i, block, bad)

    def _block_records(self, i: int, block, bad: list) -> Iterator[_Record]:
        tally = self.tallies[i]
        runs, trailing = nonblank_runs(block)
        buf = bytes(memoryview(block.buf)[: block.end])
        base, s = block.offset - block.start, block.start
        k, nbad = 0, len(bad)
        find = buf.find
        for run in runs:
            tally.blank += run.blanks_before
            pos, line = run.start, run.first_line
            while pos < run.end:
                nxt = find(NL, pos, run.end) + 1
                tally.records += 1
                if k < nbad and s + bad[k].start == pos:
                    b = bad[k]
                    k += 1
                    self.run.reject(i, line, base + pos, b.code, b.reason, buf[pos:nxt])
                else:
                    yield _Record(i, line, base + pos, buf[pos:nxt])
                pos, line = nxt, line + 1
        tally.blank += trailing

    def _close_steps(self) -> None:
        for step in self.steps:
            if hasattr(step, "close"):
                step.close()

    def abort(self) -> None:
        self._close_steps()
        with suppress(OSError):
            if self.sink is not None:
                self.sink.abort()
        if self.run.dry_run:
            return
        for side in self.run.side_files():
            with suppress(OSError):
                side.close()
                unlink_if_exists(side.partial)  # useless to a rerun, which starts from scratch


def _eval_sources(index, paths: list[str]) -> list[dict]:
    """An eval index's inputs for the manifest, each named as OUT names it."""
    return [{**s.to_dict(), "path": rel} for s, rel in zip(index.sources, paths, strict=True)]


# The elements of a JSON-array input, for RecordFlow._read (a flow's helpers, kept out of the class).

def _array_records(flow: RecordFlow, i: int, stream) -> Iterator[_Record]:
    """The elements of a JSON-array input as records: each one compact JSON on a line of
    its own, its line the one where it starts; side files keep its original bytes."""
    display, progress = flow.specs[i].display, flow.run.progress
    batch: list[tuple[int, int, bytes]] = []
    seen = 0
    try:
        for element in JsonArraySource(stream):
            batch.append(element)
            if len(batch) >= ARRAY_BATCH:
                yield from _array_batch(flow, i, batch)
                batch = []
                if progress:
                    progress(stream.raw_bytes - seen)
                    seen = stream.raw_bytes
        yield from _array_batch(flow, i, batch)
    except DataError as e:
        raise DataError(f"{display}: {e}") from None
    while stream.read(1 << 20):  # the source's hash and size cover its last byte
        pass
    if progress:
        progress(stream.raw_bytes - seen)


def _array_batch(flow: RecordFlow, i: int, batch: list[tuple[int, int, bytes]]) -> Iterator[_Record]:
    run, tally = flow.run, flow.tallies[i]
    bad: dict[int, Bad] = {}
    if run.checks is not None and batch:
        verdict = run.checks.local.check_records(batch, flow.specs[i].display)
        run.report.merge(verdict.report)
        bad = {b.start: b for b in verdict.bad}
    for line, offset, raw in batch:
        tally.records += 1
        b = bad.get(offset)
        if b is not None:
            run.reject(i, line, offset, b.code, b.reason, raw)
            continue
        rec = _Record(i, line, offset, compact(raw) + NL)
        rec.original = raw
        yield rec


__all__ += ["TEMP_DIR", "RecordFlow", "holdout_split", "input_check", "shard_file_name"]
