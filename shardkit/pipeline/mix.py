"""`shardkit mix`: a training mix drawn from weighted sources, recorded in the manifest.

    shardkit mix chat.jsonl=3 code.jsonl=1 -o OUT --records 100000 --seed 7 -n 50000

How a mix is made, in three stages, each a plain run of the split pipeline:

1. **Filter each source.** Every filter of the plan (--validate, --dedup, --near-dedup,
   --exclude, --decontaminate, --to) runs on each source alone, into a work folder: what
   it sets aside goes to that source's side files, the rest is the source's *available*
   records (and, with --holdout, its held-out ones). Per source: read = set aside +
   available + held out (checked).
2. **Draw.** The target (--records N, or --tokens N counted with --tokenizer, after the
   model's chat template when it has one) is shared out in proportion to the weights (the
   largest remainders get the odd records). Each source is drawn without replacement, in
   an order shuffled by the seed, until it is used up; then again in a new order (an
   *epoch*) as often as its share needs (upsampling). Copies drawn by upsampling are not
   duplicates: the filters ran before the draw. Written = the sum drawn (checked).
3. **Write.** The drawn records are shuffled together by the seed (the external shuffle:
   memory does not grow with the mix) and cut into shards in the plan's format, on the
   plan's executor and store; the sources' side files become OUT's side files.

The manifest's ``mix`` section records the seed, the target and, per source: path, bytes,
sha256, weight, records read, set aside (by reason), available, drawn, epochs and tokens
drawn; its ``sources`` are the mix's sources. Same seed and inputs: the same bytes on every
engine. With --holdout, each source is split first
(by the same stable hash as `split --holdout`): its held-out records go to the validation
shards as they are, never drawn or upsampled; the draw takes from the rest. Not yet:
--resume (rerun with --overwrite). A killed mix's work folder (``.shardkit-mix-*`` beside
OUT) is removed by the next mix there, once its owner process is gone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
import tomllib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from shardkit.core import objects
from shardkit.core.errors import DataError, InputError, UsageError
from shardkit.core.io import inspect_input, pid_alive
from shardkit.pipeline.run import split_local
from shardkit.pipeline.shard import SplitResult
from shardkit.pipeline.transform import TRAIN, VALIDATION, ConservationError, PipelineOptions

__all__ = ["MixInfo", "MixSource", "mix", "parse_sources", "share_out"]

_HUGE = 1 << 62  # one shard per source in the filter stage
_WORK_PREFIX = ".shardkit-mix-"  # the work folder beside OUT: filtered sources, the draw
_SIDE_KEYS = ("rejects", "duplicates", "excluded", "near_duplicates", "contaminated")


@dataclass(frozen=True)
class MixSource:
    path: str
    weight: float


@dataclass(frozen=True)
class MixInfo:
    """What the write stage records in the manifest (picklable: it travels to executors)."""

    seed: int
    target: dict
    sources: tuple[dict, ...]
    sides: tuple[tuple[str, str], ...]  # (side key, a source's side file) merged into OUT's
    holdout: dict | None = None  # --holdout: each source's held-out records go to validation as they are

    def params(self) -> dict:
        return {"seed": self.seed, "target": self.target,
                "sources": [{"path": s["path"], "weight": s["weight"]} for s in self.sources]}

    def manifest(self, run: Any, complete: bool) -> dict:
        """The write stage's manifest fields: the mix's sources (instead of the drawn file it
        read) and the `mix` section; when complete, written = drawn + held out, checked."""
        sources = [{**s, "path": run.source_path(inspect_input(s["path"]))} for s in self.sources]
        drawn = sum(s["drawn"] for s in sources)
        held = sum(s.get("held_out", 0) for s in sources)
        counts = {"read": sum(s["read"] for s in sources), "set_aside": sum(sum(s["set_aside"].values()) for s in sources),
                  "available": sum(s["available"] for s in sources), "held_out": held, "drawn": drawn}
        written = run.counts()
        if complete and (written[TRAIN], written[VALIDATION]) != (drawn, held):
            raise ConservationError(f"internal error: the mix drew {drawn} records and held out {held}, but "
                                    f"{written[TRAIN]} train and {written[VALIDATION]} validation were written; please report it")
        section = {"seed": self.seed, "target": self.target, "counts": counts, "sources": sources}
        if self.holdout is not None:
            section["holdout"] = self.holdout
        return {"sources": [{k: s[k] for k in ("path", "bytes", "sha256", "read")} for s in sources], "mix": section}

    def preload(self, run: Any) -> None:
        """What the filter stage set aside, per source, into the write stage's side files."""
        for key, path in self.sides:
            side = getattr(run, key)
            with open(path, "rb") as f:
                for line in f:
                    side.add(orjson.loads(line))


