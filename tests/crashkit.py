"""Crash-test harness, reused by every feature that writes: kill a real process mid-run.

- `run_with_fault(args, "after:shard_commit:3")` runs `python -m shardkit ARGS` with the
  fault-injection hook armed; the process SIGKILLs itself at that step.
- `run_and_kill(args, delay)` SIGKILLs a real subprocess `delay` seconds after start.
- `seeded_delays(seed, n, lo, hi)` gives reproducible kill moments.
- `final_files(out)` lists what a reader would see (no temp or partial files).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SHARDKIT = [sys.executable, "-m", "shardkit"]


def run_with_fault(args, spec: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {}), "SHARDKIT_FAULT": spec}
    return subprocess.run([*SHARDKIT, *map(str, args)], capture_output=True, env=full_env, timeout=300)


def run_and_kill(args, delay: float, sig: int = signal.SIGKILL, env: dict | None = None) -> tuple[int, bytes]:
    """Start shardkit, send `sig` after `delay` s (if still running); return (returncode, stderr)."""
    proc = subprocess.Popen([*SHARDKIT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def seeded_delays(seed: int, n: int, lo: float, hi: float) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(lo, hi) for _ in range(n)]


def final_files(out: Path) -> dict[str, bytes]:
    """Every file under a final (non-hidden) name in `out`, with its content."""
    if not out.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


def timed(args) -> float:
    t = time.monotonic()
    subprocess.run([*SHARDKIT, *map(str, args)], check=True, capture_output=True)
    return time.monotonic() - t
