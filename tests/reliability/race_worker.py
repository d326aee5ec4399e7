"""A trainer in the concurrency race (test_concurrency.py): claims, reads, completes or fails.

    python race_worker.py ROOT NAME LOG STOPFILE SEED

Loops until STOPFILE exists and nothing is left to claim: claims the oldest pending file
through the library (the same code as `shardkit queue claim`), reads it whole, logs what it
read, then completes it (or, one time in eight, fails it and puts it back with `retry`, unless the operator's retry
loop did so first).
One JSON line per event in LOG, flushed before the next queue operation, so the log says
what this worker held even if it is killed.
"""

import hashlib
import os
import random
import sys
import time

import orjson

from shardkit.core.errors import ShardkitError
from shardkit.queue.state import Queue


def main() -> None:
    root, name, log_path, stop, seed = sys.argv[1:6]
    rng = random.Random(seed)
    q = Queue(root)
    with open(log_path, "ab") as log:

        def note(**event) -> None:
            log.write(orjson.dumps({"t": time.time(), "worker": name, **event}) + b"\n")
            log.flush()

        idle_since = None
        while True:
            try:
                claimed = q.claim(name)
            except ShardkitError as e:
                note(event="error", op="claim", error=str(e))
                time.sleep(0.01)
                continue
            if not claimed:
                if os.path.exists(stop):
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 0.5:
                        return
                time.sleep(0.05)
                continue
            idle_since = None
            data = claimed.path.read_bytes()
            note(event="claim", id=claimed.lease.id, name=claimed.name, token=claimed.token,
                 sha256=hashlib.sha256(data).hexdigest(), lines=[x.decode() for x in data.splitlines()])
            time.sleep(rng.uniform(0, 0.02))  # "training"
            try:
                if rng.random() < 0.125:
                    claimed.fail("race: simulated failure")
                    note(event="fail", id=claimed.lease.id, name=claimed.name)
                    try:
                        q.retry([f"failed/{claimed.name}"])
                        note(event="retry", id=claimed.lease.id, name=claimed.name)
                    except ShardkitError as e:  # the operator's `retry --all` was first: fine
                        if os.path.exists(os.path.join(root, "queue", "failed", claimed.name)):
                            raise
                        note(event="retry-by-operator", id=claimed.lease.id, name=claimed.name, why=str(e))
                else:
                    claimed.complete()
                    note(event="complete", id=claimed.lease.id, name=claimed.name)
            except ShardkitError as e:
                note(event="error", op="finish", id=claimed.lease.id, name=claimed.name, error=str(e))


if __name__ == "__main__":
    main()