# ------------------------------------------------------------------ sources and weights


def parse_sources(specs: Sequence[str], weights_file: str | os.PathLike | None = None) -> list[MixSource]:
    """`PATH=WEIGHT` (or PATH, with its weight in --weights FILE: a TOML table of path =
    weight, at the top level or under [weights])."""
    table: dict[str, Any] = {}
    if weights_file is not None:
        try:
            data = tomllib.loads(Path(weights_file).read_text(encoding="utf-8"))
        except OSError as e:
            raise InputError(f"{weights_file}: cannot read the weights: {e.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{weights_file}: not valid TOML: {e}") from None
        table = data.get("weights", data) if isinstance(data.get("weights"), dict) else data
    if not specs:
        specs = list(table)
    if not specs:
        raise UsageError("give at least one source: PATH=WEIGHT, or a --weights file that lists them")
    out: list[MixSource] = []
    for spec in specs:
        path, weight = spec, table.get(spec)
        if "=" in spec:
            head, _, tail = spec.rpartition("=")
            try:
                path, weight = head, float(tail)
            except ValueError:
                path, weight = spec, table.get(spec)
        if weight is None:
            raise UsageError(f"{spec}: no weight: write {spec}=WEIGHT, or list it in --weights FILE")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise UsageError(f"{path}: the weight must be a number above 0 (got {weight!r})")
        out.append(MixSource(path, float(weight)))
    paths = [s.path for s in out]
    if len(set(paths)) != len(paths):
        raise UsageError("a source is given twice; give each once, with its weight")
    return out


def share_out(total: int, weights: Sequence[float]) -> list[int]:
    """`total` shared in proportion to `weights`: floors, then one more to the largest
    remainders (ties: the earlier source)."""
    top = max(weights)
    scaled = [w / top for w in weights]  # in (0, 1]: no sum or product overflows (1e308=...)
    whole = sum(scaled)
    exact = [total * (w / whole) for w in scaled]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


# ------------------------------------------------------------------ the draw


def _order(n: int, seed: int, source: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"shardkit-mix:{seed}:{source}:{epoch}").shuffle(order)
    return order


def draw(n: int, seed: int, source: int, *, records: int | None = None, budget: int | None = None,
         tokens: Sequence[int] | None = None) -> Iterator[tuple[int, int]]:
    """(epoch, record index) of a source's draws: epoch after epoch, each a new order of all
    `n` records, until `records` are drawn, or until the drawn `tokens` reach `budget`."""
    if n == 0:
        return
    drawn = spent = 0
    epoch = 0
    while True:
        for k in _order(n, seed, source, epoch):
            if records is not None and drawn >= records:
                return
            if budget is not None and spent >= budget:
                return
            yield epoch, k
            drawn += 1
            if tokens is not None:
                spent += tokens[k]
        epoch += 1


def _line_offsets(path: Path) -> array:
    offsets = array("Q")
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            offsets.append(pos)
            pos += len(line)
    offsets.append(pos)
    return offsets


def _count_tokens(path: Path, tokenizer_path: str) -> tuple[array, str | None]:
    """Tokens of each record of a filtered source (after the chat template, when the model has one)."""
    from shardkit.records.template import TemplateError, chat_view, load_chat_template
    from shardkit.records.tokens import count_tokens, load_tokenizer, record_text
    from shardkit.records.validate import detect_kind

    tokenizer = load_tokenizer(tokenizer_path)
    template = load_chat_template(tokenizer_path)
    counts = array("I")
    texts: list[str] = []
    with open(path, "rb") as f:
        for line in f:
            obj = orjson.loads(line)
            kind = detect_kind(obj)
            view = chat_view(obj, kind) if template is not None else None
            text = None
            if view is not None:
                try:
                    text = template.render(view[0], tools=view[1])
                except TemplateError:
                    text = None
            texts.append(text if text is not None else record_text(obj, kind))
            if len(texts) >= 1000:
                counts.extend(count_tokens(tokenizer, texts))
                texts = []
    counts.extend(count_tokens(tokenizer, texts))
    return counts, template.name if template is not None else None


