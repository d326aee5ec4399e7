#!/usr/bin/env python3
"""Benchmark shardkit's start-up against its peer, `python -c "import typer"` (issue 18.6).

Contenders, run alternately (the order rotates each round), warm (after one untimed run):

  (t)  python -c "import typer"           the floor any Typer CLI pays
  (v)  shardkit --version
  (h)  shardkit --help                    (may import rich for help panels)
  (sh) shardkit split --help              (the grouped option panels)
  (st) shardkit stats TINY.jsonl          (5 records)
  (q)  shardkit queue status --root Q     (an empty queue)

Then the first run after install: the page cache dropped (when this process may write
/proc/sys/vm/drop_caches; the result says whether it could) and `shardkit stats TINY`
timed once, cold. shardkit/ is byte-compiled first, as `make venv` does.

Targets: (v) <= 1.5 x (t); (h) <= 2.5 x (t); (st) <= 1.0 s warm and first run.

    .venv/bin/python bench/startup.py [--runs 11]

Writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import fmt_table, measure, median, write_result

TARGETS = {"version_ratio_max": 1.5, "help_ratio_max": 2.5, "stats_tiny_s_max": 1.0}
TINY = b"".join(b'{"messages":[{"role":"user","content":"hi %d"},{"role":"assistant","content":"hello"}]}\n' % i
                for i in range(5))


def drop_caches() -> bool:
    """Drop the page cache (root on Linux); False when this process may not."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="3 runs")
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    bindir = Path(sys.executable).parent
    shardkit = shutil.which("shardkit", path=str(bindir)) or "shardkit"
    work = Path(tempfile.mkdtemp(prefix="shardkit-startup-"))
    tiny = work / "tiny.jsonl"
    tiny.write_bytes(TINY)
    q = work / "q"
    subprocess.run([shardkit, "queue", "init", "--root", str(q)], check=True, capture_output=True)
    contenders = {
        "import_typer": [sys.executable, "-c", "import typer"],
        "version": [shardkit, "--version"],
        "help": [shardkit, "--help"],
        "split_help": [shardkit, "split", "--help"],
        "stats_tiny": [shardkit, "stats", str(tiny)],
        "queue_status": [shardkit, "queue", "status", "--root", str(q)],
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    rss: dict[str, list[float]] = {k: [] for k in contenders}
    for argv in contenders.values():
        measure(argv)  # warm
    keys = list(contenders)
    for r in range(runs):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            m = measure(contenders[k])
            times[k].append(m.elapsed_s)
            rss[k].append(m.peak_rss_mb)
    med = {k: median(v) for k, v in times.items()}
    dropped = drop_caches()
    first = measure(contenders["stats_tiny"]).elapsed_s
    ratios = {"version": med["version"] / med["import_typer"], "help": med["help"] / med["import_typer"],
              "split_help": med["split_help"] / med["import_typer"]}
    checks = {
        "version_ratio": ratios["version"] <= TARGETS["version_ratio_max"],
        "help_ratio": ratios["help"] <= TARGETS["help_ratio_max"],
        "stats_tiny_warm": med["stats_tiny"] <= TARGETS["stats_tiny_s_max"],
        "stats_tiny_first_run": first <= TARGETS["stats_tiny_s_max"],
    }
    rows = [[k, med[k], min(times[k]), f"{med[k] / med['import_typer']:.2f}x", f"{max(rss[k]):.1f}"] for k in keys]
    rows.append(["stats_tiny, first run" + ("" if dropped else " (cache not dropped)"), first, first, "", ""])
    print(fmt_table(["command", "median s", "min s", "vs import typer", "peak RSS MB"], rows))
    for name, ok in checks.items():
        print(f"  {name}: {'ok' if ok else 'MISSED'}")
    path = write_result("startup", {
        "runs": runs, "targets": TARGETS, "median_s": med, "min_s": {k: min(v) for k, v in times.items()},
        "peak_rss_mb": {k: max(v) for k, v in rss.items()}, "ratios_vs_import_typer": ratios,
        "first_run_stats_tiny_s": first, "page_cache_dropped": dropped, "checks": checks,
        "commands": {k: [os.path.basename(a) if a == shardkit else a for a in v] for k, v in contenders.items()},
    })
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
