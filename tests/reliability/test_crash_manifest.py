"""Crash trials for `manifest`, on a folder of shards and on a queue root.

`manifest` rewrites SHA256SUMS then manifest.json, each atomically. A kill at any moment
leaves each of them either as it was or as the uninterrupted run writes it (never half), a
manifest that is new only with its new SHA256SUMS, and the data files untouched; a rerun
then writes exactly what an uninterrupted run writes, and it verifies.
"""

from __future__ import annotations

import shutil

import orjson
import pytest
import torture as T

from shardkit.queue.doctor import doctor
from shardkit.queue.state import STATES, Queue
from shardkit.store.manifest import verify

VOLATILE = ("created_at", "rehashed", "root")


def data_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name.endswith(".jsonl")}


class ShardsManifestWorkload(T.Workload):
    """An old manifest, one shard since removed, one added by hand: the rerun must list
    exactly the files on disk, keeping the lineage of the unchanged ones."""

    name = "manifest (shards folder)"

    def build(self, base) -> None:
        src = base / "in.jsonl"
        src.write_bytes(b"\n".join(T.varied_chat_lines("m", 1500, seed=T.SEED + 3, max_len=3000)) + b"\n")
        out = base / "shards"
        T.ok(T.run(["split", src, "-o", out, "--max-records", "100"]))
        (out / "in-00003.jsonl").unlink()
        (out / "extra-00000.jsonl").write_bytes(b"\n".join(T.chat_record("extra", i) for i in range(50)) + b"\n")
        self.template = out
        self.old = {n: (out / n).read_bytes() for n in ("manifest.json", "SHA256SUMS")}
        self.data = data_files(out)

    def prepare(self, d) -> list:
        shutil.copytree(self.template, d / "shards")
        return ["manifest", d / "shards", "--accept-changes"]  # the workload changed the folder on purpose

    def set_reference(self, d) -> None:
        self.new_manifest = T.without(orjson.loads((d / "shards" / "manifest.json").read_bytes()), *VOLATILE)
        self.new_sums = (d / "shards" / "SHA256SUMS").read_bytes()

    def recover(self, d, kill_after=None) -> list[T.Run]:
        r = T.run(["manifest", d / "shards", "--accept-changes"], cwd=d, kill_after=kill_after)
        if kill_after is None:
            T.ok(r)
        return [r]

    def check_crashed(self, d) -> list[str]:
        out = d / "shards"
        problems = []
        if data_files(out) != self.data:
            problems.append("data files changed")
        finals = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if finals != set(self.data) | {"manifest.json", "SHA256SUMS"}:
            problems.append(f"final names: {sorted(finals ^ (set(self.data) | {'manifest.json', 'SHA256SUMS'}))}")
        m = (out / "manifest.json").read_bytes()
        sums = (out / "SHA256SUMS").read_bytes()
        if not hasattr(self, "new_manifest"):
            return problems
        manifest_is_new = m != self.old["manifest.json"]
        if manifest_is_new and T.without(orjson.loads(m), *VOLATILE) != self.new_manifest:
            problems.append("manifest.json is neither the old one nor the new one")
        if sums not in (self.old["SHA256SUMS"], self.new_sums):
            problems.append("SHA256SUMS is neither the old one nor the new one")
        if manifest_is_new and sums != self.new_sums:
            problems.append("a new manifest.json beside the old SHA256SUMS")
        return problems

    def check_recovered(self, d) -> list[str]:
        out = d / "shards"
        problems = []
        m = orjson.loads((out / "manifest.json").read_bytes())
        if hasattr(self, "new_manifest") and T.without(m, *VOLATILE) != self.new_manifest:
            problems.append("manifest.json differs from the uninterrupted run's")
        listed = sorted(f["path"] for f in m["files"])
        if listed != sorted(self.data):
            problems.append(f"manifest lists {listed}, the folder holds {sorted(self.data)}")
        kept = {f["path"]: f for f in m["files"]}
        if kept.get("in-00000.jsonl", {}).get("first_line") != 1:
            problems.append("lineage of an unchanged shard was lost")
        problems += [f"verify: {p}" for p in verify(out / "manifest.json").problems]
        problems += T.sums_problems(out, m)
        if data_files(out) != self.data:
            problems.append("data files changed")
        return problems


