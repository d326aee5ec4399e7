"""The manifest the trainer reads: every file with its records, bytes and sha256.

Written atomically, with a coreutils `SHA256SUMS` beside it, so `sha256sum -c SHA256SUMS`
checks a folder without shardkit. Paths are relative to the manifest's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shardkit import __version__
from shardkit.core import faults
from shardkit.core.blocks import BlockReader, nonblank_runs
from shardkit.core.errors import DataError, InputError, UsageError
from shardkit.core.io import InputSpec, InputStream, atomic_write, inspect_input
from shardkit.core.jsonarray import ARRAY_SUFFIXES, JsonArraySource, is_json_array

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
FORMAT_VERSION = 1
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tool_name() -> str:
    return f"shardkit {__version__}"


def dumps(manifest: dict) -> bytes:
    """Stable bytes: keys in the order the manifest was built, two-space indent."""
    return orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"


SIDE_FILES = ("rejects", "duplicates", "excluded", "near_duplicates", "contaminated")  # records set aside, with their bytes


def side_entries(manifest: dict) -> list[dict]:
    """The side files a manifest lists (rejects, duplicates, excluded) that have a sha256."""
    return [e for k in SIDE_FILES
            if isinstance(e := manifest.get(k), dict) and e.get("sha256") and not os.path.isabs(str(e.get("path")))]


def sums_text(manifest: dict) -> bytes:
    """coreutils format: '<sha256>  <path>' per line, shards then the side files."""
    entries = [*manifest.get("files", []), *side_entries(manifest)]
    return "".join(f"{e['sha256']}  {e['path']}\n" for e in entries).encode()


def write_manifest(path: Path, manifest: dict) -> None:
    """SHA256SUMS first, then the manifest: a complete manifest always has its sums beside it.

    If the manifest cannot be written (disk full) and none was there, an empty SHA256SUMS
    just written is removed again: `sha256sum -c` fails on an empty file."""
    sums = sums_text(manifest)
    atomic_write(path.parent / SUMS_NAME, sums)
    try:
        atomic_write(path, dumps(manifest))
    except BaseException:
        if not sums and not path.exists():
            with contextlib.suppress(OSError):
                os.unlink(path.parent / SUMS_NAME)
        raise
    faults.hit("after:manifest_write")


def read_manifest(path: Path) -> dict:
    """Load and sanity-check a manifest; errors name the file and the problem."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such manifest") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; give the manifest file ({MANIFEST_NAME})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    return parse_manifest(data, path)


def parse_manifest(data: bytes, path: Path | str) -> dict:
    """Check a manifest's bytes (`path` names it in errors)."""
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DataError(f"{path}: not a valid manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("shardkit_manifest") != FORMAT_VERSION:
        raise DataError(f"{path}: not a shardkit manifest (no \"shardkit_manifest\": {FORMAT_VERSION})")
    if not isinstance(manifest.get("files"), list):
        raise DataError(f"{path}: manifest has no \"files\" list")
    return manifest


@dataclass(frozen=True, slots=True)
class FileStats:
    bytes: int
    sha256: str
    records: int
    blank: int


_SNIFF = "sniff"


def scan_file(path: Path, compression: str | None = _SNIFF) -> FileStats:
    """sha256 of the bytes on disk, and the records (non-blank lines) inside, in one read.

    `compression` is what the manifest declares (None, "gzip", "zstd"); only when it is not
    known is it sniffed from the content — a plain shard whose first record happens to
    start with gzip's magic bytes is still plain."""
    if path.suffix == ".parquet":
        return _scan_parquet(path)
    spec = inspect_input(str(path))
    if compression != _SNIFF:
        spec = InputSpec(spec.path, spec.display, spec.size, compression)
    return _scan_spec(spec)


def _scan_spec(spec: InputSpec) -> FileStats:
    if not spec.is_stdin and spec.path.lower().endswith(ARRAY_SUFFIXES):
        with InputStream(spec) as stream:
            head = stream.read(4096)
        if is_json_array(spec.path, head):
            with contextlib.suppress(DataError):  # a malformed array: counted as lines, as a drop
                return _scan_array(spec)
    return _scan_lines(spec)


def _scan_array(spec: InputSpec) -> FileStats:
    """A file holding one JSON array: its records are the array's elements, as split,
    validate and stats read them (not its lines)."""
    h = hashlib.sha256()
    with InputStream(spec, on_raw=h.update) as stream:
        records = sum(1 for _ in JsonArraySource(stream))
        while stream.read(1 << 20):  # hash to the last byte
            pass
    return FileStats(stream.raw_bytes, h.hexdigest(), records, 0)


def _scan_lines(spec: InputSpec) -> FileStats:
    h = hashlib.sha256()
    records = blank = 0
    with InputStream(spec, on_raw=h.update) as stream:
        for block in BlockReader(stream):
            runs, trailing = nonblank_runs(block)
            records += sum(r.lines for r in runs)
            blank += trailing + sum(r.blanks_before for r in runs)
    return FileStats(stream.raw_bytes, h.hexdigest(), records, blank)


def _scan_parquet(path: Path) -> FileStats:
    import pyarrow as pa
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except pa.ArrowInvalid as e:  # a .parquet name on something else
        raise DataError(f"{path}: named .parquet but not a Parquet file ({e})") from None
    return FileStats(size, h.hexdigest(), rows, 0)


# ---------------------------------------------------------------- verify


@dataclass(slots=True)
class VerifyResult:
    manifest: Path
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # files beside it that it does not list
    complete: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "manifest": str(self.manifest),
            "ok": self.ok,
            "complete": self.complete,
            "checked": self.checked,
            "problems": self.problems,
            "not_in_manifest": self.extra,
        }


