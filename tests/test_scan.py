"""`shardkit validate` end to end: exit codes, file:line messages, rejects with original bytes."""

import orjson
from conftest import run_cli

BAD = b'{"messages":[{"role":"bot","content":"x"}]}\n{bad\n\n{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}\n'


def test_validate_reports_file_line_and_writes_rejects(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(BAD)
    rej = tmp_path / "rej.jsonl"
    r = run_cli("validate", src, "--kind", "chat", "--rejects", rej)
    assert r.returncode == 1
    out = r.stdout.decode()
    assert f"{src}:1: messages[0].role: unknown role 'bot' (expected system, user, assistant, tool; did you mean 'assistant'?)" in out
    assert f"{src}:2: invalid JSON at column 2" in out
    rows = [orjson.loads(x) for x in rej.read_bytes().splitlines()]
    assert [(x["line"], x["offset"], x["code"]) for x in rows] == [(1, 0, "unknown_role"), (2, 44, "invalid_json")]
    assert [x["raw"].encode() + b"\n" for x in rows] == BAD.splitlines(keepends=True)[:2]


def test_validate_json_report_and_max_errors(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_bytes(BAD)
    r = run_cli("validate", src, "--json", "--max-errors", "2")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["ok"] is True and doc["max_errors"] == 2


def test_validate_json_array_input(tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_bytes(b'[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": "c"}\n]\n')
    r = run_cli("validate", src, "--json")
    assert r.returncode == 1
    doc = orjson.loads(r.stdout)
    assert doc["ok"] is False


def test_validate_missing_and_broken_array(tmp_path):
    r = run_cli("validate", tmp_path / "nope.jsonl")
    assert r.returncode == 3 and r.stderr.decode().strip() == f"shardkit: error: {tmp_path}/nope.jsonl: no such file"
    src = tmp_path / "broken.json"
    src.write_bytes(b'[{"text": "a"} {"text": "b"}]')
    r = run_cli("validate", src)
    assert r.returncode == 1 and r.stderr.decode().startswith(f"shardkit: error: {src}: expected ',' or ']' after element")
    assert b"Traceback" not in r.stderr


def test_stats_reads_json_arrays_and_finds_duplicates(tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_bytes(
        b'[\n  {"instruction": "a", "input": "", "output": "b"},\n'
        b'  {"output": "b", "input": "", "instruction": "a"},\n  {"instruction": "c", "output": "d"}\n]\n'
    )
    r = run_cli("stats", src, "--json")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    section = doc["inputs"][0]
    assert section["records"] == 3 and section["kinds"]["alpaca"] == 3
    assert section["duplicates"]["records"] == 1
    assert section["duplicates"]["first"][0]["line"] == 3 and section["duplicates"]["first"][0]["duplicates_line"] == 2


def test_validate_against_json_schema(tmp_path):
    schema = tmp_path / "s.json"
    schema.write_bytes(
        b'{"type":"object","required":["text"],"properties":{"text":{"type":"string","minLength":1},'
        b'"meta":{"type":"object","properties":{"n":{"type":"integer"}}}}}'
    )
    src = tmp_path / "d.jsonl"
    src.write_bytes(b'{"text":"ok"}\n{"text":""}\n{"meta":{"n":"x"}}\n')
    r = run_cli("validate", src, "--schema", schema)
    assert r.returncode == 1
    out = r.stdout.decode()
    assert f"{src}:2: text: '' should be non-empty" in out
    assert f"{src}:3: meta.n: 'x' is not of type 'integer'" in out
    assert f"{src}:3: 'text' is a required property" in out
    assert "1 valid, 2 invalid" in out
    schema.write_bytes(b'{"type": 12}')
    r = run_cli("validate", src, "--schema", schema)
    assert r.returncode == 2 and r.stderr.decode().startswith(f"shardkit: error: {schema}: not a valid JSON Schema")
