"""The reliability harness: one code path for CI (`pytest tests/reliability`) and for
`make torture` (the same tests with more trials, a longer race, more fuzz examples).

Knobs (environment):

    SHARDKIT_TRIALS=20          random SIGKILL trials per command (torture: 500); with
                                >= 100, every occurrence of every fault point is killed too
    SHARDKIT_RACE_SECONDS=8     length of the concurrency race (torture: 30)
    SHARDKIT_FUZZ_EXAMPLES=300  hypothesis examples per property (torture: 3000)
    SHARDKIT_SEED=2026          seed of the kill moments and of the generated data
    SHARDKIT_TRIAL_JOBS=N       trials run in parallel (default: twice the number of cores)
    SHARDKIT_TORTURE_REPORT=F   append one JSON line per command (trials, failures) to F

Every shardkit run here is a real `python -m shardkit` process in its own session, with
stdout/stderr in files (never pipes: a process left behind by a killed run must not hang
the harness). After each run the session is searched for survivors: a killed run must not
leave worker processes behind.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
TRACER = HERE / "fault_tracer.py"

TRIALS = int(os.environ.get("SHARDKIT_TRIALS", "20"))
RACE_SECONDS = float(os.environ.get("SHARDKIT_RACE_SECONDS", "8"))
FUZZ_EXAMPLES = int(os.environ.get("SHARDKIT_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("SHARDKIT_SEED", "2026"))
JOBS = int(os.environ.get("SHARDKIT_TRIAL_JOBS", "0")) or 2 * (os.cpu_count() or 1)  # runs wait on fsync
REPORT = os.environ.get("SHARDKIT_TORTURE_REPORT")
EXHAUSTIVE_FAULTS = TRIALS >= 100  # torture: every occurrence of every fault point

SHARDKIT = [sys.executable, "-m", "shardkit"]


# ---------------------------------------------------------------- running shardkit


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float
    killed: bool = False  # the harness sent SIGKILL
    timed_out: bool = False
    survivors: list[str] = field(default_factory=list)  # processes of its session left alive

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def describe(self) -> str:
        return f"`shardkit {' '.join(self.args)}` -> {self.returncode}: {self.err.strip()[-600:]}"


def clean_env(extra: dict | None = None) -> dict:
    """os.environ without SHARDKIT_* (a developer's SHARDKIT_MAX_RECORDS must not change a
    trial), plus `extra`. Bytecode caching stays on: thousands of runs would otherwise
    compile shardkit again each time (a third of a short run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDKIT_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra or {})
    return env


def session_members(sid: int) -> list[tuple[int, str]]:
    """Live processes (not zombies) in session `sid`: (pid, command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != sid or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        found.append((int(entry), cmd))
    return found


def reap_session(sid: int, grace: float = 1.0) -> list[str]:
    """Processes the run left behind in its session (after `grace` s); they are SIGKILLed
    (they are ours: started by this harness) and described."""
    deadline = time.monotonic() + grace
    members = session_members(sid)
    while members and time.monotonic() < deadline:
        time.sleep(0.05)
        members = session_members(sid)
    for pid, _ in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"pid {pid}: {cmd}" for pid, cmd in members]


def run(
    args: Iterable,
    *,
    env: dict | None = None,
    fault: str | None = None,
    kill_after: float | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
    preexec: Callable[[], None] | None = None,
    umask: int = -1,
    program: list[str] | None = None,
) -> Run:
    """Run shardkit ARGS to the end, or SIGKILL it `kill_after` s after start."""
    args = [str(a) for a in args]
    full_env = clean_env(env)
    if preexec is not None:
        # Under RLIMIT_FSIZE, CPython writes a .pyc with one raw write() that the limit cuts
        # short, then renames it into place: the next interpreter fails on the truncated
        # bytecode ("marshal data too short"). A limited child must not write bytecode.
        full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    if fault:
        full_env["SHARDKIT_FAULT"] = fault
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.monotonic()
        proc = subprocess.Popen(
            [*(program or SHARDKIT), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            env=full_env, cwd=cwd, start_new_session=True, preexec_fn=preexec, umask=umask,
        )
        killed = timed_out = False
        if kill_after is not None:
            try:
                proc.wait(kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()
                killed = True
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            timed_out = True
        seconds = time.monotonic() - t
        survivors = reap_session(proc.pid, grace=1.0 if (killed or rc < 0 or timed_out) else 0.2)
        out.seek(0)
        err.seek(0)
        return Run(args, rc, out.read(), err.read(), seconds, killed, timed_out, survivors)


def ok(r: Run, codes: Iterable[int] = (0,)) -> Run:
    assert r.returncode in set(codes) and not r.timed_out, r.describe()
    return r


_startup: float | None = None


def startup_seconds() -> float:
    """How long `python -m shardkit --version` takes here: kills land after start-up."""
    global _startup
    if _startup is None:
        _startup = min(run(["--version"]).seconds for _ in range(3))
    return _startup


def trace_faults(args: Iterable, *, cwd: Path | None = None, env: dict | None = None) -> tuple[Run, dict[str, int]]:
    """Run the command with faults.hit() counting instead of killing: the fault points this
    command reaches on this input, and how many times each."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    try:
        r = run(args, cwd=cwd, env={**(env or {}), "SHARDKIT_TRACE_OUT": out}, program=[sys.executable, str(TRACER)])
        with open(out, "rb") as f:
            data = f.read()
        counts = json.loads(data) if data else {}
    finally:
        os.unlink(out)
    return r, counts


