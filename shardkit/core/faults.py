"""Fault injection for crash tests: die at a named step, as a power cut or OOM kill would.

`SHARDKIT_FAULT=after:shard_commit:3` SIGKILLs the process the 3rd time the step
`shard_commit` has just finished (`before:` fires just before it starts). Several specs may
be given, comma-separated. Unset, `hit()` costs one dict lookup.

Steps (grep `faults.hit` for the full list): shard_write (a block written to a temp
shard), shard_fsync, shard_commit (temp renamed to its final name), manifest_write,
rejects_write, input_done.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "SHARDKIT_FAULT"


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            when, step, count = part.split(":")
            n = int(count)
        except ValueError:
            raise SystemExit(f"{ENV}: bad spec {part!r} (expected before|after:STEP:N)") from None
        if when not in ("before", "after") or n < 1:
            raise SystemExit(f"{ENV}: bad spec {part!r} (expected before|after:STEP:N)")
        points[f"{when}:{step}"] = n
    return points


_armed = _parse(os.environ.get(ENV, ""))
_seen: dict[str, int] = {}


def hit(point: str) -> None:
    """Mark that execution reached `point` ("before:X" or "after:X"); die if armed for it."""
    if not _armed:
        return
    target = _armed.get(point)
    if target is None:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == target:
        sys.stderr.write(f"shardkit: injected fault at {point}:{target}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def reset(spec: str = "") -> None:
    """Re-arm from a spec string (for in-process tests)."""
    global _armed
    _armed = _parse(spec)
    _seen.clear()
