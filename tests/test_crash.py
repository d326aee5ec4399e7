"""Kill split at every kind of step and at random moments; --resume must finish the job exactly."""

import signal
import subprocess
import time

import orjson
import pytest
from conftest import concat_shards, expected_records, make_chat_jsonl
from crashkit import SHARDKIT, final_files, run_and_kill, run_with_fault, seeded_delays, timed

from shardkit.store.manifest import verify

SPLIT_ARGS = ["--max-records", "60", "--max-bytes", "200KB", "--oversize", "reject"]


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """An input with oversize records (so the rejects file is exercised) and its reference output."""
    base = tmp_path_factory.mktemp("crash")
    src = base / "in.jsonl"
    data = make_chat_jsonl(src, 1500, seed=7, max_len=3000)
    big = b'{"messages":[{"role":"user","content":"' + b"z" * 250_000 + b'"}]}\n'
    lines = data.splitlines(keepends=True)
    src.write_bytes(b"".join(lines[:500]) + big + b"".join(lines[500:1000]) + big + b"\n" + b"".join(lines[1000:]))
    ref = base / "ref"
    seconds = timed(["split", src, "-o", ref, *SPLIT_ARGS])
    return base, src, final_files(ref), seconds


def without_time(manifest_bytes: bytes) -> dict:
    m = orjson.loads(manifest_bytes)
    m.pop("created_at")
    return m


def check_after_crash(out, reference):
    """What a reader sees after a crash: only whole files, each identical to the reference."""
    seen = final_files(out)
    for name, content in seen.items():
        if name in ("manifest.json", "SHA256SUMS"):
            continue
        assert name in reference, f"unexpected file {name}"
        assert content == reference[name], f"{name} is partial or different"
    if "manifest.json" in seen:
        m = orjson.loads(seen["manifest.json"])  # parses: never half-written
        if not m["complete"]:
            assert m["files"] == orjson.loads(reference["manifest.json"])["files"][: len(m["files"])]


def resume_and_compare(src, out, reference):
    r = run_with_fault(["split", src, "-o", out, *SPLIT_ARGS, "--resume"], "")
    assert r.returncode == 0, r.stderr
    seen = final_files(out)
    assert sorted(seen) == sorted(reference)
    for name in reference:
        if name == "manifest.json":
            assert without_time(seen[name]) == without_time(reference[name])
        else:
            assert seen[name] == reference[name], name
    assert verify(out / "manifest.json").ok
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp or partial files left behind"


FAULTS = [
    "after:shard_write:1",
    "after:shard_write:20",
    "before:shard_commit:1",
    "before:shard_commit:9",
    "after:shard_commit:1",
    "after:shard_commit:12",
    "after:manifest_write:1",
    "after:manifest_write:5",
    "after:rejects_write:1",
    "after:rejects_write:2",
    "after:input_done:1",
]


@pytest.mark.parametrize("spec", FAULTS)
def test_injected_fault_then_resume(workload, spec):
    base, src, reference, _ = workload
    out = base / f"fault-{spec.replace(':', '-')}"
    r = run_with_fault(["split", src, "-o", out, *SPLIT_ARGS], spec)
    assert r.returncode == -signal.SIGKILL, (spec, r.returncode, r.stderr)
    assert b"injected fault at " + spec.encode() in r.stderr
    check_after_crash(out, reference)
    resume_and_compare(src, out, reference)


@pytest.mark.parametrize("delay_index", range(8))
def test_kill9_at_random_moment_then_resume(workload, delay_index):
    base, src, reference, seconds = workload
    delay = seeded_delays(2026, 8, 0.05, seconds * 1.1)[delay_index]
    out = base / f"kill-{delay_index}"
    run_and_kill(["split", src, "-o", out, *SPLIT_ARGS], delay)
    check_after_crash(out, reference)
    resume_and_compare(src, out, reference)


def test_double_crash_then_resume(workload):
    base, src, reference, _ = workload
    out = base / "double"
    run_with_fault(["split", src, "-o", out, *SPLIT_ARGS], "after:shard_commit:3")
    r = run_with_fault(["split", src, "-o", out, *SPLIT_ARGS, "--resume"], "before:shard_commit:4")
    assert r.returncode == -signal.SIGKILL
    check_after_crash(out, reference)
    resume_and_compare(src, out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_without_partial_files(workload, sig):
    """Ctrl-C / SIGTERM once shards are being written: exit 130, only whole files, resumable."""
    base, src, _, _ = workload
    out = base / f"int-{int(sig)}"
    args = ["split", src, "-o", out, "--max-records", "2"]  # many shards: the run lasts seconds
    proc = subprocess.Popen([*SHARDKIT, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(out.glob("in-*.jsonl"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == (
        f"shardkit: error: interrupted; no partial file was left under a final name in {out}; "
        "rerun with --resume to continue"
    )
    m = orjson.loads((out / "manifest.json").read_bytes())
    assert m["complete"] is False
    assert sorted(final_files(out)) == sorted(["manifest.json", "SHA256SUMS", *[f["path"] for f in m["files"]]])
    assert not [p for p in out.iterdir() if p.name.startswith(".shardkit-tmp-")]
    listed = verify(out / "manifest.json")
    assert listed.problems == [f"{out / 'manifest.json'}: incomplete (an interrupted run); rerun the split with --resume"]
    r = run_with_fault([*args, "--resume"], "")
    assert r.returncode == 0, r.stderr
    assert concat_shards(out) == expected_records(src.read_bytes())
    assert verify(out / "manifest.json").ok
