"""split --tokenize MODEL_DIR --seq-len L (issue 23): token rows a trainer reads as they are.
The tokenizer and template are made here (tests/chatmodel.py); nothing is downloaded."""

from __future__ import annotations

import hashlib
import json

import orjson
import pyarrow.parquet as pq
import pytest
from chatmodel import CHATML, make_model
from conftest import run_cli

pytest.importorskip("tokenizers")

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def u(t):
    return {"role": "user", "content": t}


def a(t):
    return {"role": "assistant", "content": t}


CHATS = [
    {"messages": [{"role": "system", "content": "Be brief."}, u("What is the weather like in Paris?"), a("It is sunny and warm.")]},
    {"messages": [u("Hello!"), a("Hello! How can I help you today?"), u("Split the file."), a("Split the file into shards.")]},
    {"messages": [u("Validate every record before training the model."), a("Done.")]},
]
TEXT = {"text": "The quick brown fox jumps over the lazy dog."}
ALPACA = {"instruction": "Say hello", "input": "", "output": "Hello!"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


def render(messages) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHATML).render(messages=messages, add_generation_prompt=False)


def write(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def rows(out) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    found = []
    for f in m["files"]:
        found += pq.read_table(out / f["path"]).to_pylist()
    return found


def learned_spans(ids, labels):
    """Runs of consecutive tokens with a loss."""
    spans, cur = [], []
    for i, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return spans


def test_rows_decode_to_the_rendering_and_only_assistant_turns_have_a_loss(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", [*CHATS, TEXT, ALPACA])
    out = tmp_path / "out"
    proc = run_cli("split", str(src), "-o", str(out), "-n", "100", "--tokenize", str(model), "--seq-len", "512")
    assert proc.returncode == 0, proc.stderr
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    got = rows(out)
    assert len(got) == 5
    for record, row in zip(CHATS, got[:3], strict=True):
        assert tok.decode(row["input_ids"], skip_special_tokens=False) == render(record["messages"])
        assert row["input_ids"] == tok.encode(render(record["messages"]), add_special_tokens=False).ids
        answers = [m["content"] + "<|im_end|>\n" for m in record["messages"] if m["role"] == "assistant"]
        assert [tok.decode(s, skip_special_tokens=False) for s in learned_spans(row["input_ids"], row["labels"])] == answers
    text_row = got[3]
    assert text_row["labels"] == text_row["input_ids"]  # a text record: every token a label
    alpaca_row = got[4]
    assert [tok.decode(s, skip_special_tokens=False) for s in learned_spans(alpaca_row["input_ids"], alpaca_row["labels"])] == ["Hello!<|im_end|>\n"]
    schema = pq.read_schema(out / json.loads((out / "manifest.json").read_text())["files"][0]["path"])
    assert str(schema.field("input_ids").type) == "list<element: int32>"
    assert str(schema.field("labels").type) == "list<element: int32>"


def test_the_manifest_records_the_tokenizer_and_the_totals(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", CHATS * 4)
    out = tmp_path / "out"
    assert run_cli("split", str(src), "-o", str(out), "-n", "5", "--tokenize", str(model), "--seq-len", "512").returncode == 0
    m = json.loads((out / "manifest.json").read_text())
    t = m["tokenize"]
    assert t["tokenizer_sha256"] == hashlib.sha256((model / "tokenizer.json").read_bytes()).hexdigest()
    assert t["template_sha256"] == hashlib.sha256(CHATML.encode()).hexdigest()
    assert (t["seq_len"], t["overflow"], t["pack"]) == (512, "reject", False)
    got = rows(out)
    assert t["tokens"]["input"] == sum(len(r["input_ids"]) for r in got)
    assert t["tokens"]["label"] == sum(sum(1 for x in r["labels"] if x != -100) for r in got)
    assert m["params"]["tokenize"] == {"model": str(model), "seq_len": 512, "overflow": "reject"}


def test_overflow_reject_truncate_drop(model, tmp_path):
    long_answer = {"messages": [u("Tell me."), a("Split the file into shards of fifty thousand records. " * 20)]}
    long_prompt = {"messages": [u("Validate every record before training the model. " * 20), a("Done.")]}
    src = write(tmp_path / "chat.jsonl", [CHATS[0], long_answer, long_prompt])
    limit = 64
    outs = {}
    for mode in ("reject", "truncate", "drop"):
        out = tmp_path / mode
        proc = run_cli("split", str(src), "-o", str(out), "-n", "10", "--tokenize", str(model), "--seq-len", str(limit),
                       "--overflow", mode)
        assert proc.returncode == 0, proc.stderr
        outs[mode] = out
        m = json.loads((out / "manifest.json").read_text())
        assert m["counts"]["read"] == 3 == m["counts"]["written"] + m["counts"]["rejected"] + m["counts"]["excluded"]
    rejected = [orjson.loads(x) for x in (outs["reject"] / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["code"]) for r in rejected] == [(2, "too_many_tokens"), (3, "too_many_tokens")]
    assert "over --seq-len 64" in rejected[0]["reason"]
    truncated = rows(outs["truncate"])
    assert [len(r["input_ids"]) for r in truncated][1] == limit  # the long answer, cut
    cut = [orjson.loads(x) for x in (outs["truncate"] / "rejects.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["code"]) for r in cut] == [(3, "no_loss")]  # its answer lies beyond the cut: always rejected
    dropped = [orjson.loads(x) for x in (outs["drop"] / "excluded.jsonl").read_bytes().splitlines()]
    assert [(r["line"], r["code"]) for r in dropped] == [(2, "overflow"), (3, "overflow")]


def test_composes_and_is_identical_on_every_engine(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", CHATS * 10)
    outs = {}
    for name, extra in (("inline", ()), ("engine", ("--engine", "local"))):
        out = tmp_path / name
        proc = run_cli("split", str(src), "-o", str(out), "-n", "7", "--tokenize", str(model), "--seq-len", "256",
                       "--shuffle", "--seed", "2", "--holdout", "0.2", "--dedup", "exact", *extra)
        assert proc.returncode == 0, proc.stderr
        outs[name] = out
    names = sorted(p.name for p in outs["inline"].iterdir() if p.suffix == ".parquet")
    assert names and all((outs["inline"] / n).read_bytes() == (outs["engine"] / n).read_bytes() for n in names)
    m = json.loads((outs["inline"] / "manifest.json").read_text())
    assert m["counts"]["duplicates"] == 27 and m["counts"]["written"] == 3
    jsonl = tmp_path / "jsonl"
    assert run_cli("split", str(src), "-o", str(jsonl), "-n", "50", "--tokenize", str(model), "--seq-len", "256",
                   "--format", "jsonl").returncode == 0
    first = orjson.loads((jsonl / "chat-00000.jsonl").read_bytes().splitlines()[0])
    assert set(first) == {"input_ids", "labels"}


def test_hf_datasets_reads_the_shards(model, tmp_path):
    datasets = pytest.importorskip("datasets")
    src = write(tmp_path / "chat.jsonl", CHATS)
    out = tmp_path / "out"
    assert run_cli("split", str(src), "-o", str(out), "-n", "100", "--tokenize", str(model), "--seq-len", "512").returncode == 0
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 3 and ds.column_names == ["input_ids", "labels"]
    assert ds[0]["input_ids"] == rows(out)[0]["input_ids"]


def test_detokenize_marks_what_has_no_loss(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", CHATS)
    out = tmp_path / "out"
    assert run_cli("split", str(src), "-o", str(out), "-n", "100", "--tokenize", str(model), "--seq-len", "512").returncode == 0
    shard = out / "chat-00000.parquet"
    proc = run_cli("detokenize", str(shard), "--row", "1")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert "⟦<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n⟧Hello! How can I help you today?<|im_end|>\n" in text
    doc = json.loads(run_cli("detokenize", str(shard), "--row", "1", "--json").stdout)
    import jsonschema
    from conftest import ROOT

    schema = json.loads((ROOT / "docs" / "schemas" / "detokenize.schema.json").read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)
    assert "".join(s["text"] for s in doc["segments"]) == render(CHATS[1]["messages"])
    assert [s["text"] for s in doc["segments"] if s["loss"]] == [m["content"] + "<|im_end|>\n" for m in CHATS[1]["messages"] if m["role"] == "assistant"]
    beyond = run_cli("detokenize", str(shard), "--row", "9")
    assert beyond.returncode == 2 and b"has 3 row(s)" in beyond.stderr
    lone = tmp_path / "lone.parquet"
    lone.write_bytes(shard.read_bytes())
    assert run_cli("detokenize", str(lone)).returncode == 2
    assert run_cli("detokenize", str(lone), "--tokenizer", str(model)).returncode == 0


def test_refusals(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", CHATS)
    for args, message in ((("--tokenize", str(model)), b"--tokenize needs --seq-len"),
                          (("--seq-len", "10"), b"--seq-len, --overflow and --pack go with --tokenize"),
                          (("--tokenize", str(model), "--seq-len", "10", "--overflow", "squash"), b"--overflow must be one of")):
        proc = run_cli("split", str(src), "-o", str(tmp_path / "x"), "-n", "10", *args)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    no_template = make_model(tmp_path / "plain", None)
    out = tmp_path / "y"
    assert run_cli("split", str(src), "-o", str(out), "-n", "10", "--tokenize", str(no_template), "--seq-len", "64",
                   "--allow-empty").returncode == 0
    codes = {orjson.loads(x)["code"] for x in (out / "rejects.jsonl").read_bytes().splitlines()}
    assert codes == {"no_template"}


def test_packed_rows_hold_whole_examples_with_positions_restarting(model, tmp_path):
    src = write(tmp_path / "chat.jsonl", [*CHATS, TEXT, ALPACA] * 6)
    flat, packed = tmp_path / "flat", tmp_path / "packed"
    assert run_cli("split", str(src), "-o", str(flat), "-n", "1000", "--tokenize", str(model), "--seq-len", "160").returncode == 0
    proc = run_cli("split", str(src), "-o", str(packed), "-n", "4", "--tokenize", str(model), "--seq-len", "160", "--pack")
    assert proc.returncode == 0, proc.stderr
    examples = rows(flat)
    got = rows(packed)
    assert len(got) < len(examples)
    unpacked = []
    for row in got:
        n = len(row["input_ids"])
        assert n <= 160 and sum(row["seq_lens"]) == n == len(row["labels"]) == len(row["position_ids"])
        start = 0
        for length in row["seq_lens"]:
            assert row["position_ids"][start : start + length] == list(range(length))  # restarts per example
            assert row["labels"][start] == -100  # nothing learned across examples
            unpacked.append((row["input_ids"][start : start + length], row["labels"][start + 1 : start + length]))
            start += length
    # whole examples, in order, none split or lost; greedy: the next example would not have fit
    assert [ids for ids, _ in unpacked] == [e["input_ids"] for e in examples]
    assert [labels for _, labels in unpacked] == [e["labels"][1:] for e in examples]
    for this, nxt in zip(got, got[1:], strict=False):
        assert len(this["input_ids"]) + nxt["seq_lens"][0] > 160
    m = json.loads((packed / "manifest.json").read_text())
    t = m["tokenize"]
    assert (t["pack"], t["rows"], t["examples"], m["counts"]["written"]) == (True, len(got), len(examples), len(examples))
    assert t["tokens"]["padding"] == sum(160 - len(r["input_ids"]) for r in got)
    assert sum(f["examples"] for f in m["files"]) == len(examples) and [f["records"] for f in m["files"]][0] == 4
    assert run_cli("verify", str(packed)).returncode == 0
    engine = tmp_path / "engine"
    assert run_cli("split", str(src), "-o", str(engine), "-n", "4", "--tokenize", str(model), "--seq-len", "160", "--pack",
                   "--engine", "local").returncode == 0
    for f in m["files"]:
        assert (packed / f["path"]).read_bytes() == (engine / f["path"]).read_bytes()
    schema = pq.read_schema(packed / m["files"][0]["path"])
    assert schema.names == ["input_ids", "labels", "position_ids", "seq_lens"]
