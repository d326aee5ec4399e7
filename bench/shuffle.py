#!/usr/bin/env python3
"""Benchmark ``split --shuffle`` (the two-pass external shuffle) against plain ``shardkit split``.

Contenders, run alternately (the order rotates each round), each on a fresh output folder
under bench/data/out/, after an untimed warm-up read of the input and a sync:

  (s)  shardkit split IN -o D --max-records M --quiet                       the baseline
  (x)  split IN -o D --max-records M --shuffle --seed 1 --shuffle-memory 256MiB
  (x2) (x) on the doubled input: peak RSS must stay flat as the input grows
  (xf) (x) plus --dedup exact --holdout 0.05 (information only: parses every record)

Targets (issue 7): (x) time <= 3 x (s) time; (x) peak RSS <= --shuffle-memory + 64 MB;
(x2)/(x) peak RSS within 0.9-1.1.

Until `shardkit split` has the --shuffle flags, the shuffle contenders run the library
through ``python -c`` with the same flags (`--via library`); `--via cli` (the default) runs
``shardkit split --shuffle ...`` instead, nothing else changes.

    .venv/bin/python bench/shuffle.py [--runs 3] [--quick] [--via library|cli] [--check]

Writes bench/results/shuffle.json (shuffle-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, dataset, doubled, fmt_table, fresh_dir, measure, median, warm, write_result

RECORDS, QUICK_RECORDS, SEED = 100_000, 10_000, 1
MEMORY_MB, QUICK_MEMORY_MB = 256, 32  # --shuffle-memory (MiB): the default; smaller for --quick, so
# that the quick run still has several buckets (one bucket holds the whole input and grows with it)
TARGETS = {"time_ratio_max": 3.0, "rss_over_memory_mb_max": 64.0, "doubled_rss_ratio": (0.9, 1.1)}

# `shardkit split`'s pipeline flags, parsed the way the CLI will, calling the library.
LIBRARY_SPLIT = """
import argparse, sys
from shardkit.core.io import parse_size
from shardkit.pipeline.run import run_pipeline
from shardkit.pipeline.transform import PipelineOptions
from shardkit.pipeline.shard import SplitOptions
ap = argparse.ArgumentParser()
ap.add_argument("inputs", nargs="+")
ap.add_argument("-o", "--out", required=True)
ap.add_argument("--max-records", type=int)
ap.add_argument("--shuffle", action="store_true")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--shuffle-memory", type=parse_size, default=256 * 2**20)
ap.add_argument("--dedup")
ap.add_argument("--holdout", type=float)
ap.add_argument("--quiet", action="store_true")
a = ap.parse_args()
options = PipelineOptions(split=SplitOptions(max_records=a.max_records), shuffle=a.shuffle, seed=a.seed,
                          shuffle_memory=a.shuffle_memory, dedup=a.dedup, holdout=a.holdout)
