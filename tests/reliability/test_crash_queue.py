"""Crash trials for `queue ingest` and `queue retry --split N`.

Each trial copies a prepared queue, runs the command as a real process, kills it (fault
point or seeded SIGKILL), then recovers the documented way: `queue doctor --repair`, then
the command again (ingest: always; retry --split: while the file is still in failed/).
Right after the kill every queue file is whole; after recovery every record of every drop
is in the queue exactly once (pending, or quarantine for the invalid drop), the parents sit
in split/, the journal has no open intent, `doctor` is clean and the queue manifest verifies.
"""

from __future__ import annotations

import collections
import gzip
import shutil
import sys

import pytest
import torture as T

from shardkit.queue.doctor import doctor
from shardkit.queue.state import PRIORITIES, Queue, queue_manifest
from shardkit.store.manifest import verify

SETTINGS = 'settle = "0s"\nmax_records = 60\nkind = "chat"\nmax_attempts = 5\n'


def lines_of(path) -> list[bytes]:
    return T.records_of(path)


def queue_files(root, states) -> dict[str, list]:
    out = {}
    for s in states:
        folder = root / "queue" / s
        out[s] = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()) if folder.is_dir() else []
    return out


def pending_records(root) -> collections.Counter:
    got = collections.Counter()
    for prio in PRIORITIES:
        for p in queue_files(root, [prio])[prio]:
            got.update(lines_of(p))
    return got


def common_checks(root) -> list[str]:
    problems = []
    q = Queue(root)
    rep = doctor(q)
    problems += [f"doctor: {f.code}: {f.message}" for f in rep.problems]
    problems += [f"journal: open intent {i.op} {i.intent.get('name')}" for i in q.journal.open_intents()]
    queue_manifest(q)
    problems += [f"queue manifest verify: {p}" for p in verify(root / "manifest.json").problems]
    return problems


class IngestWorkload(T.Workload):
    name = "queue ingest"

    def build(self, base) -> None:
        root = base / "q"
        Queue(root, create=True)
        (root / "shardkit.toml").write_text(SETTINGS)
        self.drops: dict[str, list[bytes]] = {}

        def drop(name: str, lines: list[bytes], *, gz: bool = False) -> None:
            data = b"".join(x + b"\n" for x in lines)
            (root / "inbox" / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)
            self.drops[name] = [x + b"\n" for x in lines]

        drop("big.jsonl", [T.chat_record("big", i, size=i % 300) for i in range(230)])
        drop("a.jsonl", [T.chat_record("a", i) for i in range(45)])
        drop("b.jsonl", [T.chat_record("b", i, size=50) for i in range(60)])
        drop("big2.jsonl.gz", [T.chat_record("gz", i, size=20) for i in range(130)], gz=True)
        drop("bad.jsonl", [T.chat_record("bad", 0), T.INVALID_CHAT[0], T.chat_record("bad", 2)])
        self.template = root
        self.contents = {n: (root / "inbox" / n).read_bytes() for n in self.drops}

    def prepare(self, d) -> list:
        shutil.copytree(self.template, d / "q", symlinks=True)
        return ["queue", "ingest", "--root", d / "q"]

    def set_reference(self, d) -> None:
        root = d / "q"
        self.whole = {p.read_bytes() for s, ps in queue_files(root, [*PRIORITIES, "quarantine", "split"]).items() for p in ps}
        self.whole |= set(self.contents.values())

    def recover(self, d, kill_after=None) -> list[T.Run]:
        root = d / "q"
        runs = [T.ok(T.run(["queue", "doctor", "--root", root, "--repair"], cwd=d), (0, 1))]
        r = T.run(["queue", "ingest", "--root", root], cwd=d, kill_after=kill_after)
        if kill_after is None:
            T.ok(r)
        return [*runs, r]

    def check_crashed(self, d) -> list[str]:
        root = d / "q"
        problems = []
        for state, paths in queue_files(root, [*PRIORITIES, "inbox", "quarantine", "split"]).items():
            for p in paths:
                if p.name.endswith((".report.json", ".rejects.jsonl")):
                    continue
                if hasattr(self, "whole") and p.read_bytes() not in self.whole:
                    problems.append(f"{state}/{p.name}: partial (matches no drop and no shard of an uninterrupted ingest)")
        return problems

    def check_recovered(self, d) -> list[str]:
        root = d / "q"
        problems = []
        expected = collections.Counter()
        for name, lines in self.drops.items():
            if name != "bad.jsonl":
                expected.update(lines)
        got = pending_records(root)
        if got != expected:
            lost = expected - got
            twice = got - expected
            problems.append(f"pending records differ: {sum(lost.values())} lost, {sum(twice.values())} extra/twice")
        files = queue_files(root, ["inbox", "quarantine", "split", "processing", "failed"])
        if files["inbox"]:
            problems.append(f"inbox not drained: {[p.name for p in files['inbox']]}")
        quarantined = [p for p in files["quarantine"] if not p.name.endswith((".report.json", ".rejects.jsonl"))]
        if [p.name for p in quarantined] != ["bad.jsonl"] or quarantined[0].read_bytes() != self.contents["bad.jsonl"]:
            problems.append(f"quarantine holds {[p.name for p in quarantined]}, expected bad.jsonl, whole")
        if not (root / "queue" / "quarantine" / "bad.jsonl.report.json").is_file():
            problems.append("quarantine/bad.jsonl.report.json missing")
        parents = {p.name: p.read_bytes() for p in files["split"]}
        if parents != {n: self.contents[n] for n in ("big.jsonl", "big2.jsonl.gz")}:
            problems.append(f"split/ holds {sorted(parents)}, expected the two split parents, whole")
        return problems + common_checks(root)


