"""Object-store URLs (`s3://bucket/key`, any fsspec URL) for reading: inputs and verify.

Needs the optional extra `shardkit[s3]` (fsspec, s3fs); imported only when a URL is met.
Reading streams the object in `READ_BLOCK` ranges (memory does not grow with its size).
`file://` URLs are plain local paths and take the local code path. Publishing to a store
is `shardkit.store.remote`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator

from shardkit.core.errors import InputError, UsageError

READ_BLOCK = 8 << 20  # bytes fetched per range request while streaming an input
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: object) -> bool:
    """True for `s3://...`, `gs://...`, `memory://...`; False for local paths and `file://`."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.startswith("file://")


def local_path(path: str) -> str:
    """`file:///x/y` -> `/x/y`; anything else unchanged."""
    return path[len("file://"):] if isinstance(path, str) and path.startswith("file://") else path


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a clear error if the extra is missing."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{url}: object-store paths need the s3 extra: pip install 'shardkit[s3]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise UsageError(f"{url}: cannot open this kind of URL: {e}") from None
    return fs, path.rstrip("/")


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def store_error(e: BaseException, url: str) -> InputError:
    return InputError(f"{url}: {e.__class__.__name__}: {e}")


def info(url: str) -> dict | None:
    """The object's metadata (fresh, not cached), or None if there is none."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None


def read_head(url: str, n: int) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path, start=0, end=n)
    except FileNotFoundError:
        raise InputError(f"{url}: no such object") from None
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None


def open_read(url: str):
    """A sequential binary reader over the object, fetching `READ_BLOCK` at a time."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead")
    except FileNotFoundError:
        raise InputError(f"{url}: no such object") from None
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise InputError(f"{url}: no such object") from None
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None


def hash_object(url: str, on_data: Callable[[bytes], None] | None = None) -> tuple[int, str]:
    """(size, sha256) of an object, streamed."""
    h = hashlib.sha256()
    size = 0
    with open_read(url) as f:
        while chunk := f.read(READ_BLOCK):
            h.update(chunk)
            size += len(chunk)
            if on_data is not None:
                on_data(chunk)
    return size, h.hexdigest()


def list_names(url: str) -> list[str]:
    """Names of the objects directly under a prefix ([] if there are none)."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    try:
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise store_error(e, url) from None



def iter_objects(url: str) -> Iterator[str]:
    for name in list_names(url):
        yield join(url, name)
