import subprocess

import orjson
import pytest
from conftest import run_cli

from shardkit import SplitOptions, split
from shardkit.core.errors import DataError, InputError
from shardkit.store.manifest import FolderChanged, regenerate, verify


@pytest.fixture
def shards(tmp_path, chat_file):
    src, _ = chat_file
    out = tmp_path / "o"
    split([src], out, SplitOptions(max_records=100))
    return out


def test_sha256sums_is_coreutils_compatible(shards):
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=shards, capture_output=True)
    assert r.returncode == 0
    assert r.stdout.decode().count(": OK") == 4


def test_verify_ok(shards):
    result = verify(shards / "manifest.json")
    assert result.ok and result.checked == 4 and result.extra == []


def test_verify_catches_one_changed_byte(shards):
    target = shards / "chat-00002.jsonl"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    r = run_cli("verify", shards / "manifest.json")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.startswith("shardkit: mismatch: chat-00002.jsonl: sha256 mismatch (manifest ")
    assert "chat-00000.jsonl" not in err
    assert b"4 file(s) checked: FAILED (1 problem(s))" in r.stdout


def test_verify_catches_missing_truncated_and_notes_extra(shards):
    (shards / "chat-00000.jsonl").unlink()
    with open(shards / "chat-00001.jsonl", "r+b") as f:
        f.truncate(10)
    (shards / "stray.jsonl").write_bytes(b"{}\n")
    result = verify(shards)
    assert result.problems == [
        "chat-00000.jsonl: missing",
        f"chat-00001.jsonl: size 10 bytes, manifest says {orjson.loads((shards / 'manifest.json').read_bytes())['files'][1]['bytes']}",
    ]
    assert result.extra == ["stray.jsonl"]


def test_verify_flags_incomplete_manifest(shards):
    m = orjson.loads((shards / "manifest.json").read_bytes())
    m["complete"] = False
    (shards / "manifest.json").write_bytes(orjson.dumps(m))
    result = verify(shards / "manifest.json")
    assert not result.ok and "incomplete" in result.problems[0]


def test_verify_bad_manifests(tmp_path):
    with pytest.raises(InputError, match="no such manifest"):
        verify(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    with pytest.raises(DataError, match="not a valid manifest"):
        verify(bad)
    bad.write_bytes(b'{"files": []}')
    with pytest.raises(DataError, match="not a shardkit manifest"):
        verify(bad)
    r = run_cli("verify", bad)
    assert r.returncode == 1 and r.stderr.decode().startswith("shardkit: error: ")


def test_verify_rejects_unsafe_paths(tmp_path):
    m = {"shardkit_manifest": 1, "files": [{"path": "../../etc/passwd", "bytes": 1, "sha256": "x"}]}
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(m))
    result = verify(tmp_path / "manifest.json")
    assert result.problems == ["'../../etc/passwd': unsafe path in manifest"]


def test_regenerate_keeps_lineage_and_picks_up_changes(shards):
    old = orjson.loads((shards / "manifest.json").read_bytes())
    (shards / "manifest.json").unlink()
    fresh = regenerate(shards)
    assert [f["path"] for f in fresh["files"]] == [f["path"] for f in old["files"]]
    assert [f["sha256"] for f in fresh["files"]] == [f["sha256"] for f in old["files"]]
    assert "first_line" not in fresh["files"][0]
    (shards / "manifest.json").write_bytes(orjson.dumps(old))
    (shards / "chat-00003.jsonl").unlink()
    (shards / "extra.jsonl").write_bytes(b'{"x":1}\n\n{"y":2}\n')
    with pytest.raises(FolderChanged, match="chat-00003.jsonl is missing"):
        regenerate(shards)
    again = regenerate(shards, accept_changes=True)
    assert [f["path"] for f in again["files"]] == ["chat-00000.jsonl", "chat-00001.jsonl", "chat-00002.jsonl", "extra.jsonl"]
    assert again["files"][0]["first_line"] == 1  # lineage kept for unchanged files
    assert again["files"][-1]["records"] == 2
    assert verify(shards).ok
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=shards).returncode == 0


def test_manifest_cli_to_other_path(shards, tmp_path):
    r = run_cli("manifest", shards, "-o", tmp_path / "elsewhere.json")
    assert r.returncode == 0, r.stderr
    m = orjson.loads((tmp_path / "elsewhere.json").read_bytes())
    assert m["files"][0]["path"] == "o/chat-00000.jsonl"
    assert verify(tmp_path / "elsewhere.json").ok
    r = run_cli("manifest", tmp_path / "missing")
    assert r.returncode == 3 and r.stderr.decode().strip().endswith("missing: not a directory")


def test_manifest_of_a_changed_folder_reports_every_difference_and_rewrites_nothing(shards):
    """Issue 17.7: it silently counted a cut line as a record and dropped a missing shard."""
    before = (shards / "manifest.json").read_bytes()
    sums = (shards / "SHA256SUMS").read_bytes()
    with open(shards / "chat-00000.jsonl", "ab") as f:
        f.write(b'{"cut": ')  # a byte appended: a last line that is not a record
    (shards / "chat-00001.jsonl").unlink()
    (shards / "new.jsonl").write_bytes(b'{"x":1}\n')
    r = run_cli("manifest", shards)
    assert r.returncode == 1
    err = r.stderr.decode()
    for what in ("chat-00000.jsonl changed", "chat-00000.jsonl: the last line is not a complete record",
                 "chat-00001.jsonl is missing", "new.jsonl is not in the manifest", "--accept-changes"):
        assert what in err, err
    assert (shards / "manifest.json").read_bytes() == before and (shards / "SHA256SUMS").read_bytes() == sums
    v = run_cli("verify", shards)
    assert v.returncode == 1
    assert b"chat-00000.jsonl" in v.stdout + v.stderr and b"chat-00001.jsonl: missing" in v.stdout + v.stderr
    ok = run_cli("manifest", shards, "--accept-changes")
    assert ok.returncode == 0, ok.stderr
    m = orjson.loads((shards / "manifest.json").read_bytes())
    assert "chat-00001.jsonl" not in {f["path"] for f in m["files"]}
    assert run_cli("manifest", shards).returncode == 0  # now they agree: nothing to report
    v = run_cli("verify", shards)  # the cut line is still named
    assert v.returncode == 1 and b"last line is not a complete record" in v.stdout + v.stderr
