"""Shared test helpers: real files, real subprocesses."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cli(*args: str, input: bytes | None = None, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -m shardkit ARGS` as a real process; capture bytes."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "shardkit", *map(str, args)],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def expected_records(data: bytes) -> bytes:
    """What the shards must concatenate to: the non-blank lines, each ending in \\n."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\n" for line in lines if line.strip())


def concat_shards(out: Path) -> bytes:
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    return b"".join((out / f["path"]).read_bytes() for f in manifest["files"])


def make_chat_jsonl(path: Path, records: int, seed: int = 0, max_len: int = 3000) -> bytes:
    """A quick random chat JSONL file (independent of fixtures/generate.py)."""
    rng = random.Random(seed)
    lines = []
    for i in range(records):
        content = "".join(rng.choice("abcdé中 \"\\\n\t😀") for _ in range(rng.randint(1, max_len)))
        lines.append(orjson.dumps({"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": str(i)}]}) + b"\n")
    data = b"".join(lines)
    path.write_bytes(data)
    return data


@pytest.fixture
def chat_file(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "chat.jsonl"
    return path, make_chat_jsonl(path, 400, seed=1)