def fault_specs(counts: dict[str, int]) -> list[str]:
    """Every reachable point: in CI its first and last occurrences, in torture every
    occurrence (up to 200 per point)."""
    specs = []
    for point in sorted(counts):
        n = counts[point]
        picks = range(1, min(n, 200) + 1) if EXHAUSTIVE_FAULTS else sorted({1, n})
        specs += [f"{point}:{k}" for k in picks]
    return specs


# ---------------------------------------------------------------- crash trials


@dataclass
class Trial:
    id: str
    fault: str | None = None  # "after:shard_commit:3"
    delay: float | None = None  # SIGKILL this many seconds after start
    recovery_kill: float | None = None  # also SIGKILL the first recovery run
    problems: list[str] = field(default_factory=list)
    dir: Path | None = None
    landed: bool = False  # the kill hit a running process (not one that had finished)


class Workload:
    """One command under crash trials. Subclasses build a template once, copy it for each
    trial, and say how to recover and what must hold after the crash and after recovery."""

    name = "?"

    def build(self, base: Path) -> None:
        raise NotImplementedError

    def prepare(self, d: Path) -> list:
        """Set up trial folder `d`; return the command's arguments."""
        raise NotImplementedError

    def set_reference(self, d: Path) -> None:
        """`d` holds a clean, uninterrupted run: keep what the checks compare against."""

    def recover(self, d: Path, kill_after: float | None = None) -> list[Run]:
        """The documented recovery (e.g. --resume, or doctor --repair + rerun)."""
        raise NotImplementedError

    def check_crashed(self, d: Path) -> list[str]:
        """What a reader sees right after the kill: only whole files under final names."""
        return []

    def check_recovered(self, d: Path) -> list[str]:
        """After recovery: every record exactly once, manifests verify, no leftovers."""
        raise NotImplementedError


@dataclass
class CrashReport:
    workload: Workload
    reference_seconds: float
    points: dict[str, int]
    fault_trials: list[Trial]
    random_trials: list[Trial]

    def landed(self) -> float:
        """Share of the random kills that hit a running process."""
        return sum(t.landed for t in self.random_trials) / max(1, len(self.random_trials))

    def failures(self, trials: list[Trial]) -> list[str]:
        out = []
        for t in trials:
            if t.problems:
                where = f" (kept: {t.dir})" if t.dir else ""
                out.append(f"{t.id}{where}:\n    " + "\n    ".join(p[:1500] for p in t.problems))
        return out


def run_trial(w: Workload, base: Path, t: Trial) -> None:
    d = base / t.id.replace(":", "_")
    try:
        args = w.prepare(d)
        r = run(args, cwd=d, fault=t.fault, kill_after=t.delay)
        t.landed = r.killed or r.returncode == -signal.SIGKILL
        if t.fault and r.returncode != -signal.SIGKILL:
            t.problems.append(f"fault {t.fault} was not reached (the run ended with {r.returncode}): {r.err[-400:]}")
        elif t.delay is not None and not r.killed and r.returncode != 0:
            t.problems.append(f"run failed before the kill: {r.describe()}")
        if r.timed_out:
            t.problems.append(f"timed out: {r.describe()}")
        if r.survivors:
            t.problems.append("processes survived the kill of their parent: " + "; ".join(r.survivors))
        t.problems += [f"right after the crash: {p}" for p in w.check_crashed(d)]
        if t.recovery_kill is not None:
            runs = w.recover(d, kill_after=t.recovery_kill)
            t.problems += [f"killed recovery left survivors: {'; '.join(x.survivors)}" for x in runs if x.survivors]
            t.problems += [f"after the killed recovery: {p}" for p in w.check_crashed(d)]
        for x in w.recover(d):
            if x.survivors:
                t.problems.append("recovery left processes behind: " + "; ".join(x.survivors))
        t.problems += w.check_recovered(d)
    except AssertionError as e:  # a recovery command failed
        t.problems.append(f"recovery failed: {e}")
    except Exception as e:  # noqa: BLE001 - the harness reports, the test asserts
        t.problems.append(f"harness error: {e.__class__.__name__}: {e}")
    if t.problems:
        t.dir = d
    else:
        shutil.rmtree(d, ignore_errors=True)


