#!/usr/bin/env python3
"""Benchmark JSONL -> Parquet: shardkit's Parquet core against polars and duckdb.

Contenders, run alternately (the order rotates each round), each on a fresh output
folder under bench/data/out/, after an untimed warm-up read of the input and a sync:

  (s)  shardkit split IN -o D/shards --format parquet --max-records M: the real command,
       schema of the whole input, shards of M records, sha256, fsync and manifest (the
       others do neither hashing nor fsync)
  (p)  polars.scan_ndjson(IN).sink_parquet(D/out.parquet)         schema from 100 rows
  (d)  duckdb COPY (SELECT * FROM read_json_auto(IN)) TO D/out.parquet (FORMAT parquet)
  (a)  raw pyarrow: pyarrow.json.open_json(IN) -> ParquetWriter (zstd), schema from the first block
  (s2) (s) on the doubled input, to show peak RSS does not grow with input size
  (sp) (s) on the plain generator's data (the others run on users-shaped data: a `meta`
       object on every record, long answers, about 1% invalid records)

    .venv/bin/python bench/parquet.py [--runs 3] [--quick] [--check]

Writes bench/results/parquet.json (parquet-quick.json with --quick). Each output is
checked for its row count (outside the timing).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, dataset, doubled, fmt_table, fresh_dir, measure, median, warm, write_result

RECORDS, QUICK_RECORDS, SEED = 100_000, 10_000, 1
TARGETS = {"time_ratio_max": 0.6, "pyarrow_ratio_max": 1.2, "rss_mb_max": 400.0, "doubled_rss_ratio": (0.85, 1.15)}  # issue 19
PYARROW = (
    "import sys, pyarrow.json as pj, pyarrow.parquet as pq\n"
    "reader = pj.open_json(sys.argv[1])\n"
    "with pq.ParquetWriter(sys.argv[2], reader.schema, compression='zstd') as w:\n"
    "    for batch in reader:\n"
    "        w.write_batch(batch)\n"
)

POLARS = "import polars as pl, sys; pl.scan_ndjson(sys.argv[1]).sink_parquet(sys.argv[2])"
DUCKDB = (
    "import duckdb, sys; duckdb.sql(\"COPY (SELECT * FROM read_json_auto('\" + sys.argv[1] + \"')) "
    "TO '\" + sys.argv[2] + \"' (FORMAT parquet)\")"
)


# ---------------------------------------------------------------- the benchmark


@dataclass
class Contender:
    """A command to time: ``argv(input, outdir)``; the output folder is created first."""

    key: str
    label: str
    argv: Callable[[Path, Path], list[str]]
    doubled: bool = False
    users: bool = True


def contenders(max_records: int) -> list[Contender]:
    """The four contenders, in first-round order."""
    py = sys.executable

    shardkit = str(ROOT / ".venv" / "bin" / "shardkit")

    def sk(i: Path, o: Path) -> list[str]:
        # the real command: Parquet shards, sha256, fsync, manifest
        return [shardkit, "split", str(i), "-o", f"{o}/shards", "--format", "parquet",
                "--max-records", str(max_records), "--quiet"]

    return [
        Contender("shardkit", "(s) shardkit.pipeline.parquet", sk),
        Contender("polars", "(p) polars sink_parquet", lambda i, o: [py, "-c", POLARS, str(i), f"{o}/out.parquet"]),
        Contender("duckdb", "(d) duckdb COPY", lambda i, o: [py, "-c", DUCKDB, str(i), f"{o}/out.parquet"]),
        Contender("pyarrow", "(a) raw pyarrow open_json", lambda i, o: [py, "-c", PYARROW, str(i), f"{o}/out.parquet"]),
        Contender("shardkit_doubled", "(s) shardkit.pipeline.parquet, 2x input", sk, doubled=True),
        Contender("plain_shardkit", "(sp) shardkit, plain data", sk, users=False),
    ]


def check_output(c: Contender, out: Path, rows: int) -> dict:
    """Fail loudly if a contender 'won' by not doing the work; return its output's size and rows."""
    import pyarrow.parquet as pq

    files = sorted(out.glob("*.parquet")) or sorted(out.glob("shards/*.parquet"))
    got = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if got != rows:
        sys.exit(f"{c.label}: expected {rows} rows, got {got} in {[f.name for f in files]}")
    md = pq.ParquetFile(files[0]).metadata
    return {
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "rows": got,
        "codec": md.row_group(0).column(0).compression,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_RECORDS:,} records, smoke test")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)

    records = QUICK_RECORDS if args.quick else RECORDS
    max_records = records // 2  # 50,000 for the full run: two shards, four when doubled
    single = dataset(records, SEED, users=True)
    inputs = {(True, False): single, (True, True): doubled(single), (False, False): dataset(records, SEED)}
    cs = contenders(max_records)
    runs: dict[str, list] = {c.key: [] for c in cs}
    outputs: dict[str, dict] = {}

    for r in range(args.runs):
        for c in cs[r % len(cs) :] + cs[: r % len(cs)]:
            src = inputs[c.users, c.doubled]
            os.sync()  # nobody pays for an earlier run's dirty pages
            warm(src)
            with fresh_dir(create=True) as out:
                m = measure(c.argv(src, out))
                outputs[c.key] = check_output(c, out, records * (2 if c.doubled else 1))
            runs[c.key].append(m.raw())
            print(
                f"round {r + 1}/{args.runs}  {c.label:<34} {m.elapsed_s:7.3f} s {m.peak_rss_mb:7.1f} MB",
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
            f"{outputs[c.key]['bytes'] / 1e6:.1f}",
            outputs[c.key]["codec"],
            f"{med[c.key] / med['polars']:.2f}",
        ]
        for c in cs
    ]
    print(fmt_table(["contender", "median s", "min s", "peak RSS MB", "output MB", "codec", "/ (p)"], rows))

    time_ratio = med["shardkit"] / med["polars"]
    dbl_ratio = rss["shardkit_doubled"] / rss["shardkit"]
    lo, hi = TARGETS["doubled_rss_ratio"]
    ratios = {
        "shardkit_over_polars": round(time_ratio, 3),
        "shardkit_over_duckdb": round(med["shardkit"] / med["duckdb"], 3),
        "shardkit_over_pyarrow": round(med["shardkit"] / med["pyarrow"], 3),
        "shardkit_peak_rss_mb": round(rss["shardkit"], 2),
        "doubled_rss_ratio": round(dbl_ratio, 3),
    }
    met = {
        "shardkit_over_polars": time_ratio <= TARGETS["time_ratio_max"],
        "shardkit_over_pyarrow": ratios["shardkit_over_pyarrow"] <= TARGETS["pyarrow_ratio_max"],
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
        "parquet-quick" if args.quick else "parquet",
        {
            "params": {"records": records, "seed": SEED, "max_records": max_records, "runs": args.runs},
            "files": {
                k: {"path": str(p.relative_to(ROOT)), "bytes": p.stat().st_size, "sha256": _sha256(p)}
                for k, p in (("users", single), ("users_doubled", inputs[True, True]),
                             ("plain", inputs[False, False]))
            },
            "commands": {c.key: c.argv(Path("IN"), Path("D")) for c in cs},
            "runs": runs,
            "outputs": outputs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "min_s": {k: min(x["elapsed_s"] for x in v) for k, v in runs.items()},
            "peak_rss_mb": {k: round(v, 2) for k, v in rss.items()},
            "ratios": ratios,
            "targets": {
                "shardkit_over_polars": TARGETS["time_ratio_max"],
                "shardkit_over_pyarrow": TARGETS["pyarrow_ratio_max"],
                "shardkit_peak_rss_mb": TARGETS["rss_mb_max"],
                "doubled_rss_ratio": [lo, hi],
            },
            "targets_met": met,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and not all(met.values()) else 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