def verify(path: Path | str) -> VerifyResult:
    """Recompute size, sha256 and record count of every file the manifest lists.

    `path` may be an object-store URL (of the manifest or of its prefix)."""
    from shardkit.core import objects

    if objects.is_url(path):
        return _verify_url(str(path))
    path = Path(objects.local_path(str(path)))
    if path.is_dir():
        path = path / MANIFEST_NAME
    base = path.parent
    return _verify(path, read_manifest(path), lambda entry: _check_entry(base, entry),
                   lambda: [p.name for p in _data_files(base)])


def _verify(where, manifest: dict, check, names) -> VerifyResult:
    """Check every entry with `check(entry) -> problem or None`; `names()` lists the data
    files beside the manifest (to report the ones it does not list)."""
    result = VerifyResult(where, complete=bool(manifest.get("complete", True)))
    if not result.complete:
        result.problems.append(f"{where}: incomplete (an interrupted run); rerun the split with --resume")
    entries = [*manifest["files"], *side_entries(manifest)]
    for entry in entries:
        result.checked += 1
        problem = check(entry)
        if problem:
            result.problems.append(problem)
    listed = {e["path"] for e in entries}
    result.extra = [n for n in names() if n not in listed]
    return result


def _check_entry(base: Path, entry: dict) -> str | None:
    rel = entry.get("path")
    if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
        return f"{rel!r}: unsafe path in manifest"
    target = base / rel
    try:
        size = target.stat().st_size
    except FileNotFoundError:
        return f"{rel}: missing"
    except OSError as e:
        return f"{rel}: cannot read: {e.strerror}"
    if size != entry.get("bytes"):
        return f"{rel}: size {size} bytes, manifest says {entry.get('bytes')}"
    try:
        stats = scan_file(target, entry.get("compression"))
    except InputError as e:
        return str(e)
    if stats.sha256 != entry.get("sha256"):
        return f"{rel}: sha256 mismatch (manifest {str(entry.get('sha256'))[:12]}…, file {stats.sha256[:12]}…)"
    if "records" in entry and stats.records != entry["records"]:
        return f"{rel}: {stats.records} records, manifest says {entry['records']}"
    if entry.get("compression") is None and cut_short(target):
        return f"{rel}: the last line is not a complete record (no newline at the end)"
    return None


def _verify_url(url: str) -> VerifyResult:
    from shardkit.core import objects

    if not url.endswith(".json"):
        url = objects.join(url, MANIFEST_NAME)
    base = url.rsplit("/", 1)[0]
    return _verify(url, parse_manifest(objects.read_bytes(url), url), lambda entry: _check_remote_entry(base, entry),
                   lambda: [n for n in objects.list_names(base) if not n.startswith(".") and n.endswith(DATA_SUFFIXES)])


def _check_remote_entry(base: str, entry: dict) -> str | None:
    from shardkit.core import objects

    rel = entry.get("path")
    if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
        return f"{rel!r}: unsafe path in manifest"
    url = objects.join(base, rel)
    meta = objects.info(url)
    if meta is None:
        return f"{rel}: missing"
    if meta.get("size") != entry.get("bytes"):
        return f"{rel}: size {meta.get('size')} bytes, manifest says {entry.get('bytes')}"
    try:
        if rel.endswith(".parquet"):
            import pyarrow.parquet as pq

            size, sha = objects.hash_object(url)
            with objects.open_read(url) as f:
                records = pq.ParquetFile(f).metadata.num_rows
        else:
            stats = _scan_spec(InputSpec(url, url, meta.get("size"), entry.get("compression"), remote=True))
            sha, records = stats.sha256, stats.records
    except (InputError, DataError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a corrupt Parquet object is a mismatch, not a crash
        return f"{rel}: unreadable: {e.__class__.__name__}: {e}"
    if sha != entry.get("sha256"):
        return f"{rel}: sha256 mismatch (manifest {str(entry.get('sha256'))[:12]}…, object {sha[:12]}…)"
    if "records" in entry and records != entry["records"]:
        return f"{rel}: {records} records, manifest says {entry['records']}"
    return None


def _data_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(DATA_SUFFIXES)
    )