def crash_trials(w: Workload, base: Path, *, seed_salt: str) -> CrashReport:
    """Build, trace the fault points, run every fault trial and TRIALS random kills."""
    template = base / "template"
    template.mkdir(parents=True)
    w.build(template)
    ref = base / "reference"
    args = w.prepare(ref)
    traced, points = trace_faults(args, cwd=ref)
    assert traced.returncode in (0, 1), f"reference run failed: {traced.describe()}"
    w.set_reference(ref)
    problems = w.check_recovered(ref)
    assert not problems, f"the uninterrupted reference run is already wrong: {problems}"
    # the fastest of three timing runs: one run slowed by a neighbour (a Ray runtime still
    # shutting down after an earlier test) put most kill times past the end of the run
    # (seen once: 45% of the kills landed, for 60% asked)
    timings = []
    for k in range(3):
        timing = base / f"timing-{k}"
        timings.append(run(w.prepare(timing), cwd=timing).seconds)
        shutil.rmtree(timing, ignore_errors=True)
    ref_seconds = min(timings)

    rng = random.Random(f"{SEED}-{seed_salt}")
    lo = startup_seconds() * 0.9
    hi = max(ref_seconds * 1.1, lo + 0.05)
    fault_trials = [Trial(f"fault-{spec}", fault=spec) for spec in fault_specs(points)]
    random_trials = []
    for i in range(TRIALS):
        recovery_kill = rng.uniform(lo, hi) if rng.random() < 0.25 else None
        random_trials.append(Trial(f"kill-{i:04d}", delay=rng.uniform(lo, hi), recovery_kill=recovery_kill))
    with ThreadPoolExecutor(JOBS) as pool:
        list(pool.map(lambda t: run_trial(w, base, t), fault_trials + random_trials))
    report = CrashReport(w, ref_seconds, points, fault_trials, random_trials)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps({
                "command": w.name, "fault_points": points, "fault_trials": len(fault_trials),
                "random_trials": len(random_trials),
                "failures": sum(bool(t.problems) for t in fault_trials + random_trials),
                "failed_trials": [t.id for t in fault_trials + random_trials if t.problems][:50],
                "random_kills_landed": sum(t.landed for t in random_trials),
                "reference_seconds": round(ref_seconds, 3), "seed": SEED,
            }) + "\n")
    return report


# ---------------------------------------------------------------- data


def chat_record(tag: str, i: int, size: int = 0) -> bytes:
    """One valid chat record (no newline), unique by (tag, i)."""
    return orjson.dumps({"messages": [
        {"role": "user", "content": f"{tag} {i} " + "q" * size},
        {"role": "assistant", "content": f"answer {tag} {i}"},
    ]})


