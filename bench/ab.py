"""Interleaved A/B of two source trees on the same CLI commands (the order alternates per pair).

    git worktree add /tmp/old REV
    .venv/bin/python bench/ab.py /tmp/old . 5 [split,validate,...]

Each command runs as `python -m shardkit ...` with PYTHONPATH=TREE; prints wall-time medians
and minimums, new/old ratios and peak RSS. Needs bench/data (made by `make bench`).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
DATA = os.path.join(HERE, "data", "chat-100000-s1.jsonl")
USERS = os.path.join(HERE, "data", "chat-users-100000-s1.jsonl")
OUT = os.path.join(tempfile.mkdtemp(prefix="shardkit-ab-"), "out")
TREES = {"OLD": os.path.abspath(sys.argv[1]), "NEW": os.path.abspath(sys.argv[2])}
PAIRS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
ENGINE_FILES = [os.path.join(HERE, "data", f"chat-17250-s1{i:02d}.jsonl") for i in range(1, 9)]
CMDS = {
    "engine_local_8x50MB": ["split", *ENGINE_FILES, "-o", "{o}", "--max-records", "50000", "--engine", "local",
                            "-j", "2", "--quiet"],
    "split": ["split", DATA, "-o", "{o}", "--max-records", "50000", "--quiet"],
    "validate": ["validate", DATA, "--kind", "chat", "--quiet"],
    "validate_j1": ["validate", DATA, "--kind", "chat", "--quiet", "--jobs", "1"],
    "validate_users": ["validate", USERS, "--kind", "chat", "--quiet", "--max-errors", "100000"],
    "validate_users_j1": ["validate", USERS, "--kind", "chat", "--quiet", "--max-errors", "100000", "--jobs", "1"],
    "split_validate": ["split", DATA, "-o", "{o}", "--max-records", "50000", "--validate", "chat", "--quiet"],
    "parquet": ["split", DATA, "-o", "{o}", "--max-records", "50000", "--format", "parquet", "--quiet"],
    "shuffle": ["split", DATA, "-o", "{o}", "--max-records", "50000", "--shuffle", "--seed", "1", "--quiet"],
    "shuffle_dedup_holdout": ["split", DATA, "-o", "{o}", "--max-records", "50000", "--shuffle", "--seed", "1",
                              "--dedup", "exact", "--holdout", "0.05", "--quiet"],
}
only = sys.argv[4].split(",") if len(sys.argv) > 4 else list(CMDS)
def run(tree, cmd):
    shutil.rmtree(OUT, ignore_errors=True)
    argv = [PY, "-m", "shardkit"] + [a.replace("{o}", OUT) for a in cmd]
    env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
    t = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=os.path.dirname(OUT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t
    err = p.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"{tree} {cmd}: exit {status}: {err[-500:]}")
    return dt, ru.ru_maxrss / 1024
res = {}
for name in only:
    cmd = CMDS[name]
    r = {"OLD": [], "NEW": []}
    run(TREES["NEW"], cmd)  # warm
    for k in range(PAIRS):
        order = ["OLD", "NEW"] if k % 2 == 0 else ["NEW", "OLD"]
        for who in order:
            r[who].append(run(TREES[who], cmd))
    o = [x[0] for x in r["OLD"]]
    n = [x[0] for x in r["NEW"]]
    mo, mn = statistics.median(o), statistics.median(n)
    line = (f"{name:22s} OLD median {mo:.3f} min {min(o):.3f}  NEW median {mn:.3f} "
            f"min {min(n):.3f}  new/old median {mn / mo:.3f}  min/min {min(n) / min(o):.3f}  "
            f"RSS OLD {max(x[1] for x in r['OLD']):.1f} NEW {max(x[1] for x in r['NEW']):.1f} MB")
    print(line, flush=True)
    res[name] = r
with open(os.path.join(os.path.dirname(OUT), "raw.json"), "w") as f:
    json.dump(res, f)
print("raw timings:", os.path.join(os.path.dirname(OUT), "raw.json"))
