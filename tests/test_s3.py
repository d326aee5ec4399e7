"""s3:// inputs and outputs against a real S3 protocol server (moto) on 127.0.0.1.

The server is an HTTP server started and stopped by this test session; the CLI runs as a
real process and reaches it through AWS_ENDPOINT_URL, as it would reach MinIO or AWS."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import uuid
from pathlib import Path

import orjson
import pytest
from conftest import expected_records, make_chat_jsonl, run_cli

moto_server = pytest.importorskip("moto.server", reason="the s3 extra (make test installs it)")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="session")
def s3_endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_endpoint, tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("SHARDKIT_STAGING", str(tmp_path / "staging"))
    name = f"b-{uuid.uuid4().hex[:12]}"
    _fs().mkdir(name)
    return name


def _fs():
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return fs


def _manifest(fs, prefix: str) -> dict:
    return orjson.loads(fs.cat_file(f"{prefix}/manifest.json"))


def _concat(fs, prefix: str) -> bytes:
    return b"".join(fs.cat_file(f"{prefix}/{f['path']}") for f in _manifest(fs, prefix)["files"])


def test_local_to_s3_publishes_shards_then_manifest(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 300, seed=3)
    out = f"s3://{bucket}/runs/one"
    r = run_cli("split", src, "-o", out, "--max-records", "70")
    assert r.returncode == 0, r.stderr
    fs = _fs()
    m = _manifest(fs, f"{bucket}/runs/one")
    assert m["complete"] and [f["records"] for f in m["files"]] == [70, 70, 70, 70, 20]
    assert _concat(fs, f"{bucket}/runs/one") == expected_records(data)
    for f in m["files"]:
        assert hashlib.sha256(fs.cat_file(f"{bucket}/runs/one/{f['path']}")).hexdigest() == f["sha256"]
    assert m["sources"][0]["path"] == str(src.resolve())
    assert sorted(fs.ls(f"{bucket}/runs/one", detail=False)) == sorted(
        [f"{bucket}/runs/one/{f['path']}" for f in m["files"]]
        + [f"{bucket}/runs/one/{n}" for n in ("SHA256SUMS", "manifest.json")]
    )
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").iterdir())
    v = run_cli("verify", out)
    assert v.returncode == 0, v.stderr
    assert b"5 file(s) checked: OK" in v.stdout
    # a second run into the same prefix is refused; --resume says it is already complete
    again = run_cli("split", src, "-o", out, "--max-records", "70")
    assert again.returncode == 4 and b"already holds a shardkit run" in again.stderr
    done = run_cli("split", src, "-o", out, "--max-records", "70", "--resume")
    assert done.returncode == 0 and b"already complete" in done.stdout


def test_gz_object_to_local_matches_a_local_split(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 250, seed=4)
    gz = gzip.compress(data)
    fs = _fs()
    fs.pipe_file(f"{bucket}/in/chat.jsonl.gz", gz)
    (tmp_path / "chat.jsonl.gz").write_bytes(gz)
    r = run_cli("split", f"s3://{bucket}/in/chat.jsonl.gz", "-o", tmp_path / "from-s3", "--max-records", "60")
    assert r.returncode == 0, r.stderr
    r2 = run_cli("split", tmp_path / "chat.jsonl.gz", "-o", tmp_path / "from-disk", "--max-records", "60")
    assert r2.returncode == 0, r2.stderr
    a = orjson.loads((tmp_path / "from-s3" / "manifest.json").read_bytes())
    b = orjson.loads((tmp_path / "from-disk" / "manifest.json").read_bytes())
    assert [(f["path"], f["sha256"]) for f in a["files"]] == [(f["path"], f["sha256"]) for f in b["files"]]
    assert a["sources"][0]["path"] == f"s3://{bucket}/in/chat.jsonl.gz"
    assert a["sources"][0]["sha256"] == hashlib.sha256(gz).hexdigest() == b["sources"][0]["sha256"]
    assert a["counts"] == b["counts"] and a["counts"]["written"] == 250


def test_s3_to_s3_parquet_readable_by_pyarrow(bucket, tmp_path: Path):
    import pyarrow.parquet as pq

    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 200, seed=5)
    fs = _fs()
    fs.pipe_file(f"{bucket}/in/chat.jsonl", data)
    out = f"s3://{bucket}/pq"
    r = run_cli("split", f"s3://{bucket}/in/chat.jsonl", "-o", out, "--max-records", "64", "--format", "parquet",
                "--validate", "chat")
    assert r.returncode == 0, r.stderr
    m = _manifest(fs, f"{bucket}/pq")
    assert [f["records"] for f in m["files"]] == [64, 64, 64, 8]
    rows = []
    for f in m["files"]:
        with fs.open(f"{bucket}/pq/{f['path']}", "rb") as fh:
            rows += pq.read_table(fh).to_pylist()
    want = [orjson.loads(line) for line in data.splitlines()]
    assert [r["messages"] for r in rows] == [w["messages"] for w in want]
    assert run_cli("verify", f"{out}/manifest.json").returncode == 0


def test_validate_and_stats_read_s3_objects(bucket, tmp_path: Path):
    lines = [b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}',
             b'{"messages":[{"role":"user","content":"hi"}]}', b'{"oops"']
    fs = _fs()
    fs.pipe_file(f"{bucket}/v.jsonl", b"\n".join(lines) + b"\n")
    r = run_cli("validate", f"s3://{bucket}/v.jsonl", "--kind", "chat", "--json")
    assert r.returncode == 1
    report = orjson.loads(r.stdout)
    assert report["records"] == {"read": 3, "valid": 1, "invalid": 2, "blank": 0}
    lines_seen = sorted(e["line"] for i in report["issues"] if i["severity"] == "error" for e in i["examples"])
    assert lines_seen == [2, 3]
    assert all(e["file"] == f"s3://{bucket}/v.jsonl" for i in report["issues"] for e in i["examples"])
    s = run_cli("stats", f"s3://{bucket}/v.jsonl", "--json")
    assert s.returncode in (0, 1), s.stderr
    stats = orjson.loads(s.stdout)["inputs"][0]
    assert stats["path"] == f"s3://{bucket}/v.jsonl" and stats["records"] == 2 and stats["invalid"]["count"] == 1


def test_a_killed_upload_leaves_no_object_and_resume_finishes(bucket, tmp_path: Path):
    src = tmp_path / "big.jsonl"
    data = make_chat_jsonl(src, 9000, seed=6, max_len=4000)  # ~30 MB: multipart shards
    out = f"s3://{bucket}/big"
    args = ("split", src, "-o", out, "--max-records", "4000")
    r = run_cli(*args, env={"SHARDKIT_FAULT": "after:upload_part:2"})
    assert r.returncode == -9, r.stderr
    fs = _fs()
    staged = orjson.loads(next((tmp_path / "staging").rglob("manifest.json")).read_bytes())
    first = staged["files"][0]["path"]
    assert not fs.exists(f"{bucket}/big/{first}")  # two parts sent, never completed: no object
    assert not fs.exists(f"{bucket}/big/manifest.json")
    # killed between the last part and the completion of the second shard
    r = run_cli(*args, "--resume", env={"SHARDKIT_FAULT": "before:upload_commit:2"})
    assert r.returncode == -9, r.stderr
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/big/{first}")
    assert not fs.exists(f"{bucket}/big/{staged['files'][1]['path']}")
    assert not fs.exists(f"{bucket}/big/manifest.json")
    # a plain rerun is refused (objects but no manifest), --resume finishes the job
    refused = run_cli(*args)
    assert refused.returncode == 4, refused.stderr
    ok = run_cli(*args, "--resume")
    assert ok.returncode == 0, ok.stderr
    fs.invalidate_cache()
    assert _concat(fs, f"{bucket}/big") == expected_records(data)
    assert run_cli("verify", out).returncode == 0


def test_verify_catches_a_changed_object(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    make_chat_jsonl(src, 100, seed=7)
    out = f"s3://{bucket}/v"
    assert run_cli("split", src, "-o", out, "--max-records", "50").returncode == 0
    fs = _fs()
    m = _manifest(fs, f"{bucket}/v")
    key = f"{bucket}/v/{m['files'][1]['path']}"
    body = bytearray(fs.cat_file(key))
    body[10] ^= 0x01  # same size, one bit changed
    fs.pipe_file(key, bytes(body))
    r = run_cli("verify", out, "--json")
    assert r.returncode == 1
    result = orjson.loads(r.stdout)
    assert any("sha256 mismatch" in p and m["files"][1]["path"] in p for p in result["problems"])
    fs.rm_file(f"{bucket}/v/{m['files'][0]['path']}")
    r = run_cli("verify", out, "--json")
    assert any(p.endswith(": missing") for p in orjson.loads(r.stdout)["problems"])


def test_a_foreign_prefix_is_refused(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    make_chat_jsonl(src, 10, seed=8)
    fs = _fs()
    fs.pipe_file(f"{bucket}/taken/notes.txt", b"someone else's")
    r = run_cli("split", src, "-o", f"s3://{bucket}/taken", "--max-records", "5")
    assert r.returncode == 4 and b"not empty" in r.stderr
    assert fs.cat_file(f"{bucket}/taken/notes.txt") == b"someone else's"


def test_overwrite_replaces_exactly_the_listed_objects(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 120, seed=9)
    out = f"s3://{bucket}/ow"
    assert run_cli("split", src, "-o", out, "--max-records", "30").returncode == 0
    fs = _fs()
    fs.pipe_file(f"{bucket}/ow/README.txt", b"keep me")
    r = run_cli("split", src, "-o", out, "--max-records", "50", "--overwrite")
    assert r.returncode == 0, r.stderr
    fs.invalidate_cache()
    m = _manifest(fs, f"{bucket}/ow")
    assert [f["records"] for f in m["files"]] == [50, 50, 20]
    names = {os.path.basename(p) for p in fs.ls(f"{bucket}/ow", detail=False)}
    assert names == {f["path"] for f in m["files"]} | {"SHA256SUMS", "manifest.json", "README.txt"}
    assert _concat(fs, f"{bucket}/ow") == expected_records(data)


def test_missing_object_is_a_clear_error(bucket):
    r = run_cli("split", f"s3://{bucket}/nope.jsonl", "-o", f"s3://{bucket}/x", "--max-records", "5")
    assert r.returncode == 3
    assert r.stderr.strip().endswith(b"no such object") and b"Traceback" not in r.stderr


def test_engine_local_from_s3_to_s3_matches_a_local_split(bucket, tmp_path: Path):
    fs = _fs()
    names = []
    for i in range(3):
        p = tmp_path / f"part{i}.jsonl"
        data = make_chat_jsonl(p, 90 + i * 20, seed=20 + i)
        fs.pipe_file(f"{bucket}/in/part{i}.jsonl", gzip.compress(data) if i == 1 else data)
        names.append(f"s3://{bucket}/in/part{i}.jsonl")
    out = f"s3://{bucket}/eng"
    r = run_cli("split", *names, "-o", out, "--max-records", "40", "--engine", "local", "-j", "2")
    assert r.returncode == 0, r.stderr
    one = run_cli("split", *names, "-o", tmp_path / "one", "--max-records", "40")
    assert one.returncode == 0, one.stderr
    a = _manifest(fs, f"{bucket}/eng")
    b = orjson.loads((tmp_path / "one" / "manifest.json").read_bytes())
    a.pop("created_at"), b.pop("created_at")
    assert a == b  # sources are the URLs in both
    for f in b["files"]:
        assert fs.cat_file(f"{bucket}/eng/{f['path']}") == (tmp_path / "one" / f["path"]).read_bytes()
    assert run_cli("verify", out).returncode == 0


# ---- found in review


def test_overwrite_does_not_replace_objects_that_are_not_the_runs(bucket, tmp_path: Path):
    src = tmp_path / "a.jsonl"
    make_chat_jsonl(src, 10, seed=1)
    fs = _fs()
    fs.pipe_file(f"{bucket}/foreign/a-00000.jsonl", b"precious user data\n")
    r = run_cli("split", src, "-o", f"s3://{bucket}/foreign", "--max-records", "2", "--overwrite")
    assert r.returncode == 4 and b"not empty" in r.stderr, r.stderr
    assert fs.cat_file(f"{bucket}/foreign/a-00000.jsonl") == b"precious user data\n"
    # a run there, plus an object it does not list whose name a new shard takes
    assert run_cli("split", src, "-o", f"s3://{bucket}/mixed", "--max-records", "10").returncode == 0
    fs.pipe_file(f"{bucket}/mixed/a-00001.jsonl", b"someone else's\n")
    r = run_cli("split", src, "-o", f"s3://{bucket}/mixed", "--max-records", "5", "--overwrite")
    assert r.returncode == 4 and b"not replaced" in r.stderr, r.stderr
    assert fs.cat_file(f"{bucket}/mixed/a-00001.jsonl") == b"someone else's\n"


def test_resume_of_a_complete_upload_checks_inputs_and_options(bucket, tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    make_chat_jsonl(a, 10, seed=1)
    make_chat_jsonl(b, 10, seed=2)
    out = f"s3://{bucket}/run"
    assert run_cli("split", a, b, "-o", out, "--max-records", "4").returncode == 0
    for extra in ([], ["--engine", "local"]):
        r = run_cli("split", b, "-o", out, "--max-records", "4", "--resume", *extra)
        assert r.returncode == 4 and b"inputs differ" in r.stderr, r.stderr
        r = run_cli("split", a, b, "-o", out, "--max-records", "3", "--resume", *extra)
        assert r.returncode == 4 and b"options differ" in r.stderr, r.stderr
        r = run_cli("split", a, b, "-o", out, "--max-records", "4", "--resume", *extra)
        assert r.returncode == 0 and b"already complete" in r.stdout, r.stderr


def test_empty_object_input(bucket, tmp_path: Path):
    _fs().pipe_file(f"{bucket}/in/empty.jsonl", b"")
    url = f"s3://{bucket}/in/empty.jsonl"
    r = run_cli("split", url, "-o", tmp_path / "o", "--max-records", "2")
    assert r.returncode == 1 and b"no records written" in r.stderr  # tests/test_gates.py
    r = run_cli("split", url, "-o", tmp_path / "o2", "--max-records", "2", "--json", "--allow-empty")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout)["counts"] == {"read": 0, "written": 0, "train": 0, "validation": 0, "rejected": 0, "duplicates": 0, "excluded": 0, "blank": 0}
    assert run_cli("validate", url).returncode == 0
    assert run_cli("stats", url).returncode == 0


def test_rejects_path_stays_local_with_an_s3_out(bucket, tmp_path: Path):
    """Issue 17.5: with an s3:// OUT, --rejects PATH may be a local path; it is not uploaded."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"messages":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}]}\n' * 5
                    + b'{"messages":[{"role":"bot","content":"x"}]}\n' * 2)
    rej = tmp_path / "local-rejects.jsonl"
    r = run_cli("split", src, "-o", f"s3://{bucket}/out", "-n", "2", "--validate", "chat", "--rejects", rej)
    assert r.returncode == 0, r.stderr
    assert rej.read_bytes().count(b"\n") == 2
    names = _fs().ls(f"{bucket}/out", detail=False)
    assert not [n for n in names if "rejects" in n]
    m = orjson.loads(_fs().cat_file(f"{bucket}/out/manifest.json"))
    assert m["rejects"]["path"] == str(rej)
    assert run_cli("verify", f"s3://{bucket}/out").returncode == 0


