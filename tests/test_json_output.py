"""Every --json output is one object `{"command", "ok", ...}` valid against its schema in
docs/schemas/, errors included (issue 18.4). The commands run for real, as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import jsonschema
import orjson
import pytest
from conftest import ROOT, run_cli

SCHEMAS = ROOT / "docs" / "schemas"
GOOD = b'{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n'
BAD = b'{"messages":[{"role":"bot","content":"x"}]}\n'


def schema(command: str) -> dict:
    return json.loads((SCHEMAS / f"{command.replace(' ', '-')}.schema.json").read_text())


def check(r, command: str, *, ok: bool, code: int) -> dict:
    assert r.returncode == code, (r.stdout, r.stderr)
    doc = orjson.loads(r.stdout)  # exactly one JSON document on stdout
    assert doc["command"] == command and doc["ok"] is ok
    name = "error" if "error" in doc else command
    jsonschema.validate(doc, schema(name), cls=jsonschema.Draft202012Validator)
    return doc


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "a.jsonl").write_bytes(GOOD * 9 + BAD)
    (tmp_path / "logs").mkdir()
    old = tmp_path / "logs" / "old.log"
    old.write_bytes(b"x\n")
    t = time.time() - 10 * 86400
    os.utime(old, (t, t))
    return tmp_path


def test_every_schema_is_a_valid_draft_2020_12_schema():
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert len(files) >= 20
    for f in files:
        jsonschema.Draft202012Validator.check_schema(json.loads(f.read_text()))


def test_data_commands(work: Path):
    a, out = work / "a.jsonl", work / "out"
    split = check(run_cli("split", a, "-o", out, "-n", "4", "--validate", "chat", "--json"), "split", ok=True, code=0)
    assert split["counts"]["rejected"] == 1
    check(run_cli("manifest", out, "--json"), "manifest", ok=True, code=0)
    check(run_cli("verify", out, "--json"), "verify", ok=True, code=0)
    v = check(run_cli("validate", a, "--kind", "chat", "--json"), "validate", ok=False, code=1)
    assert v["failed"] and v["errors"] >= 1
    check(run_cli("validate", a, "--kind", "chat", "--max-errors", "1", "--json"), "validate", ok=True, code=0)
    check(run_cli("stats", a, "--json"), "stats", ok=True, code=0)
    check(run_cli("overlap", a, "--against", a, "--json"), "overlap", ok=False, code=1)
    check(run_cli("overlap", a, "--against", a, "--ngram", "2", "--json"), "overlap", ok=False, code=1)
    mixed = check(run_cli("mix", f"{a}=1", "-o", work / "mix", "--records", "12", "-n", "5", "--json"), "mix", ok=True, code=0)
    assert mixed["mix"]["counts"]["drawn"] == 12
    if importlib.util.find_spec("plotly"):
        check(run_cli("report", a, "-o", work / "r.html", "--json"), "report", ok=True, code=0)
    check(run_cli("rotate", work / "logs", "--older-than", "7d", "--compress", "--json"), "rotate", ok=True, code=0)


def test_queue_commands(work: Path):
    root = work / "q"
    assert run_cli("queue", "init", "--root", root).returncode == 0
    for k, name in enumerate(("one.jsonl", "two.jsonl")):
        shutil.copy(work / "a.jsonl", root / "inbox" / name)
        with open(root / "inbox" / name, "ab") as f:
            f.write(GOOD * k)  # not the same bytes: doctor would report a duplicate
        t = time.time() - 3600
        os.utime(root / "inbox" / name, (t, t))
    (root / "shardkit.toml").write_text("max_errors = 1\n")
    q = ("--root", root)
    ingest = check(run_cli("queue", "ingest", *q, "--json"), "queue ingest", ok=True, code=0)
    assert sorted(r["name"] for r in ingest["routed"]) == ["one.jsonl", "two.jsonl"]
    log = check(run_cli("queue", "log", *q, "--item", "one.jsonl", "--json"), "queue log", ok=True, code=0)
    assert [e["op"] for e in log["entries"]] == ["ingest"]
    check(run_cli("queue", "status", *q, "--json"), "queue status", ok=True, code=0)
    listed = check(run_cli("queue", "list", *q, "--json"), "queue list", ok=True, code=0)
    assert len(listed["files"]) == 2
    check(run_cli("queue", "show", "one.jsonl", *q, "--json"), "queue show", ok=True, code=0)
    table = run_cli("queue", "list", *q)  # without --json: a table a person reads
    lines = table.stdout.decode().splitlines()
    assert table.returncode == 0 and lines[0].split() == ["state", "name", "records", "size", "attempts"]
    assert sorted(line.split()[1] for line in lines[1:3]) == ["one.jsonl", "two.jsonl"]
    shown = run_cli("queue", "show", "one.jsonl", *q).stdout.decode()
    assert shown.splitlines()[0].split() == ["state", "normal"] and "ingest" in shown  # the record, then its history
    check(run_cli("queue", "hold", "two.jsonl", *q, "--json"), "queue hold", ok=True, code=0)
    check(run_cli("queue", "release", "two.jsonl", *q, "--json"), "queue release", ok=True, code=0)
    claim = check(run_cli("queue", "claim", *q, "--json"), "queue claim", ok=True, code=0)
    assert claim["claimed"] is True and claim["token"]
    assert run_cli("queue", "fail", claim["path"], "--token", claim["token"], *q).returncode == 0
    check(run_cli("queue", "retry", "--all", *q, "--json"), "queue retry", ok=True, code=0)
    check(run_cli("queue", "requeue-stale", *q, "--json"), "queue requeue-stale", ok=True, code=0)
    check(run_cli("queue", "quarantine", "two.jsonl", *q, "--json"), "queue quarantine", ok=True, code=0)
    check(run_cli("queue", "redrive", "two.jsonl", *q, "--json"), "queue redrive", ok=True, code=0)
    check(run_cli("queue", "prune", "--keep", "0", *q, "--json"), "queue prune", ok=True, code=0)
    check(run_cli("queue", "doctor", *q, "--json"), "queue doctor", ok=True, code=0)
    for _ in range(3):  # take what is pending until nothing is: then ok false, exit 1
        r = run_cli("queue", "claim", *q, "--json")
        if r.returncode:
            break
    none = check(r, "queue claim", ok=False, code=1)
    assert none["claimed"] is False


@pytest.mark.parametrize("args,command,code,kind,file", [
    (["split", "{w}/missing.jsonl", "-o", "{w}/o", "-n", "5"], "split", 3, "input", "{w}/missing.jsonl"),
    (["split", "{w}/a.jsonl", "-o", "{w}/o", "-b", "64"], "split", 2, "usage", None),
    (["split", "{w}/a.jsonl", "-o", "{w}/o", "-n", "abc"], "split", 2, "usage", None),
    (["split", "{w}/a.jsonl", "-o", "{w}/o", "-n", "5", "--validate", "chat", "--max-errors", "0"], "split", 1, "gate", "{w}/o"),
    (["validate", "{w}/missing.jsonl"], "validate", 3, "input", "{w}/missing.jsonl"),
    (["queue", "status", "--root", "{w}/nowhere"], "queue status", 3, "input", "{w}/nowhere"),
    (["queue", "show", "nothing.jsonl", "--root", "{w}/q"], "queue show", 3, "input", "nothing.jsonl"),
])
def test_errors_under_json_are_one_object_on_stdout_with_the_same_exit_code(work, args, command, code, kind, file):
    run_cli("queue", "init", "--root", work / "q")
    r = run_cli(*[a.replace("{w}", str(work)) for a in args], "--json")
    doc = check(r, command, ok=False, code=code)
    err = doc["error"]
    assert err["code"] == kind and err["exit_code"] == code
    assert err["file"] == (file.replace("{w}", str(work)) if file else None)
    assert r.stderr.decode().count("\n") >= 1 and "Traceback" not in r.stderr.decode()  # the one-line error too


def test_an_error_names_file_and_line(work: Path):
    big = work / "big.jsonl"
    big.write_bytes(GOOD + b'{"x": "' + b"y" * 300 + b'"}\n')
    r = run_cli("split", big, "-o", work / "o", "-n", "5", "-b", "200B", "--oversize", "error", "--json")
    err = check(r, "split", ok=False, code=1)["error"]
    assert (err["file"], err["line"]) == (str(big), 2)
