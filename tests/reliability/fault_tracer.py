"""Run the shardkit CLI with every fault point counted instead of armed.

    SHARDKIT_TRACE_OUT=counts.json python fault_tracer.py split in.jsonl -o out ...

writes {"after:shard_commit": 12, ...}: the fault points this command reaches on this
input and how often, so crash trials kill at every one of them (see torture.py).
"""

import atexit
import collections
import json
import os
import sys

from shardkit.core import faults

counts: collections.Counter = collections.Counter()
_main_pid = os.getpid()


def _count(point: str) -> None:
    if os.getpid() == _main_pid:  # worker processes forked from this one do not report
        counts[point] += 1


def _write() -> None:
    if os.getpid() == _main_pid:
        with open(os.environ["SHARDKIT_TRACE_OUT"], "w") as f:
            json.dump(counts, f)


faults.hit = _count
atexit.register(_write)
sys.argv[0] = "shardkit"

from shardkit.cli import main  # noqa: E402

main()
