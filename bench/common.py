"""Shared helpers for the shardkit benchmarks (split, validate, parquet, ...).

Datasets are cached under ``bench/data/`` (gitignored); results go to ``bench/results/``.
Peak RSS is ``ru_maxrss`` of the child (via GNU time, see ``measure``): on Linux it covers
the child and every descendant it reaped, as the maximum of any single process, not a sum
(a multi-process command is under-reported). For commands that start worker processes,
``measure(..., tree=True)`` also samples the whole process tree every 20 ms and records the
peak of the summed PSS (proportional set size: pages shared between a parent and its forked
workers counted once) as ``tree_pss_mb``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"


def _compile_package() -> None:
    """Byte-compile shardkit/ as `pip install` does for an installed package. An editable
    install writes no .pyc; where PYTHONDONTWRITEBYTECODE is set (as on this machine) every
    timed command would otherwise recompile each edited module, tens of ms of start-up a
    user never pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "shardkit"), quiet=1)


_compile_package()
GENERATOR = ROOT / "fixtures" / "generate.py"
GNU_TIME = shutil.which("time", path="/usr/bin:/bin") or None  # the program, not the builtin


class BenchError(RuntimeError):
    """A benchmarked command failed or produced unexpected output."""


@dataclass
class Measurement:
    """One timed run of a command."""

    elapsed_s: float
    peak_rss_mb: float  # MiB, from ru_maxrss (KiB on Linux)
    returncode: int
    rss_floor_mb: float = 0.0  # peak RSS inherited from this process (0 under GNU time)
    stderr: str = ""
    tree_pss_mb: float | None = None  # peak summed PSS of the process tree (tree=True)

    def raw(self) -> dict:
        """The numbers worth keeping in a result file."""
        d = asdict(self)
        d.pop("stderr")
        d["elapsed_s"] = round(d["elapsed_s"], 4)
        d["peak_rss_mb"] = round(d["peak_rss_mb"], 2)
        if d["tree_pss_mb"] is None:
            d.pop("tree_pss_mb")
        else:
            d["tree_pss_mb"] = round(d["tree_pss_mb"], 2)
        return d

    @property
    def memory_mb(self) -> float:
        """The honest peak: the process tree's summed PSS when sampled, else peak RSS."""
        return max(self.peak_rss_mb, self.tree_pss_mb or 0.0)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def tree_pss_mb(root: int) -> float:
    """Summed PSS of `root` and all its descendants, now (MiB)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss_kb(pid)
        todo += _children(pid)
    return total / 1024


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_pss_mb(self.pid))
            self.stop.wait(self.interval)


def measure(argv: Sequence[str], *, cwd: Path | None = None, check: bool = True, tree: bool = False) -> Measurement:
    """Run ``argv`` to completion with stdout discarded; return wall time and peak RSS.

    The child runs under GNU time (``/usr/bin/time -f %M``) when available: a child
    spawned straight from this process inherits this process's peak RSS as its
    ``ru_maxrss`` floor (vfork/fork + exec keep the old address space's high-water
    mark), so ``os.wait4`` alone would report e.g. 90 MB for ``true`` after the bench
    built a dataset in-process.  Without GNU time, wait4's number is used and
    ``Measurement.rss_floor_mb`` records that floor.  Raises ``BenchError`` with the
    stderr tail if ``check`` and the exit code is non-zero.
    """
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        wrap = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name] if GNU_TIME else []
        t0 = time.perf_counter()
        proc = subprocess.Popen([*wrap, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        sampler = _TreeSampler(proc.pid) if tree else None
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        if sampler:
            sampler.stop.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
        err.seek(0)
        stderr = err.read()[-4000:].decode(errors="replace")
        lines = rss.read().split()
    if GNU_TIME and lines and lines[-1].isdigit():
        peak, floor = int(lines[-1]) / 1024, 0.0
    else:
        peak, floor = (
            usage.ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    m = Measurement(elapsed, peak, proc.returncode, floor, stderr, sampler.peak if sampler else None)
    if check and m.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {m.returncode}:\n{stderr}")
    return m


def median(values: Iterable[float]) -> float:
    """Median of some numbers."""
    return statistics.median(list(values))


def warm(path: Path, chunk: int = 8 << 20) -> None:
    """Read ``path`` once, untimed, so it sits in the page cache for every contender."""
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


@contextlib.contextmanager
def fresh_dir(create: bool = False) -> Iterator[Path]:
    """Yield a new output path under ``bench/data/out/`` (same filesystem as the
    datasets); created only if ``create``; removed afterwards."""
    path = DATA / "out" / uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    if create:
        path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _load_generator():
    """Import fixtures/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("shardkit_fixture_generate", GENERATOR)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fingerprint(**parts: object) -> str:
    """Cache key: the generator's source plus the given parameters."""
    h = hashlib.sha256(GENERATOR.read_bytes())
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _cached(path: Path, key: str, build) -> Path:
    """Return ``path``, (re)building it with ``build(tmp_path)`` unless its
    ``.meta.json`` sidecar records the same key and size."""
    meta = path.with_name(path.name + ".meta.json")
    with contextlib.suppress(OSError, ValueError):
        m = json.loads(meta.read_text())
        if m["key"] == key and m["bytes"] == path.stat().st_size:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    t0 = time.perf_counter()
    build(tmp)
    tmp.replace(path)
    size = path.stat().st_size
    meta.write_text(json.dumps({"key": key, "bytes": size}))
    print(
        f"built {path.name}: {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return path


def dataset(records: int, seed: int = 1, users: bool = False) -> Path:
    """Path of a cached chat JSONL file of ``records`` records from fixtures/generate.py;
    `users`: shaped like real exports (a `meta` object on every record, about 1% invalid)."""
    path = DATA / f"chat-{'users-' if users else ''}{records}-s{seed}.jsonl"
    key = _fingerprint(records=records, seed=seed, **({"users": True} if users else {}))
    return _cached(path, key, lambda tmp: _load_generator().write_chat_jsonl(tmp, records, seed, users=users))


def doubled(src: Path) -> Path:
    """Path of a cached file holding ``src``'s content twice in a row."""

    def build(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for _ in range(2):
                with open(src, "rb") as f:
                    shutil.copyfileobj(f, out, 8 << 20)

    key = json.loads(src.with_name(src.name + ".meta.json").read_text())["key"] + "x2"
    return _cached(src.with_name(src.stem + "-x2" + src.suffix), key, build)


def converted(src: Path, form: str) -> Path:
    """Path of a cached copy of a chat file in another record kind, by fixtures/generate.py's
    `as_<form>`: "sharegpt" as LLaMA-Factory writes it (the system prompt as `system`, turns
    from human and gpt, unknown roles kept, the id, no `meta`), "alpaca" (first question and
    last answer, `meta` kept)."""

    def build(tmp: Path) -> None:
        convert = getattr(_load_generator(), f"as_{form}")
        with open(src, "rb") as f, open(tmp, "wb") as out:
            for line in f:
                out.write(orjson.dumps(convert(orjson.loads(line))) + b"\n")

    key = json.loads(src.with_name(src.name + ".meta.json").read_text())["key"] + form
    return _cached(src.with_name(f"{form}-" + src.name), key, build)


def _first_line(argv: Sequence[str]) -> str | None:
    """First output line of a command, or None if it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def machine_info() -> dict:
    """CPU, memory, OS, Python and tool versions, and the repo commit."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_mb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024  # MemTotal kB
    return {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_mb": mem_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "peak_rss_via": "GNU time %M" if GNU_TIME else "os.wait4 (floored by the bench's own peak)",
        "coreutils": _first_line(["split", "--version"]),
        "git_commit": _first_line(["git", "rev-parse", "HEAD"]),
    }


def write_result(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json`` with a timestamp and machine info first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return path


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [list(map(str, headers))] + [
        [f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def peer_args(doc: str, records: int, quick_records: int, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options every shardkit-against-a-peer bench takes: --runs, --records, --quick,
    --shardkit, --python (`records` is the record count to use, --quick included)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="timed runs per contender (default 3)")
    ap.add_argument("--records", type=int, default=records, help=f"records (default {records:,})")
    ap.add_argument("--quick", action="store_true", help=f"{quick_records:,} records, smoke test")
    ap.add_argument("--shardkit", default=str(ROOT / ".venv/bin/shardkit"), help="executable")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python"), help="interpreter for the peer")
    args = ap.parse_args(argv)
    if args.quick:
        args.records = quick_records
    return args


def timings(runs: dict[str, list]) -> tuple[dict[str, float], dict[str, float], dict]:
    """(median seconds, peak memory MB, the result fields) of each contender's runs."""
    med = {k: median(x["elapsed_s"] for x in v) for k, v in runs.items()}
    mem = {k: max(x["memory_mb"] for x in v) for k, v in runs.items()}
    fields = {"runs": runs, "median_s": {k: round(v, 4) for k, v in med.items()},
              "memory_mb": {k: round(v, 2) for k, v in mem.items()}}
    return med, mem, fields