result = run_pipeline(a.inputs, a.out, options)
sys.exit(0 if result.manifest["complete"] else 1)
"""


@dataclass
class Contender:
    """A command to time: ``argv(input, outdir)``."""

    key: str
    label: str
    argv: Callable[[Path, Path], list[str]]
    doubled: bool = False


def contenders(shardkit: str, via: str, max_records: int, memory_mb: int) -> list[Contender]:
    """The four contenders, in first-round order."""
    m = str(max_records)
    split = [shardkit, "split"] if via == "cli" else [sys.executable, "-c", LIBRARY_SPLIT]
    shuffle = ["--shuffle", "--seed", "1", "--shuffle-memory", f"{memory_mb}MiB"]

    def plain(i: Path, o: Path) -> list[str]:
        return [shardkit, "split", str(i), "-o", str(o), "--max-records", m, "--quiet"]

    def shuffled(i: Path, o: Path) -> list[str]:
        return [*split, str(i), "-o", str(o), "--max-records", m, *shuffle, "--quiet"]

    def full(i: Path, o: Path) -> list[str]:
        return [*shuffled(i, o)[:-1], "--dedup", "exact", "--holdout", "0.05", "--quiet"]

    return [
        Contender("split", "(s) shardkit split", plain),
        Contender("shuffle", "(x) split --shuffle", shuffled),
        Contender("shuffle_doubled", "(x2) split --shuffle, 2x input", shuffled, doubled=True),
        Contender("shuffle_dedup_holdout", "(xf) --shuffle --dedup --holdout", full),
    ]


def check_output(c: Contender, out: Path, records: int) -> None:
    """Fail loudly if a contender 'won' by not doing the work."""
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    expected = records * (2 if c.doubled else 1)
    if not manifest["complete"] or counts["read"] != expected:
        sys.exit(f"{c.label}: incomplete run or wrong count: {counts}")
    if c.key != "shuffle_dedup_holdout" and counts["written"] != expected:
        sys.exit(f"{c.label}: wrote {counts['written']} of {expected} records")
    if c.key.startswith("shuffle") and "shuffle" not in manifest:
        sys.exit(f"{c.label}: the manifest has no shuffle section: not shuffled?")
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    if leftovers:
        sys.exit(f"{c.label}: temp files left behind: {leftovers[:5]}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records, smoke test")
    ap.add_argument("--shardkit", default=str(ROOT / ".venv/bin/shardkit"), help="executable")
    ap.add_argument("--via", choices=("library", "cli"), default="cli",
                    help="run the shuffle through python -c (library) or `shardkit split --shuffle` (cli)")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    if not Path(args.shardkit).exists():
        sys.exit(f"shardkit not found at {args.shardkit} (pip install -e . or pass --shardkit)")

    records = QUICK_RECORDS if args.quick else RECORDS
    memory_mb = QUICK_MEMORY_MB if args.quick else MEMORY_MB
    max_records = records // 2
    single = dataset(records, SEED)
    inputs = {False: single, True: doubled(single)}
    cs = contenders(args.shardkit, args.via, max_records, memory_mb)
    runs: dict[str, list] = {c.key: [] for c in cs}
    started = dt.datetime.now().astimezone()

    for r in range(args.runs):
        for c in cs[r % len(cs):] + cs[: r % len(cs)]:
            src = inputs[c.doubled]
            os.sync()
            warm(src)
            with fresh_dir() as out:
                m = measure(c.argv(src, out))
                check_output(c, out, records)
            runs[c.key].append(m.raw())
            print(f"round {r + 1}/{args.runs}  {c.label:<36} {m.elapsed_s:7.3f} s {m.peak_rss_mb:7.1f} MB",
                  file=sys.stderr)

    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
    rows = [
        [c.label, f"{med[c.key]:.3f}", f"{min(x['elapsed_s'] for x in runs[c.key]):.3f}",
         f"{rss[c.key]:.1f}", f"{med[c.key] / med['split']:.2f}"]
        for c in cs
    ]
    print(f"{started:%Y-%m-%d %H:%M %Z}, {records:,} records ({single.stat().st_size / 1e6:.0f} MB), "
          f"--shuffle-memory {memory_mb} MiB, via {args.via}, {args.runs} run(s) each")
    print(fmt_table(["contender", "median s", "min s", "peak RSS MB", "/ (s)"], rows))

    time_ratio = med["shuffle"] / med["split"]
    rss_over = rss["shuffle"] - memory_mb  # both MiB (common.measure reports ru_maxrss / 1024)
    dbl_ratio = rss["shuffle_doubled"] / rss["shuffle"]
    lo, hi = TARGETS["doubled_rss_ratio"]
    ratios = {
        "shuffle_over_split": round(time_ratio, 3),
        "shuffle_rss_over_memory_mb": round(rss_over, 2),
        "doubled_rss_ratio": round(dbl_ratio, 3),
    }
    met = {
        "shuffle_over_split": time_ratio <= TARGETS["time_ratio_max"],
        "shuffle_rss_over_memory_mb": rss_over <= TARGETS["rss_over_memory_mb_max"],
        "doubled_rss_ratio": lo <= dbl_ratio <= hi,
    }
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} -> {'met' if ok else 'MISSED'}")

    path = write_result(
        "shuffle-quick" if args.quick else "shuffle",
        {
            "local_time": started.isoformat(timespec="seconds"),
            "note": "2-core machine; other work may have run concurrently (see runs for the spread)",
            "params": {"records": records, "seed": SEED, "max_records": max_records, "runs": args.runs,
                       "shuffle_memory_mib": memory_mb, "via": args.via, "shardkit": args.shardkit},
            "files": {k: {"path": str(p.relative_to(ROOT)), "bytes": p.stat().st_size}
                      for k, p in (("single", single), ("doubled", inputs[True]))},
            "commands": {c.key: c.argv(Path("IN"), Path("D")) for c in cs},
            "runs": runs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "min_s": {k: min(x["elapsed_s"] for x in v) for k, v in runs.items()},
            "peak_rss_mb": {k: round(v, 2) for k, v in rss.items()},
            "ratios": ratios,
            "targets": {"shuffle_over_split": TARGETS["time_ratio_max"],
                        "shuffle_rss_over_memory_mb": TARGETS["rss_over_memory_mb_max"],
                        "doubled_rss_ratio": [lo, hi]},
            "targets_met": met,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and not all(met.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
