#!/usr/bin/env python3
"""Benchmark the chat-template check (`validate --tokenizer DIR --max-tokens N`) against a
plain loop doing the least the same answer needs: render each record once with jinja2 (the
sandbox transformers uses) and batch-encode the texts with `tokenizers`.

Same data (users-shaped chat records: a `meta` key, non-ASCII text, long answers, ~1%
invalid), same tokenizer (a 32k byte-level BPE trained on the data by this script, cached in
bench/data/), same ChatML template, same run. shardkit does more than the loop: it also
validates every record, renders each assistant turn's prefixes to find the loss spans
(the prefix rule), and maps them to tokens.

Contenders, run alternately (the order rotates each round), after an untimed warm-up read:

  (t)  shardkit validate IN --kind chat --tokenizer DIR --max-tokens 4096  (--jobs auto)
  (t1) the same with --jobs 1                                               one process
  (l)  the plain loop: orjson.loads, template.render, tokenizer.encode_batch per 1,000

    .venv/bin/python bench/template.py [--runs 3] [--records 20000] [--quick]

Writes bench/results/template.json (template-quick.json with --quick).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import (
    DATA,
    ROOT,
    dataset,
    fmt_table,
    measure,
    peer_args,
    timings,
    warm,
    write_result,
)

RECORDS, QUICK_RECORDS, SEED = 20_000, 2_000, 1
LIMIT = 4096
TARGETS = {"ratio_1job_max": 1.3, "ratio_2jobs_max": 1.0}  # issue 20
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LOOP = """
import sys, orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
folder = sys.argv[2]
tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
config = orjson.loads(open(folder + "/tokenizer_config.json", "rb").read())
template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
texts, total = [], 0
def flush():
    global texts, total
    total += sum(len(e) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    texts = []
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            texts.append(template.render(messages=orjson.loads(line)["messages"], add_generation_prompt=False))
        except Exception:
            continue
        if len(texts) == 1000:
            flush()
flush()
print(total)
"""


def model_folder(data: Path) -> Path:
    """A 32k byte-level BPE trained on `data` and the ChatML template, cached by data size."""
    folder = DATA / f"model-bpe32k-{data.stem}"
    stamp = folder / "trained-on.json"
    key = {"data": data.name, "bytes": data.stat().st_size, "template": CHATML}
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return folder
    import orjson
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts():
        with open(data, "rb") as f:
            for i, line in enumerate(f):
                if i >= 5000:
                    return
                try:
                    for m in orjson.loads(line)["messages"]:
                        if isinstance(m.get("content"), str):
                            yield m["content"]
                except Exception:
                    continue

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    stamp.write_text(json.dumps(key))
    return folder


def main(argv: list[str] | None = None) -> int:
    args = peer_args(__doc__, RECORDS, QUICK_RECORDS, argv)
    records = args.records
    src = dataset(records, SEED, users=True)
    model = model_folder(src)
    sk = [args.shardkit, "validate", str(src), "--kind", "chat", "--tokenizer", str(model),
          "--max-tokens", str(LIMIT), "--quiet", "--max-errors", str(10 * records)]
    cs = [
        ("shardkit", "(t) validate --tokenizer (jobs auto)", sk),
        ("shardkit_1job", "(t1) validate --tokenizer -j 1", [*sk, "--jobs", "1"]),
        ("loop", "(l) jinja2 render + encode_batch loop", [args.python, "-c", LOOP, str(src), str(model)]),
    ]
    runs: dict[str, list] = {k: [] for k, _, _ in cs}
    for r in range(args.runs):
        for key, label, cmd in cs[r % len(cs):] + cs[: r % len(cs)]:
            warm(src)
            m = measure(cmd, tree=True, check=key == "loop")
            if m.returncode not in (0, 1):  # 1: invalid records found (the ~1% planted)
                sys.exit(f"{label} exited {m.returncode}:\n{m.stderr}")
            runs[key].append({**m.raw(), "memory_mb": round(m.memory_mb, 2)})
            print(f"round {r + 1}/{args.runs}  {label:<40} {m.elapsed_s:7.3f} s {m.memory_mb:7.1f} MB", file=sys.stderr)
    med, mem, fields = timings(runs)
    rows = [[label, f"{med[k]:.3f}", f"{min(x['elapsed_s'] for x in runs[k]):.3f}", f"{mem[k]:.1f}",
             f"{med[k] / med['loop']:.2f}"] for k, label, _ in cs]
    print(fmt_table(["contender", "median s", "min s", "peak memory MB", "/ (l)"], rows))
    ratios = {"shardkit_1job_over_loop": round(med["shardkit_1job"] / med["loop"], 3),
              "shardkit_over_loop": round(med["shardkit"] / med["loop"], 3)}
    met = {"shardkit_1job_over_loop": ratios["shardkit_1job_over_loop"] <= TARGETS["ratio_1job_max"],
           "shardkit_over_loop": ratios["shardkit_over_loop"] < TARGETS["ratio_2jobs_max"]}
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} -> {'met' if ok else 'MISSED'}")
    path = write_result("template-quick" if args.quick else "template", {
        "params": {"records": records, "seed": SEED, "runs": args.runs, "max_tokens": LIMIT,
                   "tokenizer": "byte-level BPE, 32k vocab, trained on the first 5,000 records", "template": CHATML},
        "file": {"path": str(src.relative_to(ROOT)), "bytes": src.stat().st_size},
        "commands": {k: cmd for k, _, cmd in cs},
        **fields,
        "ratios": ratios, "targets": TARGETS, "targets_met": met,
    })
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