class QueueManifestWorkload(T.Workload):
    name = "manifest (queue root)"

    def build(self, base) -> None:
        from shardkit.queue.ingest import ingest
        from shardkit.queue.settings import load_settings

        root = base / "q"
        Queue(root, create=True)
        (root / "shardkit.toml").write_text('settle = "0s"\nkind = "chat"\nmax_records = 400\n')
        for k in range(14):
            n = 600 if k == 0 else 60 + 37 * k
            (root / "inbox" / f"d{k:02d}.jsonl").write_bytes(b"".join(T.chat_record(f"d{k}", i, size=200) + b"\n" for i in range(n)))
        (root / "inbox" / "bad.jsonl").write_bytes(T.INVALID_CHAT[1] + b"\n")
        q = Queue(root, load_settings(root))
        ingest(q)
        for _ in range(4):
            q.claim("gpu0").complete()
        q.claim("gpu1").fail("boom")
        self.template = root
        self.snapshot = self.state_files(root)

    @staticmethod
    def state_files(root) -> dict[str, bytes]:
        q = Queue(root)
        return {f"{s}/{p.name}": p.read_bytes() for s in STATES for p in sorted(q.dir(s).iterdir()) if p.is_file()}

    def prepare(self, d) -> list:
        shutil.copytree(self.template, d / "q")
        return ["manifest", d / "q"]

    def set_reference(self, d) -> None:
        self.new_manifest = T.without(orjson.loads((d / "q" / "manifest.json").read_bytes()), *VOLATILE)

    def recover(self, d, kill_after=None) -> list[T.Run]:
        r = T.run(["manifest", d / "q"], cwd=d, kill_after=kill_after)
        if kill_after is None:
            T.ok(r)
        return [r]

    def check_crashed(self, d) -> list[str]:
        root = d / "q"
        problems = []
        if self.state_files(root) != self.snapshot:
            problems.append("queue files changed")
        m = root / "manifest.json"
        if m.exists() and hasattr(self, "new_manifest"):
            if T.without(orjson.loads(m.read_bytes()), *VOLATILE) != self.new_manifest:
                problems.append("manifest.json is partial or different")
            elif not (root / "SHA256SUMS").exists():
                problems.append("manifest.json without its SHA256SUMS")
        return problems

    def check_recovered(self, d) -> list[str]:
        root = d / "q"
        problems = []
        m = orjson.loads((root / "manifest.json").read_bytes())
        if hasattr(self, "new_manifest") and T.without(m, *VOLATILE) != self.new_manifest:
            problems.append("manifest.json differs from the uninterrupted run's")
        problems += [f"verify: {p}" for p in verify(root / "manifest.json").problems]
        problems += T.sums_problems(root, m)
        if self.state_files(root) != self.snapshot:
            problems.append("queue files changed")
        problems += [f"doctor: {f.code}: {f.message}" for f in doctor(Queue(root)).problems
                     if not (f.code == "processing_without_lease")]
        return problems


WORKLOADS = {"manifest-shards": ShardsManifestWorkload, "manifest-queue": QueueManifestWorkload}


@pytest.fixture(scope="module", params=list(WORKLOADS))
def report(request, tmp_path_factory):
    return T.crash_trials(WORKLOADS[request.param](), tmp_path_factory.mktemp(request.param), seed_salt=request.param)


def test_fault_points_are_reached(report):
    assert "after:manifest_write" in report.points, f"{report.workload.name}: reached {sorted(report.points)}"


def test_killed_at_every_fault_point_then_rerun(report):
    failures = report.failures(report.fault_trials)
    assert not failures, f"{report.workload.name}: {len(failures)} of {len(report.fault_trials)} fault trials failed:\n" + "\n".join(failures)


def test_random_kills_land_mid_run(report):
    """Most seeded kills must hit a running process, or the random trials test nothing."""
    assert report.landed() >= 0.6, f"only {report.landed():.0%} of the kills landed before the run ended"


@pytest.mark.parametrize("trial", range(T.TRIALS))
def test_sigkill_at_random_moment_then_rerun(report, trial):
    t = report.random_trials[trial]
    assert not t.problems, f"{report.workload.name} {t.id} (kill at {t.delay:.3f}s" + (
        f", rerun killed at {t.recovery_kill:.3f}s" if t.recovery_kill else "") + f", dir {t.dir}):\n" + "\n".join(t.problems)
