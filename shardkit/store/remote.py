"""Publishing to an object store (`s3://bucket/key`, and any other fsspec URL); reading is
`shardkit.core.objects`.

Needs the optional extra `shardkit[s3]` (fsspec, s3fs); imported only when a URL is met.

Reading streams the object in `READ_BLOCK` ranges (memory does not grow with its size).
Writing keeps the local guarantees with the store's own atomicity instead of rename:

* a split into a URL runs into a local staging folder first (resumable like any split);
* each file is then uploaded as a multipart upload that is *completed* only after its last
  byte was sent (`autocommit=False`, then `commit()`); a failure or a kill before that leaves
  no object under the final key, only an incomplete upload the store never shows;
* new keys are written with `If-None-Match: *` (fsspec mode "xb"), the store's "rename
  without replacing": another writer's object is never overwritten silently;
* `manifest.json` goes last, so a reader who sees the manifest sees every file it lists.

`file://` URLs are plain local paths and take the local code path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from shardkit.core import faults
from shardkit.core.errors import ConflictError, DataError
from shardkit.core.objects import (
    filesystem,
    hash_object,
    info,
    join,
    list_names,
    read_bytes,
    store_error,
)

PART_SIZE = 8 << 20  # multipart upload part size (S3's minimum is 5 MiB)


def upload(local: Path, url: str) -> None:
    """Copy a local file to a new object at `url`, which appears complete or not at all.

    Parts are sent as they are read (bounded memory); the upload is completed only after
    the last part. Any error, Ctrl-C included, aborts it: no object under `url`. An object
    already there makes the store refuse (If-None-Match: *): nothing is ever replaced."""
    fs, path = filesystem(url)
    with _never_replacing(url):
        if os.path.getsize(local) == 0:
            # one PUT with the same condition (s3fs's file writer would `touch` it)
            try:
                fs.pipe_file(path, b"", mode="create")
            except TypeError:  # a filesystem whose pipe_file has no mode
                if info(url) is not None:
                    raise FileExistsError(url) from None
                fs.pipe_file(path, b"")
        else:
            f = fs.open(path, "xb", block_size=PART_SIZE, autocommit=False)
            committed = False
            try:
                with open(local, "rb") as src:
                    while chunk := src.read(PART_SIZE):
                        f.write(chunk)
                        faults.hit("after:upload_part")
                f.close()  # sends what is buffered; with autocommit=False the object is not created yet
                faults.hit("before:upload_commit")
                f.commit()
                committed = True
            finally:
                if not committed:
                    _discard(f)
    fs.invalidate_cache(path)


@contextlib.contextmanager
def _never_replacing(url: str) -> Iterator[None]:
    """Store errors as shardkit errors; the store's "it exists" (at open, or If-None-Match
    failing at completion because another writer got there first) as a conflict."""
    try:
        yield
    except FileExistsError:
        raise ConflictError(f"{url}: already exists (another writer?); not replaced") from None
    except (OSError, ValueError) as e:
        if _precondition_failed(e):
            raise ConflictError(f"{url}: already exists (another writer?); not replaced") from None
        raise store_error(e, url) from None


def _precondition_failed(e: BaseException) -> bool:
    text = str(e)
    return "PreconditionFailed" in text or "412" in text or "pre-conditions" in text


def _discard(f) -> None:
    """Abort a multipart upload; never let the file's close() commit it later."""
    try:
        f.discard()
    except Exception:  # noqa: BLE001 - the store drops incomplete uploads by lifecycle rule anyway
        pass
    f.closed = True


def delete(url: str) -> None:
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None
    fs.invalidate_cache(path)


# ---------------------------------------------------------------- staging + publish


def staging_dir(url: str, staging: str | os.PathLike | None = None) -> Path:
    """Where a split into `url` is prepared: `staging` if given, else `$SHARDKIT_STAGING`,
    else a folder under the system temp dir named after the URL (so --resume finds it)."""
    if staging is not None:
        return Path(staging)
    base = os.environ.get("SHARDKIT_STAGING") or os.path.join(tempfile.gettempdir(), f"shardkit-staging-{os.getuid()}")
    return Path(base) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


REPLACING = ".shardkit-replacing.json"  # in the staging folder: the manifest an --overwrite is deleting


