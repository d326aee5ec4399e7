"""Crash trials for `validate --rejects`: killed at every fault point it reaches and by
SIGKILL at seeded moments, then rerun. The rejects file appears whole or not at all; after
the rerun it holds every invalid record exactly once, with its original bytes, and the
report accounts for every line (read = valid + invalid; blank apart)."""

from __future__ import annotations

import orjson
import pytest
import torture as T


def build_inputs(d) -> None:
    good = T.varied_chat_lines("v", 400, seed=T.SEED + 7, max_len=1500)
    bad = list(T.INVALID_CHAT) * 6
    lines = []
    for i, g in enumerate(good):
        lines.append(g)
        if i % 9 == 0 and bad:
            lines.append(bad.pop())
        if i % 50 == 0:
            lines.append(b"")
    lines.append(b'{"messages": [{"role": "user", "content": "huge ' + b"h" * 300_000 + b'"}]}')
    (d / "v.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "w.jsonl").write_bytes(b"\r\n".join([*T.varied_chat_lines("w", 40, seed=3, max_len=300), b"{broken"]))


class ValidateWorkload(T.Workload):
    name = "validate --rejects"

    def build(self, base) -> None:
        self.template = base
        build_inputs(base)
        self.inputs = {n: (base / n).read_bytes() for n in ("v.jsonl", "w.jsonl")}
        self.input_sha = {n: T.sha256(base / n) for n in self.inputs}

    def args(self, d) -> list:
        return ["validate", self.template / "v.jsonl", self.template / "w.jsonl", "--kind", "chat",
                "--max-errors", "1000000", "--jobs", "1", "--rejects", d / "out" / "bad.jsonl", "--json"]

    def prepare(self, d) -> list:
        (d / "out").mkdir(parents=True)
        return self.args(d)

    def set_reference(self, d) -> None:
        self.reference = (d / "out" / "bad.jsonl").read_bytes()

    def recover(self, d, kill_after=None) -> list[T.Run]:
        if (d / "out" / "bad.jsonl").exists():
            return []  # published at the very end: the run had finished
        r = T.run(self.args(d), cwd=d, kill_after=kill_after)
        if kill_after is None:
            T.ok(r)
            self.last_report = orjson.loads(r.stdout)
        return [r]

    def check_crashed(self, d) -> list[str]:
        out = d / "out"
        finals = [p.name for p in out.iterdir() if not p.name.startswith(".")]
        problems = [f"unexpected file under a final name: {n}" for n in finals if n != "bad.jsonl"]
        p = out / "bad.jsonl"
        if p.exists() and hasattr(self, "reference") and p.read_bytes() != self.reference:
            problems.append(f"bad.jsonl is partial or different ({p.stat().st_size} vs {len(self.reference)} bytes)")
        return problems

    def check_recovered(self, d) -> list[str]:
        problems = []
        data = (d / "out" / "bad.jsonl").read_bytes()
        if hasattr(self, "reference") and data != self.reference:
            problems.append("bad.jsonl differs from the uninterrupted run's")
        seen: set[tuple[str, int]] = set()
        lines = {n: dict(T.nonblank_lines(b)) for n, b in self.inputs.items()}
        for line in data.splitlines():
            e = orjson.loads(line)
            key = (e["source"].rsplit("/", 1)[-1], e["line"])
            if key in seen:
                problems.append(f"{key}: rejected twice")
            seen.add(key)
            if lines[key[0]].get(key[1]) != T.reject_raw(e):
                problems.append(f"{key}: raw bytes differ from the input line")
        for n, sha in self.input_sha.items():
            if T.sha256(self.template / n) != sha:
                problems.append(f"input {n} changed")
        return problems


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    w = ValidateWorkload()
    return T.crash_trials(w, tmp_path_factory.mktemp("validate"), seed_salt="validate")


def test_reference_accounts_for_every_line(tmp_path):
    """The uninterrupted run: read = valid + invalid, and the rejects are exactly the invalid."""
    build_inputs(tmp_path)
    r = T.ok(T.run(["validate", tmp_path / "v.jsonl", tmp_path / "w.jsonl", "--kind", "chat", "--max-errors", "1000000",
                    "--jobs", "1", "--rejects", tmp_path / "bad.jsonl", "--json"]))
    rec = orjson.loads(r.stdout)["records"]
    nonblank = sum(len(T.nonblank_lines((tmp_path / n).read_bytes())) for n in ("v.jsonl", "w.jsonl"))
    assert rec["read"] == rec["valid"] + rec["invalid"] == nonblank, rec
    assert rec["invalid"] == len((tmp_path / "bad.jsonl").read_bytes().splitlines()) > len(T.INVALID_CHAT), rec


def test_killed_at_every_fault_point_then_rerun(report):
    """validate reaches no fault point today (see RELIABILITY.md); whatever it reaches is killed."""
    failures = report.failures(report.fault_trials)
    assert not failures, "\n".join(failures)


def test_random_kills_land_mid_run(report):
    """Most seeded kills must hit a running process, or the random trials test nothing."""
    assert report.landed() >= 0.6, f"only {report.landed():.0%} of the kills landed before the run ended"


@pytest.mark.parametrize("trial", range(T.TRIALS))
def test_sigkill_at_random_moment_then_rerun(report, trial):
    t = report.random_trials[trial]
    assert not t.problems, f"{t.id} (kill at {t.delay:.3f}s, dir {t.dir}):\n" + "\n".join(t.problems)
