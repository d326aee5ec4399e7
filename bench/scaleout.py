#!/usr/bin/env python3
"""Benchmark ``split --validate chat --engine local|ray`` over 20 files of about 50 MB.

Contenders, run alternately (the order rotates each round), each into a fresh output folder
under bench/data/out/, after an untimed warm-up read of the inputs and a sync:

  (l1)  shardkit split F1..F20 -o D -n 50000 --validate chat --engine local -j 1
  (l2)  the same with -j 2 (two worker processes, one file each at a time)
  (r2)  the same with --engine ray -j 2, RAY_ADDRESS set to a Ray head with 2 CPUs started
        by this script (`ray start --head --num-cpus 2`) just before the timed job and stopped
        just after it, as on a cluster: the runtime is up before the job, the job connects to it
        (the other contenders run with no Ray process on the machine)
  (rc)  --engine ray -j 2 with no RAY_ADDRESS: the job starts (and stops) a local Ray
        runtime itself (information: the runtime's start-up is not the engine's overhead)
  (s2)  without --engine: one process reads the files in turn, -j 2 check workers
        (information: the single-process path the engines must match byte for byte)
  (r0)  Ray's floor: a process that imports shardkit.pipeline.engine and runs 20 empty tasks
        (`time.sleep(0)`) through the same `run_tasks(..., engine="ray")` on the same kind of
        fresh head, then exits: what a Ray job costs here before any work (information)

Both targets at once need (r2) - (l2) <= 0.3 x (l2) <= 0.3 x 0.65 x (l1) = 0.195 x (l1):
the script prints Ray's measured fixed cost (r2) - (l2) and its floor (r0) beside that bound.

Targets (issue 8): (r2) / (l2) time <= 1.3; (l2) / (l1) time <= 0.65.
Memory is the peak summed PSS of the command's process tree (pool workers included); the
Ray head's own daemons of (r2) run outside that tree and are not counted.

    .venv/bin/python bench/scaleout.py [--runs 3] [--quick]

Writes bench/results/scaleout.json (scaleout-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from common import ROOT, dataset, fmt_table, fresh_dir, measure, median, warm, write_result

FILES, RECORDS, QUICK_FILES, QUICK_RECORDS = 20, 17_250, 4, 2_000  # 17,250 records ~ 50 MB
MAX_RECORDS = 50_000
TARGETS = {"ray_over_local2": 1.3, "local2_over_local1": 0.65}


def start_ray_head(ray_bin: Path) -> str:
    out = subprocess.run([str(ray_bin), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                          "--disable-usage-stats"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        sys.exit(f"ray start failed:\n{out.stderr}")
    m = re.search(r"RAY_ADDRESS='?([0-9.]+:\d+)", out.stdout + out.stderr) or re.search(
        r"--address='([0-9.]+:\d+)'", out.stdout + out.stderr)
    return m.group(1) if m else "auto"


def stop_ray(ray_bin: Path) -> None:
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120)


def check_output(label: str, out: Path, records: int, files: int) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    if not manifest["complete"] or c["read"] != records * files or c["written"] != records * files:
        sys.exit(f"{label}: incomplete run or wrong counts: {c}")
    if manifest["params"]["validate"] is None:
        sys.exit(f"{label}: did not validate")
    if any(p.name.startswith(".") for p in out.iterdir()):
        sys.exit(f"{label}: temp files or parts left behind")
    return manifest


def strip_time(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created_at"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_FILES} files of {QUICK_RECORDS:,} records")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args(argv)
    shardkit = ROOT / ".venv/bin/shardkit"
    ray_bin = ROOT / ".venv/bin/ray"
    nfiles, records = (QUICK_FILES, QUICK_RECORDS) if args.quick else (FILES, RECORDS)
    inputs = [dataset(records, seed) for seed in range(101, 101 + nfiles)]
    total = sum(p.stat().st_size for p in inputs)

    def argv_for(extra: list[str]):
        return lambda o: [str(shardkit), "split", *map(str, inputs), "-o", str(o), "-n", str(MAX_RECORDS),
                          "--validate", "chat", "--quiet", *extra]

    floor_argv = [str(ROOT / ".venv/bin/python"), "-c",
                  "import time\nfrom shardkit.pipeline.engine import run_tasks\n"
                  f"run_tasks(time.sleep, [(0,)] * {nfiles}, engine='ray', jobs=2)"]
    contenders = [
        ("local1", "(l1) --engine local -j 1", argv_for(["--engine", "local", "-j", "1"]), "none"),
        ("local2", "(l2) --engine local -j 2", argv_for(["--engine", "local", "-j", "2"]), "none"),
        ("ray2", "(r2) --engine ray, Ray head 2 CPUs", argv_for(["--engine", "ray", "-j", "2"]), "head"),
        ("ray_cold", "(rc) --engine ray, starts Ray", argv_for(["--engine", "ray", "-j", "2"]), "none"),
        ("single2", "(s2) no engine, -j 2", argv_for(["-j", "2"]), "none"),
        ("ray_floor", f"(r0) Ray floor: {nfiles} empty tasks", lambda o: floor_argv, "head"),
    ]
    runs: dict[str, list] = {k: [] for k, *_ in contenders}
    manifests: dict[str, dict] = {}
    started = dt.datetime.now().astimezone()
    stop_ray(ray_bin)
    try:
        for r in range(args.runs):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            for key, label, argv, ray_mode in order:
                os.sync()
                for p in inputs:
                    warm(p)
                env_ray = os.environ.pop("RAY_ADDRESS", None)
                if ray_mode == "head":  # up before the timed job, as a cluster is; down after it
                    os.environ["RAY_ADDRESS"] = start_ray_head(ray_bin)
                    os.environ["RAY_AUTH_MODE"] = "token"  # `ray start` turns token auth on
                try:
                    with fresh_dir() as out:
                        m = measure(argv(out), tree=True)
                        if key != "ray_floor":
                            manifests[key] = strip_time(check_output(label, out, records, nfiles))
                finally:
                    if ray_mode == "head":
                        stop_ray(ray_bin)
                    os.environ.pop("RAY_ADDRESS", None)
                    os.environ.pop("RAY_AUTH_MODE", None)
                    if env_ray is not None:
                        os.environ["RAY_ADDRESS"] = env_ray
                runs[key].append(m.raw())
                print(f"round {r + 1}/{args.runs}  {label:<36} {m.elapsed_s:7.3f} s {m.memory_mb:7.1f} MB",
                      file=sys.stderr)
    finally:
        stop_ray(ray_bin)

    same = all(m == manifests["local1"] for m in manifests.values())
    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    mem = {k: max(max(x["peak_rss_mb"], x.get("tree_pss_mb") or 0) for x in v) for k, v in runs.items()}
    rows = [[label, f"{med[k]:.3f}", f"{min(x['elapsed_s'] for x in runs[k]):.3f}", f"{mem[k]:.1f}",
             f"{total / 1e6 / med[k]:.0f}"] for k, label, *_ in contenders]
    print(f"{started:%Y-%m-%d %H:%M %Z}, {nfiles} files, {total / 1e6:.0f} MB, {records * nfiles:,} records, "
          f"{args.runs} run(s) each; manifests identical across contenders: {same}")
    print(fmt_table(["contender", "median s", "min s", "peak memory MB", "MB/s"], rows))
    ratios = {"ray_over_local2": round(med["ray2"] / med["local2"], 3),
              "local2_over_local1": round(med["local2"] / med["local1"], 3)}
    met = {k: ratios[k] <= TARGETS[k] for k in ratios}
    for k, ok in met.items():
        print(f"target {k}: {ratios[k]} (<= {TARGETS[k]}) -> {'met' if ok else 'MISSED'}")
    factor = (TARGETS["ray_over_local2"] - 1) * TARGETS["local2_over_local1"]  # 0.195
    joint = round(factor * med["local1"], 3)
    fixed = round(med["ray2"] - med["local2"], 3)
    print(f"Ray's fixed cost (r2) - (l2) = {fixed} s; its floor (r0) = {med['ray_floor']:.3f} s; "
          f"both targets at once need it <= {factor:.3f} x (l1) = {joint} s")
    path = write_result(
        "scaleout-quick" if args.quick else "scaleout",
        {
            "local_time": started.isoformat(timespec="seconds"),
            "note": "2-core machine; Ray head for (r2) started before each (r2) run and stopped after it; its daemons are not in the memory figure",
            "params": {"files": nfiles, "records_per_file": records, "bytes": total, "max_records": MAX_RECORDS,
                       "runs": args.runs},
            "commands": {k: argv(Path("D")) for k, _, argv, _ in contenders},
            "runs": runs,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "peak_memory_mb": {k: round(v, 2) for k, v in mem.items()},
            "manifests_identical": same,
            "ratios": ratios,
            "ray_fixed_cost_s": fixed,
            "ray_floor_s": round(med["ray_floor"], 4),
            "joint_bound_s": joint,
            "targets": TARGETS,
            "targets_met": met,
        },
    )
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 1 if args.check and not (all(met.values()) and same) else 0


if __name__ == "__main__":
    sys.exit(main())
