"""Errors shardkit raises. Each carries the process exit code the CLI maps it to (DESIGN.md §3)."""

from __future__ import annotations


class ShardkitError(Exception):
    """Base class: the data is bad (exit 1)."""

    exit_code = 1


class DataError(ShardkitError):
    """The data is bad: invalid records beyond the limit, checksum mismatch, oversize record."""

    exit_code = 1


class UsageError(ShardkitError):
    """Flags or arguments that cannot work together."""

    exit_code = 2


class InputError(ShardkitError):
    """Input missing, unreadable, or an environment problem (permission, disk full)."""

    exit_code = 3


class ConflictError(ShardkitError):
    """Existing output, a name already taken, a lock held, an illegal transition."""

    exit_code = 4


class Interrupted(ShardkitError):
    """Ctrl-C or SIGTERM: the run stopped; nothing partial was left under a final name."""

    exit_code = 130
