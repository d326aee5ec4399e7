#!/usr/bin/env python3
"""Fuzz the C record gate (chat, ShareGPT, alpaca, prompt-completion, text) built with
AddressSanitizer and UndefinedBehaviorSanitizer.

`make fuzz-c` builds shardkit/records/chatgate.c with -fsanitize=address,undefined into
build/asan/ and runs this under libasan, with PYTHONMALLOC=malloc so every Python buffer is
its own allocation: any out-of-bounds read or write, use after free or undefined behaviour
aborts the run with a report. The cases: the hostile corpus of tests/test_chatgate.py,
mutated (spliced traps, cuts, repeated and escaped keys), users-shaped records, junk from
the trap alphabet, and string tokens cut at every kind of place.

    python tests/fuzz/chatgate_asan.py BUILT_SO [SEED] [ROUNDS]
"""

from __future__ import annotations

import ctypes
import importlib.util
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent / "fixtures"))

import orjson  # noqa: E402
from generate import iter_records  # noqa: E402
from test_chatgate import HOSTILE_OBJECTS, SPLICES, mutations, serializations  # noqa: E402


def main() -> int:
    so, seed, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0, int(sys.argv[3]) if len(sys.argv) > 3 else 20
    spec = importlib.util.spec_from_file_location("chatgate", so)
    gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gate)
    rng = random.Random(seed)
    KINDS = (gate.CHAT, gate.SHAREGPT, gate.ALPACA, gate.PROMPT_COMPLETION, gate.TEXT, gate.ALL)
    base = [raw for obj in HOSTILE_OBJECTS for raw in serializations(obj)]
    base += [orjson.dumps(r) for r in iter_records(300, 3, mean_bytes=1500, max_bytes=6000, users=True)]
    n = 0
    for _ in range(rounds):
        for raw in base:
            for case in mutations(raw, rng, 10):
                for data in (case, case + b"\n"):
                    gate.scan(bytearray(data), 1 << 30, lambda keys: 1, rng.choice(KINDS))
                    n += 1
                # the string scanner alone, on a string cut anywhere: it must stop at the
                # buffer's end (scan's lines end in a newline, which stops every look-ahead)
                at = rng.randrange(len(case) + 1)
                token = b'"' + case[at : at + 17 + rng.randrange(64)]
                gate.fine_string((ctypes.c_char * len(token)).from_buffer_copy(token))  # no NUL after it
                n += 1
                # the UTF-8 check on a buffer of exactly the case's bytes, cut anywhere: it
                # reads 16 bytes at a time, so the tail is where an over-read would be
                piece = case[: rng.randrange(len(case) + 1)]
                got = gate.utf8_error((ctypes.c_char * len(piece)).from_buffer_copy(piece))
                try:
                    piece.decode("utf-8")
                    want = -1
                except UnicodeDecodeError as e:
                    want = e.start
                if got != want:
                    raise AssertionError(f"utf8_error({piece!r}) = {got}, Python's decoder says {want}")
                n += 1
            junk = b"".join(rng.choice(SPLICES) for _ in range(rng.randrange(40))) + b"\n"
            gate.scan(bytearray(junk), 1 << 30, lambda keys: 1, rng.choice(KINDS))
            n += 1
    print(f"chatgate under ASan+UBSan: {n:,} cases, no report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
