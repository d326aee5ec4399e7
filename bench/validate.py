#!/usr/bin/env python3
"""Benchmark ``shardkit validate --kind chat`` against a bare orjson loop.

Two datasets: users' (the targets), shaped like real exports (a `meta` object beside
`messages` on every record, non-ASCII text, long answers, about 1% invalid records), and
the plain generator's, kept as a second row so both stay tracked.

Contenders, run alternately (the order rotates each round), after an untimed warm-up read:

  (v)  shardkit validate IN --kind chat --quiet --max-reject-ratio 0.05   (--jobs auto)
  (v1) the same with --jobs 1                                              one process
  (o)  python -c 'for line in f: orjson.loads(line)'       the bare decode loop
  (v2) (v) on the doubled input, to show memory does not grow with input size
  (p), (p1), (po): (v), (v1), (o) on the plain generator's data
  (g), (g1), (go): (v), (v1), (o) with --kind sharegpt on the users' records as ShareGPT
  (a), (a1), (ao): (v), (v1), (o) with --kind alpaca on the users' records as alpaca (`meta` kept)

Memory is the peak of the summed PSS of the whole process tree (parent + workers), sampled
every 20 ms, or the peak RSS of the largest process if that is higher.

    .venv/bin/python bench/validate.py [--runs 3] [--quick] [--check]

Writes bench/results/validate.json (validate-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from common import (
    ROOT,
    converted,
    dataset,
    doubled,
    fmt_table,
    measure,
    median,
    warm,
    write_result,
)

RECORDS, QUICK_RECORDS, SEED = 100_000, 10_000, 1
TARGETS = {"time_ratio_max": 0.8, "time_ratio_1job_max": 1.2, "memory_mb_max": 128.0}  # issue 19
BARE = "import orjson, sys\nwith open(sys.argv[1], 'rb') as f:\n    for line in f:\n        orjson.loads(line)\n"


@dataclass
class Contender:
    key: str
    label: str
    argv: list[str]
    data: str = "users"  # users, doubled, plain, sharegpt, alpaca

    @property
    def loop(self) -> str:
        """The bare loop on the same data: what this contender is compared with."""
        return {"users": "orjson_loop", "doubled": "orjson_loop", "plain": "plain_orjson_loop"}.get(
            self.data, f"{self.data}_orjson_loop")


def contenders(shardkit: str, python: str) -> list[Contender]:
    sk = [shardkit, "validate", "{IN}", "--kind", "chat", "--quiet", "--max-reject-ratio", "0.05"]
    loop = [python, "-c", BARE, "{IN}"]
    sg = [shardkit, "validate", "{IN}", "--kind", "sharegpt", "--quiet", "--max-reject-ratio", "0.05"]
    al = [shardkit, "validate", "{IN}", "--kind", "alpaca", "--quiet", "--max-reject-ratio", "0.05"]
    return [
        Contender("shardkit", "(v) shardkit validate", sk),
        Contender("shardkit_1job", "(v1) shardkit validate -j 1", [*sk, "--jobs", "1"]),
        Contender("orjson_loop", "(o) bare orjson loop", loop),
        Contender("shardkit_doubled", "(v2) shardkit validate, 2x input", sk, "doubled"),
        Contender("plain_shardkit", "(p) validate, plain data", sk, "plain"),
        Contender("plain_shardkit_1job", "(p1) validate -j 1, plain data", [*sk, "--jobs", "1"], "plain"),
        Contender("plain_orjson_loop", "(po) orjson loop, plain data", loop, "plain"),
        Contender("sharegpt_shardkit", "(g) validate --kind sharegpt", sg, "sharegpt"),
        Contender("sharegpt_shardkit_1job", "(g1) validate --kind sharegpt -j 1", [*sg, "--jobs", "1"], "sharegpt"),
        Contender("sharegpt_orjson_loop", "(go) orjson loop, ShareGPT data", loop, "sharegpt"),
        Contender("alpaca_shardkit", "(a) validate --kind alpaca", al, "alpaca"),
        Contender("alpaca_shardkit_1job", "(a1) validate --kind alpaca -j 1", [*al, "--jobs", "1"], "alpaca"),
        Contender("alpaca_orjson_loop", "(ao) orjson loop, alpaca data", loop, "alpaca"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records, smoke test")
    ap.add_argument("--shardkit", default=str(ROOT / ".venv/bin/shardkit"), help="executable")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"), help="interpreter for the bare loop")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    if not Path(args.shardkit).exists():
        sys.exit(f"shardkit not found at {args.shardkit} (pip install -e . or pass --shardkit)")

    records = QUICK_RECORDS if args.quick else RECORDS
    single = dataset(records, SEED, users=True)
    inputs = {"users": single, "doubled": doubled(single), "plain": dataset(records, SEED),
              "sharegpt": converted(single, "sharegpt"), "alpaca": converted(single, "alpaca")}
    cs = contenders(args.shardkit, args.python)
    runs: dict[str, list] = {c.key: [] for c in cs}
    for r in range(args.runs):
        for c in cs[r % len(cs) :] + cs[: r % len(cs)]:
            src = inputs[c.data]
            warm(src)
            m = measure([str(src) if a == "{IN}" else a for a in c.argv], tree=True)
            runs[c.key].append({**m.raw(), "memory_mb": round(m.memory_mb, 2)})
            print(
                f"round {r + 1}/{args.runs}  {c.label:<34} {m.elapsed_s:7.3f} s {m.memory_mb:7.1f} MB",
                file=sys.stderr,
            )

    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    mem = {k: max(x["memory_mb"] for x in v) for k, v in runs.items()}
    rows = [
        [c.label, f"{med[c.key]:.3f}", f"{min(x['elapsed_s'] for x in runs[c.key]):.3f}", f"{mem[c.key]:.1f}",
         f"{med[c.key] / med[c.loop]:.2f}"]
        for c in cs
    ]
    print(fmt_table(["contender", "median s", "min s", "peak memory MB", "/ (o)"], rows))
    ratio = med["shardkit"] / med["orjson_loop"]
    ratios = {
        "shardkit_over_orjson_loop": round(ratio, 3),
        "shardkit_1job_over_orjson_loop": round(med["shardkit_1job"] / med["orjson_loop"], 3),
        "plain_shardkit_over_orjson_loop": round(med["plain_shardkit"] / med["plain_orjson_loop"], 3),
        "plain_shardkit_1job_over_orjson_loop": round(med["plain_shardkit_1job"] / med["plain_orjson_loop"], 3),
        "sharegpt_shardkit_over_orjson_loop": round(med["sharegpt_shardkit"] / med["sharegpt_orjson_loop"], 3),
        "sharegpt_shardkit_1job_over_orjson_loop": round(med["sharegpt_shardkit_1job"] / med["sharegpt_orjson_loop"], 3),
        "alpaca_shardkit_over_orjson_loop": round(med["alpaca_shardkit"] / med["alpaca_orjson_loop"], 3),
        "alpaca_shardkit_1job_over_orjson_loop": round(med["alpaca_shardkit_1job"] / med["alpaca_orjson_loop"], 3),
        "shardkit_memory_mb": round(mem["shardkit"], 2),
        "doubled_memory_ratio": round(mem["shardkit_doubled"] / mem["shardkit"], 3),
    }
    met = {
        "shardkit_over_orjson_loop": ratio <= TARGETS["time_ratio_max"],
        "shardkit_1job_over_orjson_loop": ratios["shardkit_1job_over_orjson_loop"] <= TARGETS["time_ratio_1job_max"],
        "shardkit_memory_mb": max(mem["shardkit"], mem["shardkit_doubled"]) <= TARGETS["memory_mb_max"],
    }
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} -> {'met' if ok else 'MISSED'}")
    path = write_result(
        "validate-quick" if args.quick else "validate",
        {
            "params": {"records": records, "seed": SEED, "runs": args.runs, "shardkit": args.shardkit},
            "files": {
                k: {"path": str(p.relative_to(ROOT)), "bytes": p.stat().st_size} for k, p in inputs.items()
            },
            "commands": {c.key: c.argv for c in cs},
            "runs": runs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "memory_mb": {k: round(v, 2) for k, v in mem.items()},
            "ratios": ratios,
            "targets": TARGETS,
            "targets_met": met,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