# ------------------------------------------------------------------ the run


def mix(
    sources: Sequence[MixSource],
    out: str | os.PathLike,
    plan: PipelineOptions,
    *,
    seed: int,
    records: int | None = None,
    tokens: int | None = None,
    tokenizer: str | None = None,
    engine: str | None = None,
    jobs: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress=None,
    warn=None,
) -> SplitResult:
    """Draw a mix of `sources` into shards in `out` (see the module docstring)."""
    from shardkit.pipeline.driver import split

    if (records is None) == (tokens is None):
        raise UsageError("say how big the mix is: --records N or --tokens N (one of them)")
    for flag, value in (("--records", records), ("--tokens", tokens)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{flag} must be a whole number >= 1 (got {value!r})")
    if tokens is not None and tokenizer is None:
        raise UsageError("--tokens needs --tokenizer DIR (the tokens are counted with it)")
    if plan.shuffle:
        raise UsageError("a mix is always shuffled by --seed: leave out --shuffle")
    if not sources:
        raise UsageError("give at least one source")
    for s in sources:
        inspect_input(s.path)  # a missing source fails before any work
    out_text = os.fspath(out)
    parent = tempfile.gettempdir() if objects.is_url(out_text) else str(Path(out_text).resolve().parent)
    _remove_stale_work(Path(parent))
    work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=parent))
    (work / "owner").write_text(str(os.getpid()))
    try:
        infos, sides, available, held_out = _filter_sources(sources, work, plan, jobs)
        target: dict = {"records": records} if records is not None else {"tokens": tokens, "tokenizer": str(tokenizer)}
        drawn_path = work / "mix.jsonl"
        _draw_all(sources, infos, available, drawn_path, seed=seed, records=records, tokens=tokens,
                  tokenizer=tokenizer, target=target)
        inputs = [str(drawn_path)]
        if plan.holdout is not None:  # the held-out records, as they are: never drawn, never upsampled
            validation = work / "validation.jsonl"
            with open(validation, "wb") as f:
                for path in held_out:
                    if path is not None:
                        with open(path, "rb") as part:
                            shutil.copyfileobj(part, f, 1 << 20)
            inputs.append(str(validation))
        info = MixInfo(seed=seed, target=target, sources=tuple(infos), sides=tuple(sides),
                       holdout=None if plan.holdout is None else
                       {"fraction": plan.holdout, "key": plan.holdout_key_used, "seed": plan.holdout_seed})
        final = PipelineOptions(
            split=dataclasses.replace(plan.split, check=None, max_errors=None, max_reject_ratio=None),
            name=plan.name, shuffle=True, seed=seed, shuffle_memory=plan.shuffle_memory, mix=info,
            holdout=plan.holdout, holdout_key=plan.holdout_key, holdout_seed=plan.holdout_seed,
        )
        named = _naming_the_mix(inputs)
        result = split(inputs, out, final, engine=engine, jobs=jobs, overwrite=overwrite, dry_run=dry_run,
                       progress=progress, warn=(lambda msg: warn(named(msg))) if warn is not None else None)
        result.warnings = [named(msg) for msg in result.warnings]
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _naming_the_mix(inputs: list[str]) -> Callable[[str], str]:
    """Warnings of the final split name its inputs, the mix's own files in a work folder
    that is gone by the end: 'the drawn mix, record 25' says what they are."""
    labels = {inputs[0]: "the drawn mix", **({inputs[1]: "the held-out records"} if len(inputs) > 1 else {})}

    def named(msg: str) -> str:
        for path, label in labels.items():
            if msg.startswith(path + ":"):
                rest = msg[len(path) + 1:]
                line, sep, tail = rest.partition(": ")
                return f"{label}, record {line}: {tail}" if sep and line.isdigit() else f"{label}:{rest}"
        return msg

    return named