class RetrySplitWorkload(T.Workload):
    name = "queue retry --split"

    def build(self, base) -> None:
        from shardkit.queue.ingest import ingest
        from shardkit.queue.settings import load_settings

        root = base / "q"
        Queue(root, create=True)
        (root / "shardkit.toml").write_text('settle = "0s"\nkind = "chat"\nmax_attempts = 5\n')
        self.big = [T.chat_record("failed", i, size=i % 500) for i in range(260)]
        self.other = [T.chat_record("other", i) for i in range(30)]
        (root / "inbox" / "huge.jsonl").write_bytes(b"".join(x + b"\n" for x in self.big))
        (root / "inbox" / "other.jsonl").write_bytes(b"".join(x + b"\n" for x in self.other))
        q = Queue(root, load_settings(root))
        ingest(q)
        first, second = q.claim("gpu0"), q.claim("gpu1")  # other.jsonl stays in processing
        (first if first.name == "huge.jsonl" else second).fail("CUDA out of memory")
        self.template = root
        self.parent = (root / "queue" / "failed" / "huge.jsonl").read_bytes()

    def prepare(self, d) -> list:
        shutil.copytree(self.template, d / "q", symlinks=True)
        return ["queue", "retry", "huge.jsonl", "--split", "40", "--root", d / "q"]

    def set_reference(self, d) -> None:
        root = d / "q"
        self.whole = {p.read_bytes() for ps in queue_files(root, [*PRIORITIES, "split"]).values() for p in ps}
        self.whole.add(self.parent)

    def recover(self, d, kill_after=None) -> list[T.Run]:
        root = d / "q"
        runs = [T.ok(T.run(["queue", "doctor", "--root", root, "--repair"], cwd=d), (0, 1))]
        if (root / "queue" / "failed" / "huge.jsonl").exists():
            r = T.run(["queue", "retry", "huge.jsonl", "--split", "40", "--root", root], cwd=d, kill_after=kill_after)
            if kill_after is None:
                T.ok(r)
            runs.append(r)
        return runs

    def check_crashed(self, d) -> list[str]:
        root = d / "q"
        problems = []
        for state, paths in queue_files(root, [*PRIORITIES, "failed", "split"]).items():
            for p in paths:
                if hasattr(self, "whole") and p.read_bytes() not in self.whole:
                    problems.append(f"{state}/{p.name}: partial")
        return problems

    def check_recovered(self, d) -> list[str]:
        root = d / "q"
        problems = []
        got = pending_records(root)
        expected = collections.Counter(x + b"\n" for x in self.big)
        if got != expected:
            problems.append(f"pending records differ: {sum((expected - got).values())} lost, {sum((got - expected).values())} extra")
        files = queue_files(root, ["failed", "split", "processing"])
        if files["failed"]:
            problems.append(f"still in failed/: {[p.name for p in files['failed']]}")
        if [p.name for p in files["split"]] != ["huge.jsonl"] or files["split"][0].read_bytes() != self.parent:
            problems.append(f"split/ holds {[p.name for p in files['split']]}, expected huge.jsonl, whole")
        if [p.name for p in files["processing"]] != ["other.jsonl"]:
            problems.append(f"processing/ changed: {[p.name for p in files['processing']]}")
        q = Queue(root)
        parent = next((i for i in q.items() if i.name == "huge.jsonl"), None)
        kids = [i for i in q.items() if parent and i.parent == parent.id and i.state in PRIORITIES]
        if parent is None or len(kids) != 7 or parent.state != "split":
            problems.append(f"lineage: parent {parent and parent.state}, {len(kids)} children recorded (expected 7)")
        return problems + [p for p in common_checks(root) if "processing/other.jsonl" not in p]