def varied_chat_lines(tag: str, n: int, seed: int, max_len: int = 2500) -> list[bytes]:
    """Valid chat records with unicode, escapes and lengths from tiny to max_len chars."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice([1, 10, 100, rng.randint(1, max_len)])
        content = "".join(rng.choice('abcdé中 "\\\n\t😀') for _ in range(k))
        out.append(orjson.dumps({"messages": [{"role": "user", "content": f"{tag}-{i} {content}"},
                                              {"role": "assistant", "content": str(i)}]}))
    return out


INVALID_CHAT = [
    b'{"messages": [{"role": "bot", "content": "unknown role"}]}',
    b'{"messages": "not a list"}',
    b'{"prompt": "not chat at all"}',
    b'{"messages": [{"role": "user", "content": "truncated',
    b'{"messages": [{"role": "user", "content": "bad utf-8 \xff\xfe"}]}',
    b"not json at all",
    b'{"messages": [{"role": "user", "content": NaN}]}',
]


def nonblank_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(1-based line number, bytes without the newline) of every non-blank line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [(n, line) for n, line in enumerate(lines, 1) if line.strip()]


def records_of(path: Path) -> list[bytes]:
    """The non-blank lines of a (possibly gzip/zstd) JSONL file, each ending in b"\\n"."""
    from shardkit.core.blocks import BlockReader, nonblank_runs
    from shardkit.core.io import InputStream, inspect_input

    out = []
    with InputStream(inspect_input(str(path))) as stream:
        for block in BlockReader(stream):
            for r in nonblank_runs(block)[0]:
                out += bytes(memoryview(block.buf)[r.start:r.end]).splitlines(keepends=True)
    return [x if x.endswith(b"\n") else x + b"\n" for x in out]


def reject_raw(entry: dict) -> bytes:
    import base64

    return entry["raw"].encode() if "raw" in entry else base64.b64decode(entry["raw_b64"])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


SIDE_FILES = ("rejects", "duplicates", "excluded")  # records split keeps aside, with their bytes


def side_records(folder: Path, manifest: dict) -> list[tuple[str, dict]]:
    """(side, entry) for every record in the manifest's rejects/duplicates/excluded files."""
    out = []
    for side in SIDE_FILES:
        entry = manifest.get(side)
        if entry and (folder / entry["path"]).is_file():
            out += [(side, orjson.loads(x)) for x in (folder / entry["path"]).read_bytes().splitlines()]
    return out


def sums_problems(folder: Path, manifest: dict | None = None) -> list[str]:
    """SHA256SUMS parses as coreutils prints it and each line matches its file; with a
    manifest, it lists exactly the manifest's files (plus the rejects file)."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return [] if manifest is None else [f"{sums}: missing"]
    problems, names = [], []
    for line in sums.read_bytes().splitlines():
        parts = line.split(b"  ", 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            problems.append(f"{sums}: malformed line {line[:120]!r}")
            continue
        name = parts[1].decode("utf-8", "surrogateescape")
        names.append(name)
        p = folder / name
        if not p.is_file():
            problems.append(f"{sums}: lists {name!r}, which is missing")
        elif sha256(p) != parts[0].decode():
            problems.append(f"{sums}: {name!r} does not match its checksum")
    if manifest is not None:
        listed = [f["path"] for f in manifest["files"]]
        for side in SIDE_FILES:
            if (manifest.get(side) or {}).get("sha256"):
                listed.append(manifest[side]["path"])
        if sorted(names) != sorted(listed):
            problems.append(f"{sums}: lists {sorted(names)[:10]}, the manifest {sorted(listed)[:10]}")
    return problems


def hidden_leftovers(folder: Path) -> list[str]:
    """shardkit temp/partial files left in a folder."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".shardkit-tmp-", ".shardkit-partial-")))


# ---------------------------------------------------------------- snapshots (hostile paths)


@dataclass(frozen=True)
class Seen:
    kind: str
    size: int
    mtime_ns: int
    atime_ns: int
    mode: int
    sha256: str | None
    link: str | None


OLD_ATIME_NS = 1_000_000_000 * 10**9  # 2001-09-09: older than any mtime, so relatime updates it on a read


def snapshot(base: Path, exclude: Iterable[Path] = ()) -> dict[str, Seen]:
    """Every path under `base` but the excluded subtrees: kind, size, mtime, mode, sha256,
    symlink target. Regular files get an old atime afterwards, so a later read shows
    (relatime updates an atime older than the mtime)."""
    excluded = {Path(p).resolve() for p in exclude}
    out: dict[str, Seen] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dp = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (dp / d).resolve() not in excluded or (dp / d).is_symlink()]
        for name in [*dirnames, *filenames]:
            p = dp / name
            if p.resolve() in excluded and not p.is_symlink():
                continue
            st = p.lstat()
            digest = link = None
            if stat.S_ISLNK(st.st_mode):
                kind, link = "link", os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                kind = "file"
                if os.access(p, os.R_OK):
                    digest = sha256(p)
                os.utime(p, ns=(OLD_ATIME_NS, st.st_mtime_ns), follow_symlinks=False)
                st = p.lstat()
            elif stat.S_ISDIR(st.st_mode):
                kind = "dir"
            elif stat.S_ISFIFO(st.st_mode):
                kind = "fifo"
            else:
                kind = "other"
            out[str(p.relative_to(base))] = Seen(kind, st.st_size if kind == "file" else 0, st.st_mtime_ns if kind != "dir" else 0,
                                                 st.st_atime_ns if kind == "file" else 0, st.st_mode, digest, link)
    return out