def _remove_stale_work(parent: Path) -> None:
    """Work folders of mixes killed before they cleaned up (their owner process is gone)."""
    for folder in parent.glob(f"{_WORK_PREFIX}*"):
        try:
            owner = int((folder / "owner").read_text())
        except (OSError, ValueError):
            continue  # not ours to judge (a folder being made, or not a mix's)
        if not pid_alive(owner) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _filter_sources(sources: Sequence[MixSource], work: Path, plan: PipelineOptions, jobs: int | None):
    """Stage 1: each source through the plan's filters; (infos, side files, available file)."""
    sub = dataclasses.replace(
        plan, shuffle=False, seed=0, name=None,
        split=dataclasses.replace(plan.split, max_records=_HUGE, max_bytes=None, num_shards=None, format="jsonl",
                                  parquet=None, name="{stem}-{index:05d}.jsonl", rejects="rejects.jsonl",
                                  allow_empty=True),
    )
    infos: list[dict] = []
    sides: list[tuple[str, str]] = []
    available: list[Path | None] = []
    held_out: list[Path | None] = []
    for i, source in enumerate(sources):
        folder = work / f"source-{i:03d}"
        result = split_local([source.path], folder, sub, jobs=jobs)
        m = result.manifest
        c = m["counts"]
        set_aside = {k: c[k] for k in ("rejected", "duplicates", "excluded", "blank")}
        if c["read"] != sum(set_aside.values()) + c["train"] + c["validation"]:
            raise ConservationError(f"internal error: {source.path}: read {c['read']} != set aside "
                                    f"{sum(set_aside.values())} + available {c['train']} + held out {c['validation']}; "
                                    "please report it")
        (src,) = m["sources"]
        infos.append({"path": source.path, "bytes": src.get("bytes"), "sha256": src.get("sha256"),
                      "weight": source.weight, "read": c["read"], "set_aside": set_aside,
                      "available": c["train"], **({"held_out": c["validation"]} if plan.holdout is not None else {})})
        for key in _SIDE_KEYS:
            entry = m.get(key)
            if isinstance(entry, dict) and entry.get("records"):
                sides.append((key, str(folder / entry["path"])))
        by_split = {f.get("split", "train"): folder / f["path"] for f in m["files"]}
        available.append(by_split.get("train"))
        held_out.append(by_split.get("validation"))
    return infos, sides, available, held_out


def _draw_all(sources, infos, available, drawn_path: Path, *, seed, records, tokens, tokenizer, target) -> None:
    """Stage 2: each source's draws, written source after source to `drawn_path`."""
    weights = [s.weight for s in sources]
    counts: list[array | None] = [None] * len(sources)
    if tokens is not None:
        for i, path in enumerate(available):
            if path is not None:
                counts[i], template = _count_tokens(path, tokenizer)
                target["chat_template"] = template
    quotas = share_out(records if records is not None else tokens, weights)
    with open(drawn_path, "wb") as out:
        for i, path in enumerate(available):
            info, quota = infos[i], quotas[i]
            n = info["available"]
            if quota and not n:
                raise DataError(f"{sources[i].path}: no record left after the filters, but its weight asks for "
                                f"{quota:,} {'records' if records is not None else 'tokens'}")
            info["share"] = quota
            drawn = spent = 0
            if n:
                offsets = _line_offsets(path)
                fd = os.open(path, os.O_RDONLY)
                try:
                    for _epoch, k in draw(n, seed, i, records=quota if records is not None else None,
                                         budget=quota if tokens is not None else None, tokens=counts[i]):
                        out.write(os.pread(fd, offsets[k + 1] - offsets[k], offsets[k]))
                        drawn += 1
                        if counts[i] is not None:
                            spent += counts[i][k]
                finally:
                    os.close(fd)
            info["drawn"] = drawn
            info["epochs"] = round(drawn / n, 4) if n else 0
            info["full_epochs"] = drawn // n if n else 0
            if tokens is not None:
                info["tokens_drawn"] = spent
        out.flush()
        os.fsync(out.fileno())