def check_destination(url: str, stage: Path, *, resume: bool, overwrite: bool) -> dict | None:
    """The rules of a local OUT, applied to a prefix: returns the manifest of the run there
    (or, for an --overwrite interrupted while deleting, the one it was deleting).

    A prefix holding objects but no manifest is refused, except with --resume (an
    interrupted publish of ours: each object is kept only if its sha256 is the one staged)
    or an --overwrite that was interrupted while deleting the run it replaces."""
    from shardkit.store.manifest import MANIFEST_NAME, parse_manifest

    mpath = join(url, MANIFEST_NAME)
    if info(mpath) is not None:
        old = parse_manifest(read_bytes(mpath), mpath)
        if not (resume or overwrite):
            raise ConflictError(
                f"{url}: already holds a shardkit run ({MANIFEST_NAME}); use --resume to keep it, "
                "or --overwrite to replace the files it lists"
            )
        return old
    replacing = stage / REPLACING
    if overwrite and replacing.exists():
        return parse_manifest(replacing.read_bytes(), replacing)
    names = list_names(url)
    if names and not resume:
        raise ConflictError(
            f"{url}: not empty and holds no shardkit manifest ({len(names)} object(s), e.g. {names[0]}); "
            "choose an empty prefix" + ("" if overwrite else ", or --resume an interrupted upload")
        )
    return None


def replace_run(url: str, stage: Path, old: dict) -> None:
    """--overwrite: note what is being deleted (so a rerun can finish), then delete it."""
    from shardkit.core.io import atomic_write
    from shardkit.store.manifest import dumps

    stage.mkdir(parents=True, exist_ok=True)
    atomic_write(stage / REPLACING, dumps(old))
    remove_listed(url, old)


def remove_listed(url: str, old: dict) -> list[str]:
    """--overwrite: delete the manifest first (readers stop trusting the set), then its files."""
    from shardkit.store.manifest import MANIFEST_NAME, SUMS_NAME, check_rel_name, side_entries

    delete(join(url, MANIFEST_NAME))
    removed = []
    for entry in [*old.get("files", []), *side_entries(old)]:
        name = entry.get("path")
        if isinstance(name, str):
            delete(join(url, check_rel_name(name)))
            removed.append(name)
    delete(join(url, SUMS_NAME))
    return removed


def publish(local_dir: Path, url: str, *, progress: Callable[[int], None] | None = None) -> list[str]:
    """Upload a finished local run (files, side files, SHA256SUMS, then manifest.json).

    An object already under a file's key is kept only if its sha256 is the manifest's (an
    interrupted publish being finished); any other object there is a conflict: never
    replaced (--overwrite deleted the old run's own objects before this). Returns the
    names uploaded."""
    from shardkit.store.manifest import MANIFEST_NAME, SUMS_NAME, read_manifest, side_entries

    manifest = read_manifest(local_dir / MANIFEST_NAME)
    if not manifest.get("complete"):
        raise DataError(f"{local_dir / MANIFEST_NAME}: the staged run is incomplete; rerun with --resume")
    uploaded = []
    entries = [*manifest["files"], *side_entries(manifest)]
    sums = local_dir / SUMS_NAME
    if sums.exists():
        from shardkit.core.io import sha256_file

        entries.append({"path": SUMS_NAME, "bytes": sums.stat().st_size, "sha256": sha256_file(sums)})
    for entry in entries:
        name = entry["path"]
        target = join(url, name)
        present = info(target)
        if present is not None:
            if present.get("size") == entry["bytes"] and hash_object(target)[1] == entry["sha256"]:
                continue  # the same bytes: uploaded by the interrupted run we finish
            raise ConflictError(f"{target}: exists with other content (not this run's); not replaced")
        upload(local_dir / name, target)
        uploaded.append(name)
        if progress:
            progress(entry["bytes"])
        faults.hit("after:upload_file")
    mtarget = join(url, MANIFEST_NAME)
    upload(local_dir / MANIFEST_NAME, mtarget)
    uploaded.append(MANIFEST_NAME)
    return uploaded


def remove_staging(local_dir: Path, manifest: dict) -> None:
    """After a publish: delete exactly the staged files the manifest lists, then the folder."""
    from shardkit.store.manifest import MANIFEST_NAME, SUMS_NAME, side_entries

    for entry in [*manifest.get("files", []), *side_entries(manifest)]:
        (local_dir / entry["path"]).unlink(missing_ok=True)
    (local_dir / SUMS_NAME).unlink(missing_ok=True)
    (local_dir / MANIFEST_NAME).unlink(missing_ok=True)
    (local_dir / REPLACING).unlink(missing_ok=True)
    try:
        local_dir.rmdir()
    except OSError:
        pass  # something else is in there: leave it
