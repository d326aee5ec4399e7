"""Crash trials for `split` (and `split --validate chat`; `--format parquet` when split offers it).

Each trial is a real `python -m shardkit split` on two generated inputs (oversize records,
blank lines, CRLF, invalid records, no final newline), killed at a fault point or by
SIGKILL at a seeded moment, then `--resume`d. Right after the kill, every file under a
final name must be whole (equal to the same file of an uninterrupted run); after the
resume, OUT must equal the uninterrupted run byte for byte (manifest timestamps aside),
verify, and hold every input line exactly once: in a shard or in the rejects file.
"""

from __future__ import annotations

import shutil
import subprocess

import orjson
import pytest
import torture as T

from shardkit.store.manifest import verify

ARGS = ["--max-records", "20", "--max-bytes", "40KB", "--oversize", "reject", "--json"]


def build_inputs(d) -> None:
    a = T.varied_chat_lines("a", 180, seed=T.SEED, max_len=2000)
    big = T.chat_record("oversize", 0, size=60_000)
    lines = a[:90] + [big, b""] + a[90:130] + [b"  ", a[130][:-1] + b"\r"] + a[131:150] + list(T.INVALID_CHAT) + a[150:]
    lines.insert(40, T.chat_record("oversize", 1, size=52_000))
    (d / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    b = T.varied_chat_lines("b", 60, seed=T.SEED + 1, max_len=400)
    (d / "b.jsonl").write_bytes(b"\n".join(b[:30] + [b"", b[3], a[7]] + b[30:]))  # repeats; no final newline


def conservation(out, inputs: dict[str, bytes], manifest: dict) -> list[str]:
    """Every non-blank input line exactly once, in order: in a shard or in the rejects file."""
    problems = []
    rejects: dict[tuple[str, int], bytes] = {}
    if manifest.get("rejects"):
        for line in (out / manifest["rejects"]["path"]).read_bytes().splitlines():
            e = orjson.loads(line)
            key = (e["source"].rsplit("/", 1)[-1], e["line"])
            if key in rejects:
                problems.append(f"line {key} rejected twice")
            rejects[key] = T.reject_raw(e)
    shard_lines: dict[str, list[bytes]] = {name: [] for name in inputs}
    for f in manifest["files"]:
        src = f["source"].rsplit("/", 1)[-1]
        shard_lines[src] += T.records_of(out / f["path"]) if f.get("format", "jsonl") == "jsonl" else parquet_records(out / f["path"])
    for name, data in inputs.items():
        got = iter(shard_lines[name])
        for n, line in T.nonblank_lines(data):
            if (name, n) in rejects:
                if rejects.pop((name, n)) != line:
                    problems.append(f"{name}:{n}: rejects file changed the record's bytes")
                continue
            nxt = next(got, None)
            if nxt is None:
                problems.append(f"{name}:{n}: record lost (in no shard, not rejected)")
                break
            if not same_record(nxt, line):
                problems.append(f"{name}:{n}: shard holds {nxt[:60]!r}..., expected {line[:60]!r}...")
                break
        extra = list(got)
        if extra:
            problems.append(f"{name}: {len(extra)} record(s) in shards beyond the input (written twice?)")
    if rejects:
        problems.append(f"rejects for lines that are not records: {sorted(rejects)[:5]}")
    c = manifest["counts"]
    if c["read"] != c["written"] + c["rejected"] + c["blank"]:
        problems.append(f"counts do not add up: {c}")
    return problems


def same_record(shard_line: bytes, input_line: bytes) -> bool:
    if shard_line.endswith(b"\n") and not isinstance(shard_line, ParquetRow):
        return shard_line == input_line + b"\n"
    return orjson.loads(bytes(shard_line)) == orjson.loads(input_line)


class ParquetRow(bytes):
    """A record read back from Parquet: compared as JSON, not bytes."""


def parquet_records(path) -> list[bytes]:
    from shardkit.pipeline.parquet import parquet_lines

    return [ParquetRow(line) for line in parquet_lines(path, drop_nulls=True)]


def normalised(record: bytes) -> bytes:
    try:
        return orjson.dumps(orjson.loads(record), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        return record  # not JSON: compared as bytes


def conservation_unordered(out, inputs: dict[str, bytes], manifest: dict, *, dedup: bool) -> list[str]:
    """--shuffle reorders, --dedup moves repeats to duplicates.jsonl: every input record is
    in the shards or a side file (rejects, duplicates) exactly once; with --dedup no two
    shard records are the same JSON."""
    want = T.counter(line for data in inputs.values() for _, line in T.nonblank_lines(data))
    got = T.counter(())
    kept = []
    for f in manifest["files"]:
        rows = T.records_of(out / f["path"]) if f.get("format", "jsonl") == "jsonl" else parquet_records(out / f["path"])
        kept += [bytes(r).rstrip(b"\n") for r in rows]
    got.update(kept)
    got.update(T.reject_raw(e) for _, e in T.side_records(out, manifest))
    problems = []
    if got != want:
        problems.append(f"records: {sum((want - got).values())} lost, {sum((got - want).values())} extra or twice")
    if dedup:
        normal = [normalised(r) for r in kept]
        if len(set(normal)) != len(normal):
            problems.append(f"{len(normal) - len(set(normal))} duplicate record(s) left in the shards")
    c = manifest["counts"]
    accounted = sum(c.get(k, 0) for k in ("written", "rejected", "duplicates", "excluded", "blank"))
    if c["read"] != accounted:
        problems.append(f"counts do not add up: {c}")
    return problems


class SplitWorkload(T.Workload):
    def __init__(self, name: str, extra: list[str], *, ordered: bool = True, dedup: bool = False) -> None:
        self.name = name
        self.extra = extra
        self.ordered, self.dedup = ordered, dedup

    def build(self, base) -> None:
        self.template = base
        build_inputs(base)
        self.inputs = {n: (base / n).read_bytes() for n in ("a.jsonl", "b.jsonl")}

    def args(self, d) -> list:
        return ["split", self.template / "a.jsonl", self.template / "b.jsonl", "-o", d / "out", *self.extra]

    def prepare(self, d) -> list:
        d.mkdir(parents=True)
        return self.args(d)

    def set_reference(self, d) -> None:
        self.reference = final_files(d / "out")
        self.ref_manifest = orjson.loads(self.reference["manifest.json"])

    def recover(self, d, kill_after=None) -> list[T.Run]:
        r = T.run([*self.args(d), "--resume"], cwd=d, kill_after=kill_after)
        if kill_after is None:
            T.ok(r)
        return [r]

    def check_crashed(self, d) -> list[str]:
        out = d / "out"
        seen = final_files(out)
        problems = []
        for name, content in seen.items():
            if name in ("manifest.json", "SHA256SUMS"):
                continue
            if name not in self.reference:
                problems.append(f"unexpected file under a final name: {name}")
            elif content != self.reference[name]:
                problems.append(f"{name}: partial or different from the uninterrupted run ({len(content)} vs {len(self.reference[name])} bytes)")
        if "manifest.json" in seen:
            try:
                m = orjson.loads(seen["manifest.json"])
            except orjson.JSONDecodeError as e:
                return [*problems, f"manifest.json does not parse: {e}"]
            ref_files = self.ref_manifest["files"]
            if m["complete"]:
                if T.without(m, "created_at") != T.without(self.ref_manifest, "created_at"):
                    problems.append("manifest.json says complete but differs from the uninterrupted run")
            elif m["files"] != ref_files[: len(m["files"])]:
                problems.append("incomplete manifest's files are not a prefix of the uninterrupted run's")
            problems += T.sums_problems(out)
        return problems

    def check_recovered(self, d) -> list[str]:
        out = d / "out"
        seen = final_files(out)
        problems = []
        if hasattr(self, "reference"):
            if sorted(seen) != sorted(self.reference):
                problems.append(f"files differ from the uninterrupted run: {sorted(set(seen) ^ set(self.reference))}")
            for name, content in self.reference.items():
                if name == "manifest.json":
                    if T.without(orjson.loads(seen.get(name, b"{}")), "created_at") != T.without(self.ref_manifest, "created_at"):
                        problems.append("manifest.json differs from the uninterrupted run's (timestamps aside)")
                elif seen.get(name) != content:
                    problems.append(f"{name}: differs from the uninterrupted run's")
        m = orjson.loads((out / "manifest.json").read_bytes())
        if not m["complete"]:
            problems.append("manifest not complete after recovery")
        v = verify(out / "manifest.json")
        problems += [f"verify: {p}" for p in v.problems]
        problems += T.sums_problems(out, m)
        problems += [f"left behind: {n}" for n in T.hidden_leftovers(out)]
        if self.ordered:
            problems += conservation(out, self.inputs, m)
        else:
            problems += conservation_unordered(out, self.inputs, m, dedup=self.dedup)
        return problems


def final_files(out) -> dict[str, bytes]:
    if not out.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


def split_help() -> str:
    return subprocess.run([*T.SHARDKIT, "split", "--help"], capture_output=True, env=T.clean_env()).stdout.decode()


HELP = split_help()
VALIDATE = ["--validate", "chat", "--jobs", "1"]
# name -> (flag that must be in `split --help`, workload)
WORKLOADS = {
    "split": (None, lambda: SplitWorkload("split", ARGS)),
    "split-validate": (None, lambda: SplitWorkload("split --validate chat", [*ARGS, *VALIDATE])),
    # Parquet sizes are known only once written: no --max-bytes/--oversize reject; invalid
    # records must go to the rejects file (Parquet needs JSON)
    "split-parquet": ("--format", lambda: SplitWorkload("split --format parquet", ["--format", "parquet", "--max-records", "20", *VALIDATE, "--json"])),
    # one workload for both (the CI budget): the shuffle pipeline with dedup on
    "split-shuffle-dedup": ("--dedup", lambda: SplitWorkload("split --shuffle --dedup exact", [*ARGS, "--shuffle", "--seed", "7", "--dedup", "exact"],
                                                             ordered=False, dedup=True)),
}


@pytest.fixture(scope="module", params=list(WORKLOADS))
def report(request, tmp_path_factory):
    flag, make = WORKLOADS[request.param]
    if flag == "--dedup" and "--shuffle" not in HELP:
        flag = "--shuffle"
    if flag and flag not in HELP:
        pytest.skip(f"`shardkit split --help` lists no {flag}: not crash-tested")
    w = make()
    return T.crash_trials(w, tmp_path_factory.mktemp(request.param), seed_salt=request.param)


def test_fault_points_are_reached(report):
    """The harness sees the fault points a writer must have (guards against a silent tracer)."""
    points = set(report.points)
    expected = {"before:shard_commit", "after:shard_commit", "after:manifest_write"}
    if report.workload.ordered:  # the streaming splitter syncs its rejects file at each checkpoint
        expected.add("after:rejects_write")
    assert expected <= points, f"{report.workload.name}: reached {sorted(points)}"


def test_killed_at_every_fault_point_then_resume(report):
    failures = report.failures(report.fault_trials)
    assert not failures, f"{report.workload.name}: {len(failures)} of {len(report.fault_trials)} fault trials failed:\n" + "\n".join(failures)


def test_random_kills_land_mid_run(report):
    """Most seeded kills must hit a running process, or the random trials test nothing."""
    assert report.landed() >= 0.6, f"only {report.landed():.0%} of the kills landed before the run ended"


@pytest.mark.parametrize("trial", range(T.TRIALS))
def test_sigkill_at_random_moment_then_resume(report, trial):
    t = report.random_trials[trial]
    assert not t.problems, f"{report.workload.name} {t.id} (kill at {t.delay:.3f}s" + (
        f", recovery killed at {t.recovery_kill:.3f}s" if t.recovery_kill else "") + f", dir {t.dir}):\n" + "\n".join(t.problems)


def test_resume_after_the_last_shard_of_an_input_without_final_newline(tmp_path):
    """The smallest form of a fault trial that fails: the checkpoint written with the last
    shard of an input whose final line has no newline counts the added newline, so a run
    killed before its next manifest write cannot resume."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(T.chat_record("n", i) for i in range(5)))  # no final newline
    args = ["split", src, "-o", tmp_path / "out", "--max-records", "2"]
    r = T.run(args, fault="after:input_done:1")
    assert r.returncode == -9, r.describe()
    T.ok(T.run([*args, "--resume"]))
    assert T.records_of(tmp_path / "out" / "in-00002.jsonl") == [T.chat_record("n", 4) + b"\n"]


# ---------------------------------------------------------------- worker processes and kills


@pytest.mark.parametrize("command", ["split --validate", "validate"])
def test_sigkill_leaves_no_worker_process_behind(tmp_path, command):
    """With --jobs 2 the checks run in worker processes. SIGKILL of the main process (the
    OOM killer's way) must not leave them running: orphans hold memory and the caller's
    stdout/stderr pipes (a `$(shardkit ...)` or `subprocess.run(capture_output=True)` then
    waits forever)."""
    src = tmp_path / "w.jsonl"
    src.write_bytes(b"\n".join(T.varied_chat_lines("w", 3000, seed=5, max_len=800)) + b"\n")
    if command == "validate":
        args = ["validate", src, "--kind", "chat", "--jobs", "2", "--rejects", tmp_path / "bad.jsonl"]
    else:
        args = ["split", src, "-o", tmp_path / "out", "--max-records", "100", "--validate", "chat", "--jobs", "2"]
    clean = T.run(args)
    assert clean.returncode == 0 and not clean.survivors, clean.describe()
    left = []
    for fraction in (0.35, 0.5, 0.65, 0.8):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        (tmp_path / "bad.jsonl").unlink(missing_ok=True)
        r = T.run(args, kill_after=max(T.startup_seconds() * 1.2, clean.seconds * fraction))
        if r.killed and r.survivors:
            left.append(f"killed at {fraction:.0%} of the run: " + "; ".join(r.survivors))
    assert not left, "worker processes outlived their killed parent:\n  " + "\n  ".join(left)