def test_head_and_sample_read_s3(bucket, tmp_path: Path):
    src = tmp_path / "chat.jsonl"
    data = make_chat_jsonl(src, 50, seed=5)
    _fs().put_file(str(src), f"{bucket}/in/chat.jsonl")
    r = run_cli("head", f"s3://{bucket}/in/chat.jsonl", "-n", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"".join(data.splitlines(keepends=True)[:2])
    a = run_cli("sample", f"s3://{bucket}/in/chat.jsonl", "-n", "5", "--seed", "3")
    b = run_cli("sample", src, "-n", "5", "--seed", "3")
    assert a.returncode == 0 and a.stdout == b.stdout and len(a.stdout.splitlines()) == 5


def test_mix_to_s3_matches_a_local_mix(bucket, tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    make_chat_jsonl(a, 30, seed=5)
    make_chat_jsonl(b, 80, seed=6)
    local = tmp_path / "local"
    args = (f"{a}=2", f"{b}=1", "--records", "120", "--seed", "9", "-n", "50", "--dedup", "exact")
    assert run_cli("mix", *args, "-o", local).returncode == 0
    out = f"s3://{bucket}/mix"
    r = run_cli("mix", *args, "-o", out)
    assert r.returncode == 0, r.stderr
    fs = _fs()
    m = _manifest(fs, f"{bucket}/mix")
    mine = orjson.loads((local / "manifest.json").read_bytes())
    assert [f["sha256"] for f in m["files"]] == [f["sha256"] for f in mine["files"]]
    assert m["mix"]["counts"] == mine["mix"]["counts"] and m["mix"]["counts"]["drawn"] == 120
    assert [s["sha256"] for s in m["mix"]["sources"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert run_cli("verify", out).returncode == 0


def test_tokenized_packed_shards_to_s3_match_local(bucket, tmp_path: Path):
    pytest.importorskip("tokenizers")
    from chatmodel import make_model

    model = make_model(tmp_path / "model")
    src = tmp_path / "chat.jsonl"
    make_chat_jsonl(src, 60, seed=8)
    args = ("-n", "5", "--tokenize", str(model), "--seq-len", "4096", "--overflow", "truncate", "--pack")
    local = tmp_path / "local"
    assert run_cli("split", src, "-o", local, *args).returncode == 0
    out = f"s3://{bucket}/tokens"
    r = run_cli("split", src, "-o", out, *args)
    assert r.returncode == 0, r.stderr
    m = _manifest(_fs(), f"{bucket}/tokens")
    mine = orjson.loads((local / "manifest.json").read_bytes())
    assert [f["sha256"] for f in m["files"]] == [f["sha256"] for f in mine["files"]]
    assert m["tokenize"]["tokens"] == mine["tokenize"]["tokens"] and m["tokenize"]["pack"] is True
