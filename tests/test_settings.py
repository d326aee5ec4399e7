"""Queue settings: shardkit.toml < SHARDKIT_* < flags, durations, sizes, exact messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shardkit.core.errors import InputError, UsageError
from shardkit.queue.settings import Settings, load_settings, parse_duration, resolve_root

FULL_TOML = """
max_records = 50_000
max_bytes = "64MiB"
kind = "chat"
max_errors = 5
on_invalid = "strip"
max_reject_ratio = 0.25
max_tokens = 8192
tokenizer = "models/Qwen3-0.6B"
settle = "30s"
stale_after = "1h30m"
max_attempts = 5
keep_completed = 100
completed_max_age = "7d"
disk_reserve = "20GB"
priority = "high"
"""


def write_toml(root: Path, text: str) -> Path:
    path = root / "shardkit.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_env_or_flags(tmp_path):
    s = load_settings(tmp_path, env={}, overrides={})
    assert s == Settings()
    assert (s.max_records, s.max_bytes, s.kind, s.max_errors, s.on_invalid) == (None, None, "auto", 0, "quarantine")
    assert (s.settle, s.stale_after, s.max_attempts, s.priority) == (10.0, 900.0, 3, "normal")
    assert s.disk_reserve is None and s.reserve_for(100 * 2**20) == 150 * 2**20
    assert s.tokenizer is None and s.max_tokens is None


def test_every_key_from_the_file(tmp_path):
    write_toml(tmp_path, FULL_TOML)
    s = load_settings(tmp_path, env={})
    assert s.to_dict() == {
        "max_records": 50_000,
        "max_bytes": 64 * 2**20,
        "kind": "chat",
        "max_errors": 5,
        "on_invalid": "strip",
        "max_reject_ratio": 0.25,
        "max_tokens": 8192,
        "tokenizer": str(tmp_path / "models/Qwen3-0.6B"),  # relative to ROOT, not to the cwd
        "settle": 30.0,
        "stale_after": 5400.0,
        "max_attempts": 5,
        "keep_completed": 100,
        "completed_max_age": 7 * 86400.0,
        "disk_reserve": 20 * 10**9,
        "priority": "high",
    }
    assert s.reserve_for(10**12) == 20 * 10**9


def test_numbers_are_seconds_and_bytes(tmp_path):
    write_toml(tmp_path, "settle = 2.5\nstale_after = 600\nmax_bytes = 4096\ndisk_reserve = 0\n")
    s = load_settings(tmp_path, env={})
    assert (s.settle, s.stale_after, s.max_bytes, s.disk_reserve) == (2.5, 600.0, 4096, 0)
    assert s.reserve_for(10**9) == 0  # 0 switches the reserve check off


def test_env_beats_file_and_flags_beat_env(tmp_path):
    write_toml(tmp_path, "max_records = 100\nstale_after = '15m'\nmax_attempts = 4\nkeep_completed = 7\n")
    env = {
        "SHARDKIT_MAX_RECORDS": "200",
        "SHARDKIT_STALE_AFTER": "2h",
        "SHARDKIT_KEEP_COMPLETED": "none",  # unsets what the file set
        "SHARDKIT_SETTLE": "",  # empty: not set
        "SHARDKIT_ROOT": "/elsewhere",  # not a setting: ignored here
        "SHARDKIT_DEBUG": "1",
        "SHARDKIT_FAULT": "x",
        "HOME": "/root",
    }
    s = load_settings(tmp_path, env=env, overrides={"max_records": 300, "max_attempts": None, "priority": None})
    assert s.max_records == 300  # flag
    assert s.stale_after == 7200.0  # env
    assert s.max_attempts == 4  # file: a None flag means "not given"
    assert s.keep_completed is None
    assert s.settle == 10.0 and s.priority == "normal"
    s = load_settings(tmp_path, env=env, overrides={"stale_after": "30s", "max_records": "none"})
    assert s.stale_after == 30.0 and s.max_records is None


def test_env_defaults_to_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDKIT_MAX_ATTEMPTS", "9")
    assert load_settings(tmp_path).max_attempts == 9


def test_relative_paths_from_env_and_flags_are_left_to_the_cwd(tmp_path):
    env = {"SHARDKIT_TOKENIZER": "tok.json", "SHARDKIT_MAX_TOKENS": "10"}
    assert load_settings(tmp_path, env=env).tokenizer == "tok.json"
    write_toml(tmp_path, 'kind = "schemas/chat.json"\n')
    assert load_settings(tmp_path, env={}).kind == str(tmp_path / "schemas/chat.json")
    write_toml(tmp_path, 'kind = "/abs/schema.json"\n')
    assert load_settings(tmp_path, env={}).kind == "/abs/schema.json"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("max_record = 5\n", "{path}: unknown setting 'max_record'; did you mean 'max_records'?"),
        ("max-records = 5\n", "{path}: unknown setting 'max-records'; did you mean 'max_records'?"),
        ("max_records = 0\n", "{path}: max_records: invalid value 0 (expected a whole number >= 1)"),
        ("max_records = true\n", "{path}: max_records: invalid value true (expected a whole number >= 1)"),
        ("max_records = '5k'\n", "{path}: max_records: invalid value '5k' (expected a whole number >= 1)"),
        ("max_errors = -1\n", "{path}: max_errors: invalid value -1 (expected a whole number >= 0)"),
        ("max_reject_ratio = 1.5\n", "{path}: max_reject_ratio: invalid value 1.5 (expected a fraction from 0 to 1, such as 0.5)"),
        ("max_bytes = '64QB'\n", "{path}: max_bytes: invalid value '64QB' (expected a size such as 64MB, 64MiB, 1G, 4096B or a TOML integer of bytes)"),
        ("max_bytes = '64'\n", "{path}: max_bytes: invalid value '64' (expected a size such as 64MB, 64MiB, 1G, 4096B or a TOML integer of bytes (64 has no unit: did you mean 64MB? write 64B for bytes))"),
        ("settle = '10 minutes'\n", "{path}: settle: invalid value '10 minutes' (expected a duration such as 90, 10s, 15m, 2h or 7d)"),
        ("stale_after = -5\n", "{path}: stale_after: invalid value -5 (expected a duration such as 90, 10s, 15m, 2h or 7d)"),
        ("on_invalid = 'strp'\n", "{path}: on_invalid: invalid value 'strp' (expected one of quarantine, strip; did you mean 'strip'?)"),
        ("priority = 'urgent'\n", "{path}: priority: invalid value 'urgent' (expected one of high, normal, low)"),
        ("kind = 'chatml'\n", "{path}: kind: invalid value 'chatml' (expected auto, one of chat, prompt-completion, alpaca, sharegpt, text, preference, kto, or a JSON Schema file (.json); did you mean 'chat'?)"),
        ("max_attempts = 'none'\n", "{path}: max_attempts: invalid value 'none' (expected a value; this setting cannot be unset)"),
        ("[queue]\nmax_records = 5\n", "{path}: [queue]: settings are top-level keys (max_records = 50000), not a table; move them above any [section]"),
    ],
)
def test_bad_file_entries_name_the_file_key_and_value(tmp_path, toml, message):
    path = write_toml(tmp_path, toml)
    with pytest.raises(UsageError) as e:
        load_settings(tmp_path, env={})
    text = str(e.value)
    expected = message.format(path=path)
    assert text == expected if "unknown setting" not in message else text.startswith(expected)
    assert e.value.exit_code == 2


def test_unknown_key_lists_the_known_ones(tmp_path):
    write_toml(tmp_path, "colour = 'blue'\n")
    with pytest.raises(UsageError, match=r"unknown setting 'colour' \(known: max_records, max_bytes, kind"):
        load_settings(tmp_path, env={})


def test_bad_env_values_name_the_variable(tmp_path):
    with pytest.raises(UsageError) as e:
        load_settings(tmp_path, env={"SHARDKIT_STALE_AFTER": "soon"})
    assert str(e.value) == (
        "environment variable SHARDKIT_STALE_AFTER: stale_after: invalid value 'soon' "
        "(expected a duration such as 90, 10s, 15m, 2h or 7d)"
    )
    with pytest.raises(UsageError, match=r"environment variable SHARDKIT_MAX_RECORD: unknown setting; did you mean SHARDKIT_MAX_RECORDS\?"):
        load_settings(tmp_path, env={"SHARDKIT_MAX_RECORD": "5"})
    with pytest.raises(UsageError, match=r"SHARDKIT_MAX_BYTES: max_bytes: .*64 has no unit: did you mean 64MB\? write 64B"):
        load_settings(tmp_path, env={"SHARDKIT_MAX_BYTES": "64"})
    assert load_settings(tmp_path, env={"SHARDKIT_MAX_BYTES": "64B"}).max_bytes == 64


def test_bad_flags_name_the_flag(tmp_path):
    with pytest.raises(UsageError, match=r"^--max-attempts: max_attempts: invalid value 0 \(expected a whole number >= 1\)$"):
        load_settings(tmp_path, env={}, overrides={"max_attempts": 0})
    with pytest.raises(UsageError, match=r"flag --colour: unknown setting 'colour'"):
        load_settings(tmp_path, env={}, overrides={"colour": "x"})


def test_max_tokens_needs_a_tokenizer_wherever_each_comes_from(tmp_path):
    write_toml(tmp_path, "max_tokens = 100\n")
    with pytest.raises(UsageError, match=r"setting max_tokens needs tokenizer too .*settings from .*shardkit.toml"):
        load_settings(tmp_path, env={})
    s = load_settings(tmp_path, env={}, overrides={"tokenizer": "/models/tok.json"})
    assert (s.max_tokens, s.tokenizer) == (100, "/models/tok.json")


def test_unreadable_or_invalid_toml(tmp_path):
    write_toml(tmp_path, "max_records = [\n")
    with pytest.raises(UsageError, match=r"shardkit.toml: not valid TOML") as e:
        load_settings(tmp_path, env={})
    assert e.value.exit_code == 2
    (tmp_path / "shardkit.toml").unlink()
    (tmp_path / "shardkit.toml").mkdir()
    with pytest.raises(InputError) as e:
        load_settings(tmp_path, env={})
    assert e.value.exit_code == 3


def test_settings_are_frozen_keyword_only_and_checked_at_construction():
    s = Settings(stale_after="15m", max_bytes="1G", disk_reserve="0")
    assert (s.stale_after, s.max_bytes, s.disk_reserve) == (900.0, 2**30, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_attempts = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(10)  # type: ignore[misc]
    with pytest.raises(UsageError, match=r"^setting max_attempts: invalid value 0 \(expected a whole number >= 1\)$"):
        Settings(max_attempts=0)
    with pytest.raises(UsageError, match="setting max_records"):
        Settings(max_records=True)
    with pytest.raises(UsageError, match="setting kind: invalid value None"):
        Settings(kind=None)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="setting tokenizer needs max_tokens too"):
        Settings(tokenizer="tok.json")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), (" 90 ", 90.0), (90, 90.0), (2.5, 2.5), ("0", 0.0), ("10s", 10.0), ("15m", 900.0),
     ("2h", 7200.0), ("7d", 604800.0), ("1w", 604800.0), ("500ms", 0.5), ("1h30m", 5400.0),
     ("1.5h", 5400.0), ("2H", 7200.0), ("1h 30m", 5400.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "1h 30", "-5", -1, "nan", float("inf"), "1e5", "10 minutes", True, "h1"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


def test_resolve_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("q", env={"SHARDKIT_ROOT": "/srv/queue"}) == tmp_path / "q"
    assert resolve_root(None, env={"SHARDKIT_ROOT": "/srv/queue"}) == Path("/srv/queue")
    assert resolve_root("", env={"SHARDKIT_ROOT": " "}) == tmp_path
    assert resolve_root(None, env={}) == tmp_path
    monkeypatch.setenv("SHARDKIT_ROOT", str(tmp_path / "from-env"))
    assert resolve_root(None) == tmp_path / "from-env"