WORKLOADS = {"ingest": IngestWorkload, "retry-split": RetrySplitWorkload}


@pytest.fixture(scope="module", params=list(WORKLOADS))
def report(request, tmp_path_factory):
    return T.crash_trials(WORKLOADS[request.param](), tmp_path_factory.mktemp(request.param), seed_salt=request.param)


def test_fault_points_are_reached(report):
    points = set(report.points)
    expected = {"after:shard_commit", "after:manifest_write", "after:ingest_split_written", "after:ingest_publish"}
    assert expected <= points, f"{report.workload.name}: reached {sorted(points)}"


def test_killed_at_every_fault_point_then_recovered(report):
    failures = report.failures(report.fault_trials)
    assert not failures, f"{report.workload.name}: {len(failures)} of {len(report.fault_trials)} fault trials failed:\n" + "\n".join(failures)


def test_random_kills_land_mid_run(report):
    """Most seeded kills must hit a running process, or the random trials test nothing."""
    assert report.landed() >= 0.6, f"only {report.landed():.0%} of the kills landed before the run ended"


@pytest.mark.parametrize("trial", range(T.TRIALS))
def test_sigkill_at_random_moment_then_recovered(report, trial):
    t = report.random_trials[trial]
    assert not t.problems, f"{report.workload.name} {t.id} (kill at {t.delay:.3f}s" + (
        f", recovery killed at {t.recovery_kill:.3f}s" if t.recovery_kill else "") + f", dir {t.dir}):\n" + "\n".join(t.problems)


KILL_AT_REPORT = """
import os, signal, sys
import shardkit.queue.ingest as ingest
if not hasattr(ingest, "write_report"):
    sys.exit("shardkit.ingest.write_report is gone: point this test at the step that writes NAME.report.json")
ingest.write_report = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from shardkit.cli import main
main()
"""


def test_a_quarantined_drop_keeps_its_report_across_a_kill(tmp_path):
    """Deterministic form of what the random kills hit now and then: ingest killed after it
    moved an invalid drop to quarantine/ and before it wrote NAME.report.json. After the
    documented recovery the drop must have its report again, or `doctor` must say it has none."""
    root = tmp_path / "q"
    Queue(root, create=True)
    (root / "shardkit.toml").write_text(SETTINGS)
    (root / "inbox" / "bad.jsonl").write_bytes(T.INVALID_CHAT[0] + b"\n")
    r = T.run(["queue", "ingest", "--root", root], program=[sys.executable, "-c", KILL_AT_REPORT])
    assert r.returncode == -9, r.describe()
    # the report is written before the move: the drop is still in the inbox, or quarantined with it
    assert (root / "inbox" / "bad.jsonl").exists() or (root / "queue" / "quarantine" / "bad.jsonl.report.json").exists()
    T.ok(T.run(["queue", "doctor", "--root", root, "--repair"]), (0, 1))
    T.ok(T.run(["queue", "ingest", "--root", root]))
    assert (root / "queue" / "quarantine" / "bad.jsonl").exists()
    report = root / "queue" / "quarantine" / "bad.jsonl.report.json"
    doctor_says = T.run(["queue", "doctor", "--root", root])
    assert report.is_file() or doctor_says.returncode == 1, (
        "quarantine/bad.jsonl has no report after doctor --repair + ingest, and doctor says the queue is fine:\n"
        + doctor_says.stdout.decode())