# ---------------------------------------------------------------- regenerate


class FolderChanged(DataError):
    """A shards folder no longer matches its manifest; nothing was rewritten."""


def regenerate(directory: Path, out: Path | None = None, *, accept_changes: bool = False) -> dict:
    """Rebuild a shards manifest from the files on disk and write it (with SHA256SUMS).

    Entries of an existing manifest whose file is unchanged keep their lineage
    (source, first_line, last_line). A folder that differs from its manifest (a file
    changed, missing or not listed; a JSONL file whose last line is not a complete record)
    raises FolderChanged naming every difference, and nothing is rewritten, unless
    `accept_changes`: then new files are appended in name order and gone ones dropped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    out = Path(out) if out else directory / MANIFEST_NAME
    if out.is_dir():
        out = out / MANIFEST_NAME
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such directory")
    old = _read_if_exists(directory / MANIFEST_NAME)
    old_entries = {e.get("path"): e for e in (old or {}).get("files", [])}
    rejects = (old or {}).get("rejects")
    rejects_name = rejects.get("path") if rejects else None
    files = [p for p in _data_files(directory) if p.name != rejects_name]
    ordered = [directory / e for e in old_entries if (directory / e) in set(files)]
    ordered += [p for p in files if p not in set(ordered)]
    entries = []
    differences: list[str] = []
    for p in ordered:
        stats = scan_file(p, _compression_of(p))
        rel = os.path.relpath(p, out.parent)
        entry = {
            "path": rel,
            "format": "parquet" if p.suffix == ".parquet" else "jsonl",
            "compression": _compression_of(p),
            "records": stats.records,
            "bytes": stats.bytes,
            "sha256": stats.sha256,
        }
        prior = old_entries.get(p.name)
        if prior and prior.get("sha256") == stats.sha256:
            entry = {**prior, **entry}
        else:
            if prior:
                differences.append(f"{p.name} changed ({_change(prior, stats)})")
            elif old is not None:
                differences.append(f"{p.name} is not in the manifest")
            if cut_short(p):  # never described as it is without a word (verify names it too)
                differences.append(f"{p.name}: the last line is not a complete record (no newline at the end)")
        entries.append(entry)
    differences += [f"{name} is missing" for name in old_entries if isinstance(name, str) and not (directory / name).exists()]
    if differences and not accept_changes:
        raise FolderChanged(
            f"{directory}: differs from its manifest: {'; '.join(differences)}. Nothing was rewritten; "
            "check the files (shardkit verify), or give --accept-changes to describe them as they are now"
        )
    manifest = {
        "shardkit_manifest": FORMAT_VERSION,
        "type": "shards",
        "complete": True,
        "created_at": now_iso(),
        "tool": tool_name(),
        "params": (old or {}).get("params", {}),
        "sources": (old or {}).get("sources", []),
        "files": entries,
        "rejects": rejects,
        "totals": totals(entries),
    }
    if "counts" in (old or {}):
        manifest["counts"] = old["counts"]
    write_manifest(out, manifest)
    return manifest


def _change(prior: dict, stats: FileStats) -> str:
    if prior.get("bytes") != stats.bytes:
        return f"{prior.get('bytes')} -> {stats.bytes} bytes"
    return "same size, other sha256"


def cut_short(p: Path) -> bool:
    """A plain JSONL file whose last byte is not a newline: its last record was cut."""
    if p.suffix != ".jsonl" and not p.name.endswith(".ndjson"):
        return False
    with open(p, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _read_if_exists(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return read_manifest(path)
    except DataError:
        return None


def _compression_of(p: Path) -> str | None:
    return {".gz": "gzip", ".zst": "zstd"}.get(p.suffix)


def totals(entries: list[dict]) -> dict:
    return {
        "files": len(entries),
        "records": sum(e["records"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries),
    }


def check_rel_name(name: str) -> str:
    """A file name for inside OUT: no folders, no '..', not hidden, nothing sha256sum escapes."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"invalid file name {name!r}: must be a plain name inside the output folder")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise UsageError(f"invalid file name {name!r}: control characters are not allowed")
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise UsageError(f"invalid file name {name[:40]!r}...: longer than 255 bytes")
    return name
