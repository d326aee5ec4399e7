import os
import stat

import pytest

from shardkit.core.errors import ConflictError, UsageError
from shardkit.core.io import (
    TMP_PREFIX,
    atomic_write,
    create_temp,
    format_size,
    parse_size,
    remove_stale_temps,
    rename_noreplace,
    sniff_compression,
)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4096B", 4096),
        ("64MB", 64_000_000),
        ("64mb", 64_000_000),
        ("64MiB", 64 * 2**20),
        ("64M", 64 * 2**20),
        ("1G", 2**30),
        ("1.5GB", 1_500_000_000),
        ("10k", 10240),
        ("7 KiB", 7168),
        ("12B", 12),
        (5, 5),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "12QB", "-5", "0", "1e9", "ten", "64 M B"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError, match="invalid size"):
        parse_size(text)


@pytest.mark.parametrize("text", ["64", "4096", " 7 ", "1.5"])
def test_parse_size_refuses_a_number_without_a_unit_with_a_hint(text):
    n = text.strip()
    with pytest.raises(UsageError, match=rf"{n} has no unit: did you mean {n}MB\? write {n}B for bytes"):
        parse_size(text)


def test_parse_size_takes_an_int_as_bytes():
    assert parse_size(4096) == 4096  # a TOML integer in shardkit.toml


def test_format_size():
    assert format_size(12) == "12 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 2**30) == "3.0 GiB"


def test_rename_noreplace_never_replaces(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"new")
    b.write_bytes(b"old")
    with pytest.raises(ConflictError, match="already exists"):
        rename_noreplace(a, b)
    assert b.read_bytes() == b"old" and a.read_bytes() == b"new"
    c = tmp_path / "c"
    rename_noreplace(a, c)
    assert c.read_bytes() == b"new" and not a.exists()


def test_created_files_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fd, tmp = create_temp(tmp_path, "x")
        os.close(fd)
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o644
        atomic_write(tmp_path / "m.json", b"{}")
        assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "p.json", b"{}")
        assert stat.S_IMODE((tmp_path / "p.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_atomic_write_replace_and_noreplace(tmp_path):
    p = tmp_path / "f"
    atomic_write(p, b"one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    with pytest.raises(ConflictError):
        atomic_write(p, b"three", replace=False)
    assert p.read_bytes() == b"two"
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(TMP_PREFIX)]


def test_create_temp_does_not_follow_symlinks(tmp_path):
    target = tmp_path / "outside"
    fd, tmp = create_temp(tmp_path, "y")
    os.close(fd)
    tmp.unlink()
    tmp.symlink_to(target)
    fd2, tmp2 = create_temp(tmp_path, "y")  # picks another name, never writes through the link
    os.close(fd2)
    assert tmp2 != tmp and not target.exists()


def test_remove_stale_temps_only_ours(tmp_path):
    (tmp_path / f"{TMP_PREFIX}1-0-a.jsonl").write_bytes(b"x")
    (tmp_path / "keep.jsonl").write_bytes(b"x")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [f"{TMP_PREFIX}1-0-a.jsonl"]
    assert (tmp_path / "keep.jsonl").exists()


def test_sniff_compression():
    assert sniff_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert sniff_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert sniff_compression(b'{"a"') is None
