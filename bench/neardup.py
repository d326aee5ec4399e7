#!/usr/bin/env python3
"""Benchmark near-duplicate removal (`split --near-dedup 0.8`) against a plain datasketch
loop over the same shingles: MinHash(num_perm=128).update_batch of each record's word
5-grams (the same words: case-folded, split on non-letters/digits, of the same text), then
MinHashLSH query, a jaccard check of the candidates and insert, in input order.

Data: the 100k users-shaped bench file with 1% near-copies planted (a record repeated with
one word added at the end), so both find work to do. shardkit also writes the shards, the
near-duplicates file and the manifest (sha256, fsync); the loop only counts.

Contenders, run alternately (the order rotates each round), after an untimed warm-up read:

  (n1) shardkit split IN -o OUT -n 50000 --near-dedup 0.8 --jobs 1
  (n2) the same with --jobs 2 (signatures on two worker processes, LSH in input order)
  (d)  the datasketch loop

    .venv/bin/python bench/neardup.py [--runs 3] [--quick]

Writes bench/results/neardup.json (neardup-quick.json with --quick).
"""

from __future__ import annotations

import json
import random
import sys

from common import (
    DATA,
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

RECORDS, QUICK_RECORDS, SEED, THRESHOLD = 100_000, 5_000, 1, 0.8
TARGETS = {"ratio_1job_max": 1.0, "ratio_2jobs_max": 0.7, "memory_mb_max": 512.0}  # issue 21
LOOP = r"""
import re, sys, orjson
from datasketch import MinHash, MinHashLSH
SPLIT = re.compile(r"[\W_]+")
K, T = 5, float(sys.argv[2])
lsh = MinHashLSH(threshold=T, num_perm=128)
kept, dups = {}, 0
def text(o):
    ms = o.get("messages") if isinstance(o, dict) else None
    if not isinstance(ms, list):
        return ""
    return "\n".join(c for m in ms if isinstance(m, dict) and isinstance(c := m.get("content"), str) and c)
with open(sys.argv[1], "rb") as f:
    for n, line in enumerate(f, 1):
        try:
            o = orjson.loads(line)
        except Exception:
            continue
        ws = [w for w in SPLIT.split(text(o).casefold()) if w]
        if not ws:
            continue
        k = min(K, len(ws))
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(ws[i:i + k]).encode() for i in range(len(ws) - k + 1)])
        if any(kept[c].jaccard(m) >= T for c in lsh.query(m)):
            dups += 1
            continue
        kept[n] = m
        lsh.insert(n, m)
print(dups)
"""


def planted(records: int) -> tuple:
    """The users bench file plus 1% near-copies at the end (cached)."""
    src = dataset(records, SEED, users=True)
    path = DATA / f"{src.stem}-near.jsonl"
    stamp = path.with_name(path.name + ".meta.json")
    key = {"src": src.name, "bytes": src.stat().st_size}
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return path, json.loads(stamp.read_text())
    lines = src.read_bytes().splitlines()
    rng = random.Random(SEED)
    copies = []
    for i in rng.sample(range(len(lines)), records // 100):
        try:
            obj = json.loads(lines[i])
            obj["messages"][-1]["content"] += " indeed"
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        copies.append(json.dumps(obj, ensure_ascii=False).encode())
    path.write_bytes(b"\n".join(lines + copies) + b"\n")
    stamp.write_text(json.dumps(key))
    return path, key


def main(argv: list[str] | None = None) -> int:
    args = peer_args(__doc__, RECORDS, QUICK_RECORDS, argv)
    records = args.records
    src, _ = planted(records)

    def split(jobs: str, out) -> list[str]:
        return [args.shardkit, "split", str(src), "-o", str(out), "-n", "50000", "--near-dedup", str(THRESHOLD),
                "--jobs", jobs, "--quiet"]

    cs = [("shardkit_1job", "(n1) split --near-dedup 0.8 -j 1", "1"),
          ("shardkit_2jobs", "(n2) split --near-dedup 0.8 -j 2", "2"),
          ("datasketch", "(d) datasketch MinHash + MinHashLSH loop", None)]
    runs: dict[str, list] = {k: [] for k, _, _ in cs}
    found: dict[str, int] = {}
    for r in range(args.runs):
        for key, label, jobs in cs[r % len(cs):] + cs[: r % len(cs)]:
            warm(src)
            with fresh_dir() as out:
                cmd = split(jobs, out) if jobs else [args.python, "-c", LOOP, str(src), str(THRESHOLD)]
                m = measure(cmd, tree=True)
                if jobs:
                    found[key] = json.loads((out / "manifest.json").read_text())["counts"]["duplicates"]
            runs[key].append({**m.raw(), "memory_mb": round(m.memory_mb, 2)})
            print(f"round {r + 1}/{args.runs}  {label:<42} {m.elapsed_s:8.3f} s {m.memory_mb:7.1f} MB", file=sys.stderr)
    med, mem, fields = timings(runs)
    rows = [[label, f"{med[k]:.3f}", f"{min(x['elapsed_s'] for x in runs[k]):.3f}", f"{mem[k]:.1f}",
             f"{med[k] / med['datasketch']:.2f}"] for k, label, _ in cs]
    print(fmt_table(["contender", "median s", "min s", "peak memory MB", "/ (d)"], rows))
    ratios = {"shardkit_1job_over_datasketch": round(med["shardkit_1job"] / med["datasketch"], 3),
              "shardkit_2jobs_over_datasketch": round(med["shardkit_2jobs"] / med["datasketch"], 3),
              "shardkit_memory_mb": max(mem["shardkit_1job"], mem["shardkit_2jobs"])}
    met = {"shardkit_1job_over_datasketch": ratios["shardkit_1job_over_datasketch"] <= TARGETS["ratio_1job_max"],
           "shardkit_2jobs_over_datasketch": ratios["shardkit_2jobs_over_datasketch"] <= TARGETS["ratio_2jobs_max"],
           "shardkit_memory_mb": ratios["shardkit_memory_mb"] <= TARGETS["memory_mb_max"]}
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} -> {'met' if ok else 'MISSED'}")
    print(f"near-duplicates set aside: {found}", file=sys.stderr)
    path = write_result("neardup-quick" if args.quick else "neardup", {
        "params": {"records": records, "planted_copies": records // 100, "seed": SEED, "threshold": THRESHOLD,
                   "shingle": 5, "num_perm": 128, "runs": args.runs},
        "file": {"path": str(src.relative_to(ROOT)), "bytes": src.stat().st_size},
        "commands": {"shardkit": split("J", "OUT"), "datasketch": [args.python, "-c", "LOOP (see bench/neardup.py)"]},
        "near_duplicates_found": found,
        **fields,
        "ratios": ratios, "targets": TARGETS, "targets_met": met,
    })
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
