"""Queue settings: defaults < ROOT/shardkit.toml < SHARDKIT_* environment < flags.

`shardkit.toml` holds flat top-level keys (no [queue] table), the Settings field names:

    max_records = 50_000        # split drops over this many records (unset: no limit)
    max_bytes = "64MB"          # ... or over this size (io.parse_size: 64MB, 64MiB, 1G, 4096B; an integer is bytes)
    kind = "chat"               # auto | chat | prompt-completion | alpaca | sharegpt | text | SCHEMA.json
    max_errors = 0              # invalid records tolerated before the file is quarantined
    on_invalid = "quarantine"   # or "strip": good records go on, bad ones to quarantine
    max_reject_ratio = 0.5      # more invalid than this share: the whole drop is quarantined, even with strip
    max_tokens = 8192           # needs tokenizer
    tokenizer = "models/Qwen3-0.6B"
    settle = "10s"              # durations: 90, 10s, 15m, 2h, 7d, 1h30m (a number is seconds)
    stale_after = "15m"
    max_attempts = 3
    keep_completed = 1000
    completed_max_age = "7d"
    disk_reserve = "20GB"       # unset: 1.5 x the largest shard an operation would write
    priority = "normal"         # high | normal | low, for ingest

The environment overrides a key with SHARDKIT_<KEY> (SHARDKIT_MAX_RECORDS=50000); an empty
variable counts as not set. Flags come last as `overrides` (None: flag not given). In the
file, the environment or a flag, the word "none" unsets a key that may be unset
(SHARDKIT_MAX_RECORDS=none). Relative paths in the file (tokenizer, a kind that is a schema)
are relative to ROOT; from the environment or a flag, relative to the current folder.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from shardkit.core.errors import UsageError
from shardkit.core.io import env_error, parse_size
from shardkit.records.validate import KINDS

SETTINGS_FILE = "shardkit.toml"
ENV_PREFIX = "SHARDKIT_"
ROOT_ENV = "SHARDKIT_ROOT"
PRIORITIES = ("high", "normal", "low")
ON_INVALID = ("quarantine", "strip")
RESERVE_FACTOR = 1.5

# ---------------------------------------------------------------- durations

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str | int | float) -> float:
    """Seconds from `90`, `90s`, `15m`, `2h`, `7d`, `1w`, `500ms` or `1h30m`; never negative."""
    if isinstance(text, bool):
        raise UsageError(f"invalid duration {text!r} (use e.g. 90, 10s, 15m, 2h, 7d)")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = str(text).strip()
        if _NUMBER.fullmatch(s):
            seconds = float(s)
        else:
            parts = _DURATION_PART.findall(s)
            if not parts or "".join(_DURATION_PART.sub("#", s).split()) != "#" * len(parts):
                raise UsageError(f"invalid duration {text!r} (use e.g. 90, 10s, 15m, 2h, 7d)")
            seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"invalid duration {text!r}: must be a finite number of seconds >= 0")
    return seconds


# ---------------------------------------------------------------- value parsers
# Each takes a value from TOML (typed), the environment or a flag (strings, or typed from a
# CLI) and returns the canonical value, or raises _Bad(what was expected).


class _Bad(Exception):
    pass


def _int(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"\d+", value.strip(), re.ASCII):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _Bad("a whole number" + (" >= 1" if minimum == 1 else " >= 0"))
        return value

    return parse


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad("a size such as 64MB, 64MiB, 1G, 4096B or a TOML integer of bytes")
    try:
        return parse_size(value)
    except UsageError as e:
        hint = str(e).split(": ", 1)[1] if "has no unit" in str(e) else None
        raise _Bad(f"a size such as 64MB, 64MiB, 1G, 4096B or a TOML integer of bytes{f' ({hint})' if hint else ''}") from None


def _reserve(value: Any) -> int:
    if value == 0 or (isinstance(value, str) and value.strip() == "0"):
        return 0  # no reserve: the check is off
    return _size(value)


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except UsageError:
        raise _Bad("a duration such as 90, 10s, 15m, 2h or 7d") from None


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            hint = _did_you_mean(str(value), options)
            raise _Bad(f"one of {', '.join(options)}{hint}")
        return value

    return parse


def _kind(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad("auto, a record kind or a JSON Schema file")
    if value == "auto" or value in KINDS or value.endswith(".json") or os.sep in value:
        return value
    raise _Bad(f"auto, one of {', '.join(KINDS)}, or a JSON Schema file (.json){_did_you_mean(value, ('auto', *KINDS))}")


def _text(value: Any) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _Bad("a path")
    return value


def _ratio(value: Any) -> float:
    try:
        ratio = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
    except ValueError:
        ratio = None
    if ratio is None or not 0 <= ratio <= 1:
        raise _Bad("a fraction from 0 to 1, such as 0.5")
    return ratio


# key -> (parser, may be None)
_FIELDS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "max_records": (_int(1), True),
    "max_bytes": (_size, True),
    "kind": (_kind, False),
    "max_errors": (_int(0), False),
    "on_invalid": (_choice(ON_INVALID), False),
    "max_reject_ratio": (_ratio, True),
    "max_tokens": (_int(1), True),
    "tokenizer": (_text, True),
    "settle": (_duration, False),
    "stale_after": (_duration, False),
    "max_attempts": (_int(1), False),
    "keep_completed": (_int(0), True),
    "completed_max_age": (_duration, True),
    "disk_reserve": (_reserve, True),
    "priority": (_choice(PRIORITIES), False),
}
_PATH_KEYS = ("tokenizer", "kind")  # relative to ROOT when they come from shardkit.toml


def _parse_value(key: str, value: Any) -> Any:
    parser, nullable = _FIELDS[key]
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        if nullable:
            return None
        raise _Bad("a value; this setting cannot be unset")
    return parser(value)


# ---------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How the queue behaves. Durations are seconds, sizes bytes; None means no limit / unset.

    Values are checked (and strings such as "15m" or "64MB" converted) at construction.
    """

    max_records: int | None = None
    max_bytes: int | None = None
    kind: str = "auto"
    max_errors: int = 0
    on_invalid: str = "quarantine"
    max_reject_ratio: float | None = 0.5
    max_tokens: int | None = None
    tokenizer: str | None = None
    settle: float = 10.0
    stale_after: float = 15 * 60.0
    max_attempts: int = 3
    keep_completed: int | None = None
    completed_max_age: float | None = None
    disk_reserve: int | None = None  # None: RESERVE_FACTOR x the largest shard to write; 0: off
    priority: str = "normal"

    def __post_init__(self) -> None:
        for key in _FIELDS:
            value = getattr(self, key)
            try:
                object.__setattr__(self, key, _parse_value(key, value))
            except _Bad as e:
                raise UsageError(f"setting {key}: invalid value {value!r} (expected {e})") from None
        if (self.max_tokens is None) != (self.tokenizer is None):
            given, missing = ("max_tokens", "tokenizer") if self.tokenizer is None else ("tokenizer", "max_tokens")
            raise UsageError(f"setting {given} needs {missing} too (token limits need a tokenizer to count with)")

    def reserve_for(self, largest_shard: int) -> int:
        """Free bytes an operation writing shards of at most `largest_shard` bytes must leave."""
        if self.disk_reserve is not None:
            return self.disk_reserve
        return math.ceil(RESERVE_FACTOR * largest_shard)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SETTING_KEYS: tuple[str, ...] = tuple(_FIELDS)


