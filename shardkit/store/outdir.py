"""A run's output folder (OUT): the rules every split driver applies before it writes.

One copy of each rule, whichever executor runs the plan:
- an OUT without a manifest holds nothing but shardkit's hidden files (`refuse_foreign_files`);
- `--resume` continues only the same inputs and options (`check_same_run`);
- `--overwrite` deletes exactly the files the old manifest lists (`remove_listed`), never an
  input of the new run (`refuse_deleting_inputs`), and the scratch of an interrupted engine
  run (`remove_part_files`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from shardkit.core.errors import ConflictError, ShardkitError
from shardkit.core.io import InputSpec, env_error, fsync_dir
from shardkit.store.manifest import (
    MANIFEST_NAME,
    SIDE_FILES,
    SUMS_NAME,
    check_rel_name,
    read_manifest,
)

PARTS_DIR = ".shardkit-parts"  # an engine run's per-task scratch folders, inside OUT


def rejects_outside(rejects: str) -> bool:
    """--rejects PATH (anything with a folder in it) goes where it says; a bare NAME goes in OUT."""
    return "/" in rejects or os.sep in rejects


def unlink_if_exists(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def refuse_foreign_files(out: Path) -> None:
    """An OUT with no manifest must hold nothing but shardkit's hidden files. An empty
    SHA256SUMS is what a run killed between its first two writes leaves (the sums go
    first, listing no shard yet): ours, and replaced on the next write."""
    others = [
        p.name for p in out.iterdir()
        if not p.name.startswith(".") and not (p.name == SUMS_NAME and p.is_file() and p.stat().st_size == 0)
    ]
    if others:
        raise ConflictError(
            f"{out}: not empty and holds no shardkit manifest ({len(others)} other file(s), "
            f"e.g. {others[0]}); choose an empty or new output folder"
        )


def listed_names(old: dict) -> list[str]:
    """Every file an old manifest lists: shards, then side files (rejects, duplicates, ...)."""
    names = [f.get("path") for f in old.get("files", []) if isinstance(f, dict)]
    names += [e.get("path") for k in SIDE_FILES if isinstance(e := old.get(k), dict)]
    return [n for n in names if isinstance(n, str) and not os.path.isabs(n)]  # never a file outside OUT


def refuse_deleting_inputs(out: Path, old: dict, specs: Sequence[InputSpec]) -> None:
    """--overwrite deletes the files the old manifest lists: never one this run reads."""
    doomed = set()
    for name in listed_names(old):
        with contextlib.suppress(OSError, ValueError, ShardkitError):
            st = (out / check_rel_name(name)).stat()
            doomed.add((st.st_dev, st.st_ino))
    for spec in specs:
        if spec.is_stdin or spec.remote:
            continue
        with contextlib.suppress(OSError):
            st = os.stat(spec.path)
            if (st.st_dev, st.st_ino) in doomed:
                raise ConflictError(
                    f"{spec.display}: is a file of the run in {out} that --overwrite would delete; "
                    "copy it out of that folder first, or write to another folder"
                )


def remove_listed(out: Path, old: dict) -> None:
    """--overwrite: delete exactly the files the old manifest lists, then the sums and it."""
    for name in listed_names(old):
        unlink_if_exists(out / check_rel_name(name))
    unlink_if_exists(out / SUMS_NAME)
    unlink_if_exists(out / MANIFEST_NAME)
    fsync_dir(out)


def check_same_run(where, old: dict, params: dict, sources: list[str]) -> None:
    """--resume: the run in `where` must have been made from these inputs and options."""
    old_params = old.get("params", {})
    if old_params != params:
        changed = sorted(k for k in params.keys() | old_params.keys() if old_params.get(k) != params.get(k))
        raise ConflictError(
            f"{where}: cannot resume: options differ from the interrupted run ({', '.join(changed) or 'params'}); "
            "rerun with the same options, or use --overwrite"
        )
    old_paths = [s.get("path") for s in old.get("sources", [])]
    if old_paths != sources:
        raise ConflictError(f"{where}: cannot resume: inputs differ from the interrupted run ({old_paths} vs {sources})")


def check_same_sizes(where, old: dict, specs: Sequence[InputSpec]) -> None:
    """--resume: every input still has the size the interrupted run recorded."""
    for s, spec in zip(old["sources"], specs, strict=True):
        if spec.size is not None and s.get("bytes") not in (None, spec.size):
            raise ConflictError(f"{where}: cannot resume: {spec.display} changed size since the interrupted run")


def remove_parts(parts: Path) -> None:
    """The parts folder is shardkit's own scratch space (hidden, inside OUT)."""
    shutil.rmtree(parts, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(parts.parent)


def remove_part_files(out: Path, parts: Path, rejects: str) -> None:
    """--overwrite of an interrupted engine run: the shards its parts list (some may have
    been moved into OUT already), the rejects, then the parts themselves."""
    if not parts.exists():
        return
    for pm in sorted(parts.glob(f"*/{MANIFEST_NAME}")):
        try:
            m = read_manifest(pm)
        except ShardkitError:
            continue
        for entry in m.get("files", []):
            name = entry.get("path")
            if isinstance(name, str) and "/" not in name and not name.startswith("."):
                (out / name).unlink(missing_ok=True)
    if not rejects_outside(rejects):  # never a --rejects PATH outside OUT
        (out / rejects).unlink(missing_ok=True)
    (out / SUMS_NAME).unlink(missing_ok=True)
    remove_parts(parts)


def prepare(out: Path, specs: Sequence[InputSpec], *, resume: bool, overwrite: bool, dry_run: bool, rejects: str,
            same_run: Callable[[dict], None], clean: Callable[[], list[str]],
            lock: Callable[[], None] = lambda: None) -> tuple[dict | None, list[str]]:
    """Apply OUT's rules before a run writes anything; every split driver calls this.

    OUT must be a folder, new or empty but for shardkit's hidden files, unless it holds a
    run: then `resume` continues it (`same_run(old)` checks inputs and options) and
    `overwrite` deletes exactly the files its manifest lists. `lock()` is called once OUT
    exists, before anything in it is looked at; `clean()` removes what a killed run left
    under hidden names and returns their names. Returns (the old manifest to resume from,
    or None; the names cleaned)."""
    if out.exists() and not out.is_dir():
        raise ConflictError(f"{out}: exists and is not a directory")
    if not out.exists():
        if not dry_run:
            try:
                out.mkdir(parents=True)
            except OSError as e:
                raise env_error(e, out) from None
            lock()
        return None, []
    if not dry_run:
        lock()
    if (out / PARTS_DIR).exists():
        if not overwrite:
            raise ConflictError(f"{out}: holds an interrupted --engine run ({PARTS_DIR}); continue it with "
                                "the same --engine and --resume, or start again with --overwrite")
        if not dry_run:
            remove_part_files(out, out / PARTS_DIR, rejects)
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.exists():
        refuse_foreign_files(out)
        return None, [] if dry_run else clean()
    old = read_manifest(manifest_path)
    if overwrite:
        refuse_deleting_inputs(out, old, specs)
        if dry_run:
            return None, []
        remove_listed(out, old)
        return None, clean()
    if not resume:
        state = "a complete" if old.get("complete") else "an interrupted"
        raise ConflictError(
            f"{out}: already holds {state} shardkit run ({MANIFEST_NAME}); "
            "use --resume to continue it, or --overwrite to replace the files it lists"
        )
    same_run(old)
    return old, []
