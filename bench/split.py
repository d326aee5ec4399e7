#!/usr/bin/env python3
"""Benchmark ``shardkit split`` against coreutils.

Contenders, run alternately (the order rotates each round), each on a fresh output
folder under bench/data/out/, after an untimed warm-up read of the input and a sync:

  (s)  shardkit split IN -o D --max-records M --quiet
  (a)  bash -c 'split -l M IN D/x && sha256sum IN D/x* > D/SUMS && sync'   same guarantees
  (b)  split -l M IN D/x                                                  bare floor
  (s2) (s) on the doubled input, to show peak RSS does not grow with input size
  (sp) (s) on the plain generator's data (the others run on users-shaped data: a `meta`
       object on every record, long answers, about 1% invalid records)

    .venv/bin/python bench/split.py [--runs 3] [--quick] [--shardkit PATH] [--check]

Writes bench/results/split.json (split-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, dataset, doubled, fmt_table, fresh_dir, measure, median, warm, write_result

RECORDS, QUICK_RECORDS, SEED = 100_000, 10_000, 1
TARGETS = {"time_ratio_max": 0.8, "split_ratio_max": 3.0, "rss_mb_max": 48.0, "doubled_rss_ratio": (0.9, 1.1)}  # issue 19


@dataclass
class Contender:
    """A command to time: ``argv(input, outdir)``; ``mkdir`` if it needs outdir to exist."""

    key: str
    label: str
    argv: Callable[[Path, Path], list[str]]
    mkdir: bool
    doubled: bool = False
    users: bool = True  # the users-shaped data (meta on every record, ~1% invalid); False: plain


def contenders(shardkit: str, max_records: int) -> list[Contender]:
    """The four contenders, in first-round order."""
    m = str(max_records)
    pipeline = f'split -l {m} "$1" "$2/x" && sha256sum "$1" "$2"/x* > "$2/SUMS" && sync'

    def sk(i: Path, o: Path) -> list[str]:
        return [shardkit, "split", str(i), "-o", str(o), "--max-records", m, "--quiet"]

    return [
        Contender("shardkit", "(s) shardkit split", sk, mkdir=False),
        Contender(
            "coreutils_pipeline",
            "(a) split+sha256sum+sync",
            lambda i, o: ["bash", "-c", pipeline, "bench", str(i), str(o)],
            mkdir=True,
        ),
        Contender("split", "(b) split", lambda i, o: ["split", "-l", m, str(i), f"{o}/x"], True),
        Contender("shardkit_doubled", "(s) shardkit split, 2x input", sk, False, doubled=True),
        Contender("plain_shardkit", "(sp) shardkit split, plain data", sk, False, users=False),
    ]


def check_output(c: Contender, out: Path, shards: int) -> None:
    """Fail loudly if a contender 'won' by not doing the work."""
    names = {p.name for p in out.iterdir()}
    if "shardkit" in c.key:
        missing = {"manifest.json", "SHA256SUMS"} - names
        if missing:
            sys.exit(f"{c.label}: output lacks {sorted(missing)}; got {sorted(names)[:10]}")
    elif sum(n.startswith("x") for n in names) != shards:
        sys.exit(f"{c.label}: expected {shards} shards, got {sorted(names)}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records, smoke test")
    ap.add_argument("--shardkit", default=str(ROOT / ".venv/bin/shardkit"), help="executable")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    if not Path(args.shardkit).exists():
        sys.exit(f"shardkit not found at {args.shardkit} (pip install -e . or pass --shardkit)")

    records = QUICK_RECORDS if args.quick else RECORDS
    max_records = records // 2  # 50,000 for the full run: two shards, four when doubled
    single = dataset(records, SEED, users=True)
    inputs = {(True, False): single, (True, True): doubled(single), (False, False): dataset(records, SEED)}
    cs = contenders(args.shardkit, max_records)
    runs: dict[str, list] = {c.key: [] for c in cs}

    for r in range(args.runs):
        for c in cs[r % len(cs) :] + cs[: r % len(cs)]:
            src = inputs[c.users, c.doubled]
            os.sync()  # nobody pays for an earlier run's dirty pages
            warm(src)
            with fresh_dir(create=c.mkdir) as out:
                m = measure(c.argv(src, out))
                check_output(c, out, 4 if c.doubled else 2)
            runs[c.key].append(m.raw())
            print(
                f"round {r + 1}/{args.runs}  {c.label:<32} {m.elapsed_s:7.3f} s "
                f"{m.peak_rss_mb:7.1f} MB",
                file=sys.stderr,
            )

    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
    rows = [
        [
            c.label,
            f"{med[c.key]:.3f}",
            f"{min(x['elapsed_s'] for x in runs[c.key]):.3f}",
            f"{rss[c.key]:.1f}",
            f"{med[c.key] / med['coreutils_pipeline']:.2f}",
            f"{med[c.key] / med['split']:.2f}",
        ]
        for c in cs
    ]
    print(fmt_table(["contender", "median s", "min s", "peak RSS MB", "/ (a)", "/ (b)"], rows))

    time_ratio = med["shardkit"] / med["coreutils_pipeline"]
    dbl_ratio = rss["shardkit_doubled"] / rss["shardkit"]
    lo, hi = TARGETS["doubled_rss_ratio"]
    ratios = {
        "shardkit_over_coreutils_pipeline": round(time_ratio, 3),
        "shardkit_over_split": round(med["shardkit"] / med["split"], 3),
        "plain_shardkit_over_split": round(med["plain_shardkit"] / med["split"], 3),
        "shardkit_peak_rss_mb": round(rss["shardkit"], 2),
        "doubled_rss_ratio": round(dbl_ratio, 3),
    }
    met = {
        "shardkit_over_coreutils_pipeline": time_ratio <= TARGETS["time_ratio_max"],
        "shardkit_over_split": ratios["shardkit_over_split"] <= TARGETS["split_ratio_max"],
        "shardkit_peak_rss_mb": rss["shardkit"] <= TARGETS["rss_mb_max"],
        "doubled_rss_ratio": lo <= dbl_ratio <= hi,
    }
    print(
        f"\ndoubled input: peak RSS {rss['shardkit_doubled']:.1f} MB vs {rss['shardkit']:.1f} MB"
        f" single -> ratio {dbl_ratio:.2f} (target {lo}-{hi})"
    )
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} -> {'met' if ok else 'MISSED'}")

    path = write_result(
        "split-quick" if args.quick else "split",
        {
            "params": {
                "records": records,
                "seed": SEED,
                "max_records": max_records,
                "runs": args.runs,
                "shardkit": args.shardkit,
            },
            "files": {
                k: {"path": str(p.relative_to(ROOT)), "bytes": p.stat().st_size}
                for k, p in (("users", single), ("users_doubled", inputs[True, True]),
                             ("plain", inputs[False, False]))
            },
            "commands": {c.key: c.argv(Path("IN"), Path("D")) for c in cs},
            "runs": runs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "min_s": {k: min(x["elapsed_s"] for x in v) for k, v in runs.items()},
            "peak_rss_mb": {k: round(v, 2) for k, v in rss.items()},
            "ratios": ratios,
            "targets": {
                "shardkit_over_coreutils_pipeline": TARGETS["time_ratio_max"],
                "shardkit_over_split": TARGETS["split_ratio_max"],
                "shardkit_peak_rss_mb": TARGETS["rss_mb_max"],
                "doubled_rss_ratio": [lo, hi],
            },
            "targets_met": met,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
