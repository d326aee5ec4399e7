#!/usr/bin/env python3
"""Benchmark `split --tokenize` against a plain loop doing the same work: jinja2 render of
each record and of its assistant prefixes (the label spans), `tokenizers` batch encode of
the rendered texts, labels from the spans. Same data (users-shaped chat records), same 32k
byte-level BPE and ChatML template as bench/template.py, same run. shardkit also validates
the structure it needs, writes Parquet shards (sha256, fsync) and the manifest.

Contenders, run alternately (the order rotates each round), after an untimed warm-up read:

  (k1) shardkit split IN -o OUT -n 50000 --tokenize DIR --seq-len 32768 --pack --jobs 1
  (l)  the plain loop

    .venv/bin/python bench/tokenized.py [--runs 3] [--records 100000] [--quick]

Writes bench/results/tokenize.json (tokenize-quick.json with --quick). (Not named tokenize.py: that
would hide the standard library module of that name from the scripts here.)
"""

from __future__ import annotations

import json
import sys

from common import (
    ROOT,
    dataset,
    fmt_table,
    fresh_dir,
    measure,
    peer_args,
    timings,
    warm,
    write_result,
)
from template import model_folder

RECORDS, QUICK_RECORDS, SEED, SEQ_LEN = 100_000, 2_000, 1, 32768
TARGETS = {"ratio_1job_max": 1.3}  # issue 23
LOOP = r"""
import sys, orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
folder = sys.argv[2]
tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
config = orjson.loads(open(folder + "/tokenizer_config.json", "rb").read())
template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
texts, spans, labelled = [], [], 0
def flush():
    global texts, spans, labelled
    for enc, sp in zip(tokenizer.encode_batch(texts, add_special_tokens=False), spans):
        labels = [-100] * len(enc.ids)
        for s, e in sp:
            k0, k1 = enc.char_to_token(s), enc.char_to_token(e - 1)
            if k0 is not None and k1 is not None:
                labels[k0:k1 + 1] = enc.ids[k0:k1 + 1]
        labelled += len(labels)
    texts, spans = [], []
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            ms = orjson.loads(line)["messages"]
            text = template.render(messages=ms, add_generation_prompt=False)
            sp = []
            for i, m in enumerate(ms):
                if m["role"] == "assistant":
                    before = template.render(messages=ms[:i], add_generation_prompt=True)
                    through = template.render(messages=ms[:i + 1], add_generation_prompt=False)
                    sp.append((len(before), len(through)))
        except Exception:
            continue
        texts.append(text)
        spans.append(sp)
        if len(texts) == 1000:
            flush()
flush()
print(labelled)
"""


def main(argv: list[str] | None = None) -> int:
    args = peer_args(__doc__, RECORDS, QUICK_RECORDS, argv)
    records = args.records
    src = dataset(records, SEED, users=True)
    model = model_folder(dataset(20_000, SEED, users=True))  # the tokenizer bench/template.py trains

    def split(out) -> list[str]:
        return [args.shardkit, "split", str(src), "-o", str(out), "-n", "50000", "--tokenize", str(model),
                "--seq-len", str(SEQ_LEN), "--pack", "--jobs", "1", "--quiet"]

    cs = [("shardkit_1job", "(k1) split --tokenize --pack -j 1", True), ("loop", "(l) render + spans + encode_batch loop", False)]
    runs: dict[str, list] = {k: [] for k, _, _ in cs}
    written: dict[str, int] = {}
    for r in range(args.runs):
        for key, label, is_split in cs[r % len(cs):] + cs[: r % len(cs)]:
            warm(src)
            with fresh_dir() as out:
                m = measure(split(out) if is_split else [args.python, "-c", LOOP, str(src), str(model)], tree=True)
                if is_split:
                    written[key] = json.loads((out / "manifest.json").read_text())["counts"]["written"]
            runs[key].append({**m.raw(), "memory_mb": round(m.memory_mb, 2)})
            print(f"round {r + 1}/{args.runs}  {label:<40} {m.elapsed_s:8.3f} s {m.memory_mb:7.1f} MB", file=sys.stderr)
    med, mem, fields = timings(runs)
    rows = [[label, f"{med[k]:.3f}", f"{records / med[k]:,.0f}", f"{mem[k]:.1f}", f"{med[k] / med['loop']:.2f}"]
            for k, label, _ in cs]
    print(fmt_table(["contender", "median s", "records/s", "peak memory MB", "/ (l)"], rows))
    ratio = round(med["shardkit_1job"] / med["loop"], 3)
    met = {"shardkit_1job_over_loop": ratio <= TARGETS["ratio_1job_max"]}
    print(f"target shardkit_1job_over_loop: {ratio} -> {'met' if met['shardkit_1job_over_loop'] else 'MISSED'}")
    path = write_result("tokenize-quick" if args.quick else "tokenize", {
        "params": {"records": records, "seed": SEED, "runs": args.runs, "seq_len": SEQ_LEN, "pack": True,
                   "tokenizer": "byte-level BPE, 32k vocab (bench/template.py's)"},
        "file": {"path": str(src.relative_to(ROOT)), "bytes": src.stat().st_size},
        "commands": {"shardkit": split("OUT"), "loop": [args.python, "-c", "LOOP (see bench/tokenized.py)"]},
        "written": written,
        "runs": runs,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "records_per_s": {k: round(records / v) for k, v in med.items()},
        "memory_mb": {k: round(v, 2) for k, v in mem.items()},
        "ratios": {"shardkit_1job_over_loop": ratio}, "targets": TARGETS, "targets_met": met,
    })
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