def changed(before: dict[str, Seen], base: Path, exclude: Iterable[Path] = (), reads_allowed: Iterable[str] = ()) -> list[str]:
    """What differs from `before` (atime first: taking the new snapshot reads the files)."""
    allowed = set(reads_allowed)
    atimes = {}
    for rel, seen in before.items():
        p = base / rel
        if seen.kind == "file" and rel not in allowed:
            with contextlib.suppress(FileNotFoundError):
                atimes[rel] = p.lstat().st_atime_ns
    after = snapshot(base, exclude)
    problems = []
    for rel in sorted(set(before) | set(after)):
        b, a = before.get(rel), after.get(rel)
        if b is None:
            problems.append(f"created outside ROOT/OUT: {rel}")
        elif a is None:
            problems.append(f"removed or moved from outside ROOT/OUT: {rel}")
        elif without(b.__dict__, "atime_ns") != without(a.__dict__, "atime_ns"):
            problems.append(f"changed outside ROOT/OUT: {rel}: {b} -> {a}")
        elif rel in atimes and atimes[rel] != b.atime_ns:
            problems.append(f"read outside ROOT/OUT: {rel} (its atime moved)")
    return problems


def atime_works(folder: Path) -> bool:
    """Does reading a file here move its atime (not mounted noatime)? Checked, not assumed."""
    p = folder / ".atime-probe"
    p.write_bytes(b"x")
    st = p.stat()
    os.utime(p, ns=(OLD_ATIME_NS, st.st_mtime_ns))
    p.read_bytes()
    moved = p.stat().st_atime_ns != OLD_ATIME_NS
    p.unlink()
    return moved


# ---------------------------------------------------------------- privileges


def permissions_apply() -> tuple[Callable[[], None] | None, str | None]:
    """A preexec_fn under which file permissions bind the child, or (None, why not).

    As an ordinary user they always do. As root (containers, CI), the child drops
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding set before exec, so after
    exec it runs as a root that obeys mode bits (a chmod 000 file is unreadable to it)."""
    if os.geteuid() != 0:
        return (lambda: None), None
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2

    def drop() -> None:
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    probe = Path(tempfile.mkdtemp()) / "probe"
    try:
        probe.write_bytes(b"x")
        probe.chmod(0)
        r = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'rb')"], preexec_fn=drop, capture_output=True)
    except OSError as e:
        return None, f"running as root and cannot drop CAP_DAC_OVERRIDE ({e}); permissions do not apply"
    finally:
        probe.chmod(0o600)
        shutil.rmtree(probe.parent, ignore_errors=True)
    if r.returncode == 0:
        return None, "running as root and dropping CAP_DAC_OVERRIDE did not make a chmod 000 file unreadable"
    return drop, None


# ---------------------------------------------------------------- journal


def journal_lines(root: Path) -> list[dict]:
    """Every readable line of ROOT's journal, rotated files first (torn lines skipped)."""
    import gzip

    meta = root / ".shardkit"
    files = sorted(p for p in meta.glob("journal-*.jsonl*") if not p.name.startswith("."))
    out = []
    for p in [*files, meta / "journal.jsonl"]:
        if not p.exists():
            continue
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        for line in data.splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
    return out


def counter(items: Iterable) -> collections.Counter:
    return collections.Counter(items)


class Stopwatch:
    """A thread that runs `fn` in a loop until stopped; collects what went wrong."""

    def __init__(self, fn: Callable[[], str | None], pause: float = 0.0) -> None:
        self.fn, self.pause = fn, pause
        self.problems: list[str] = []
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            problem = self.fn()
            self.rounds += 1
            if problem:
                self.problems.append(problem)
            self._stop.wait(self.pause)

    def start(self) -> Stopwatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def summarize(report_path: str) -> str:
    """The RELIABILITY.md table from a SHARDKIT_TORTURE_REPORT file (last line per command)."""
    rows = {}
    with open(report_path) as f:
        for line in f:
            r = json.loads(line)
            rows[r["command"]] = r
    out = ["| command | fault points reached | fault trials | random SIGKILL trials (landed mid-run) | failed trials |",
           "|---|---|---|---|---|"]
    for name, r in rows.items():
        out.append(f"| `{name}` | {len(r['fault_points'])} | {r['fault_trials']} | {r['random_trials']} "
                   f"({r.get('random_kills_landed', '?')}) | {r['failures']} |")
    return "\n".join(out)


if __name__ == "__main__":  # python tests/reliability/torture.py REPORT.jsonl
    print(summarize(sys.argv[1]))