def load_settings(
    root: Path | str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings for the queue at ROOT: defaults < ROOT/shardkit.toml < SHARDKIT_* env < overrides.

    `env` defaults to os.environ; `overrides` maps setting names to flag values, None meaning
    the flag was not given. Unknown keys raise UsageError with a did-you-mean; a bad value
    raises UsageError naming where it came from, the key and the value. An unreadable
    shardkit.toml raises InputError.
    """
    root = Path(root)
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    values.update(_from_file(root / SETTINGS_FILE, root))
    values.update(_from_env(env))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _check_key(key, f"flag --{key.replace('_', '-')}")
        values[key] = _checked(key, value, f"--{key.replace('_', '-')}")
    try:
        return Settings(**values)
    except UsageError as e:
        raise UsageError(f"{e} (settings from {root / SETTINGS_FILE}, SHARDKIT_* variables and flags)") from None


def _from_file(path: Path, root: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise env_error(e, path) from None
    values = {}
    for key, value in data.items():
        if isinstance(value, dict):
            raise UsageError(
                f"{path}: [{key}]: settings are top-level keys (max_records = 50000), not a table; "
                f"move them above any [section]"
            )
        _check_key(key, str(path))
        parsed = _checked(key, value, str(path))
        if key in _PATH_KEYS and isinstance(parsed, str) and _is_relative_path(key, parsed):
            parsed = str(root / parsed)
        values[key] = parsed
    return values


def _is_relative_path(key: str, value: str) -> bool:
    if key == "kind" and (value == "auto" or value in KINDS):
        return False
    return not os.path.isabs(value)


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or not value.strip():
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key in _FIELDS:
            values[key] = _checked(key, value, f"environment variable {name}")
        elif hint := difflib.get_close_matches(key, _FIELDS, n=1, cutoff=0.8):
            # other SHARDKIT_* variables exist (ROOT, DEBUG); only a near miss is a typo
            raise UsageError(
                f"environment variable {name}: unknown setting; "
                f"did you mean {ENV_PREFIX}{hint[0].upper()}?"
            )
    return values


def _check_key(key: str, source: str) -> None:
    if key not in _FIELDS:
        raise UsageError(f"{source}: unknown setting {key!r}{_did_you_mean(key, _FIELDS)} "
                         f"(known: {', '.join(_FIELDS)})")


def _checked(key: str, value: Any, source: str) -> Any:
    try:
        return _parse_value(key, value)
    except _Bad as e:
        raise UsageError(f"{source}: {key}: invalid value {_show(value)} (expected {e})") from None


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def _did_you_mean(word: str, choices) -> str:
    match = difflib.get_close_matches(word.replace("-", "_").lower(), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def resolve_root(arg: Path | str | None, env: Mapping[str, str] | None = None) -> Path:
    """The queue root: `arg` if given, else $SHARDKIT_ROOT, else the current folder (absolute)."""
    env = os.environ if env is None else env
    if arg is not None and str(arg) != "":
        chosen = Path(arg)
    elif env.get(ROOT_ENV, "").strip():
        chosen = Path(env[ROOT_ENV])
    else:
        chosen = Path.cwd()
    return chosen.expanduser().absolute()


__all__ = [
    "ON_INVALID",
    "PRIORITIES",
    "SETTINGS_FILE",
    "SETTING_KEYS",
    "Settings",
    "load_settings",
    "parse_duration",
    "resolve_root",
]
