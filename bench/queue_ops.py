#!/usr/bin/env python3
"""Benchmark the queue: ingest of many small drops and of one big one, and the queue manifest.

  (i1) shardkit queue ingest ROOT   with 1,000 small drops (~30 records each) in the inbox
  (i2) shardkit queue ingest ROOT   with the 100,000-record (~290 MB) file; max_records 50000
       -> split into two shards
  (m1) shardkit manifest ROOT       on a queue of 200 files (~1 GB), first run (hashes all)
  (m2) shardkit manifest ROOT       again, nothing changed (rehashes nothing)

Drops are hard links of cached files (ingest moves the link; the cache stays). The target:
m2 / m1 <= 0.10.

    .venv/bin/python bench/queue_ops.py [--runs 3] [--quick] [--check]

Writes bench/results/queue.json (queue-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from common import DATA, ROOT, dataset, fmt_table, fresh_dir, measure, median, warm, write_result

TARGET_RERUN_RATIO = 0.10


def slices(src: Path, folder: Path, count: int, size: int) -> list[Path]:
    """`count` files of about `size` bytes of whole lines, cycling through `src` (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"part-{i:04d}.jsonl" for i in range(count)]
    if all(f.exists() for f in files):
        return files
    with open(src, "rb") as f:
        for path in files:
            chunk = f.readlines(size)
            if not chunk:
                f.seek(0)
                chunk = f.readlines(size)
            path.write_bytes(b"".join(chunk))
    return files


def new_queue(base: Path, toml: str) -> Path:
    root = base / "q"
    for rel in ("inbox", "queue/high", "queue/normal", "queue/low", "queue/processing", "queue/recently_completed",
                "queue/failed", "queue/dead", "queue/held", "queue/quarantine", "queue/split", ".shardkit"):
        (root / rel).mkdir(parents=True)
    (root / "shardkit.toml").write_text(toml + 'settle = "0s"\n')
    return root


def link_into(files: list[Path], folder: Path) -> None:
    old = time.time() - 3600
    for f in files:
        os.link(f, folder / f.name)
        os.utime(folder / f.name, (old, old))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000-record file, 100 drops, 40 manifest files")
    ap.add_argument("--shardkit", default=str(ROOT / ".venv/bin/shardkit"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = ap.parse_args(argv)
    sk = args.shardkit
    big = dataset(10_000 if args.quick else 100_000, 1)
    small = slices(big, DATA / ("queue-small-q" if args.quick else "queue-small"), 100 if args.quick else 1000, 90_000)
    mfiles = slices(big, DATA / ("queue-manifest-q" if args.quick else "queue-manifest"), 40 if args.quick else 200,
                    1_000_000 if args.quick else 5_400_000)
    runs: dict[str, list] = {"ingest_small": [], "ingest_big": [], "manifest_first": [], "manifest_rerun": []}
    for r in range(args.runs):
        with fresh_dir(create=True) as d:
            q = new_queue(d, 'kind = "chat"\n')
            link_into(small, q / "inbox")
            m = measure([sk, "queue", "ingest", str(q)])
            runs["ingest_small"].append(m.raw())
            assert len(list((q / "queue" / "normal").iterdir())) == len(small)
        with fresh_dir(create=True) as d:
            q = new_queue(d, 'kind = "chat"\nmax_records = 50000\n')
            link_into([big], q / "inbox")
            warm(big)
            m = measure([sk, "queue", "ingest", str(q)])
            runs["ingest_big"].append(m.raw())
            assert len(list((q / "queue" / "normal").iterdir())) == (1 if args.quick else 2)
        with fresh_dir(create=True) as d:
            q = new_queue(d, "")
            link_into(mfiles, q / "queue" / "normal")
            for f in mfiles:
                warm(f)
            runs["manifest_first"].append(measure([sk, "manifest", str(q)]).raw())
            runs["manifest_rerun"].append(measure([sk, "manifest", str(q)]).raw())
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['elapsed_s']:.2f}s" for k, v in runs.items()), file=sys.stderr)
    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
    sizes = {"ingest_small": sum(f.stat().st_size for f in small), "ingest_big": big.stat().st_size,
             "manifest_first": sum(f.stat().st_size for f in mfiles)}
    sizes["manifest_rerun"] = sizes["manifest_first"]
    labels = {"ingest_small": f"(i1) ingest {len(small)} small drops", "ingest_big": "(i2) ingest one big file (split)",
              "manifest_first": f"(m1) manifest, {len(mfiles)} files, first", "manifest_rerun": "(m2) manifest, unchanged rerun"}
    print(fmt_table(["contender", "median s", "peak RSS MB", "input MB"],
                    [[labels[k], f"{med[k]:.3f}", f"{rss[k]:.1f}", f"{sizes[k] / 1e6:.0f}"] for k in runs]))
    ratio = med["manifest_rerun"] / med["manifest_first"]
    met = ratio <= TARGET_RERUN_RATIO
    print(f"target manifest rerun / first run: {ratio:.3f} (<= {TARGET_RERUN_RATIO}) -> {'met' if met else 'MISSED'}")
    path = write_result("queue-quick" if args.quick else "queue", {
        "params": {"runs": args.runs, "small_drops": len(small), "manifest_files": len(mfiles)},
        "bytes": sizes, "runs": runs, "median_s": {k: round(v, 4) for k, v in med.items()},
        "peak_rss_mb": rss, "ratios": {"manifest_rerun_over_first": round(ratio, 4)},
        "targets": {"manifest_rerun_over_first": TARGET_RERUN_RATIO}, "targets_met": {"manifest_rerun_over_first": met},
    })
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    shutil.rmtree(DATA / "out", ignore_errors=True)
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
