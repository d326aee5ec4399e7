"""Decontamination by word n-grams (issue 21.3): `overlap --ngram N` reports, `split
--decontaminate EVAL --ngram N` sets aside. Known contaminated records are planted; the
results are checked exactly."""

from __future__ import annotations

import json
import subprocess

import orjson
import pyarrow.parquet as pq
from conftest import run_cli

from shardkit.pipeline.overlap import NgramIndex, find_contamination
from shardkit.records.ngrams import ngram_hashes, words

Q1 = "What is the boiling point of water at sea level in degrees Celsius as measured by standard instruments"
Q2 = "Name the longest river in South America and the ocean into which it finally flows after its long journey"
Q3 = "Who wrote Hamlet"  # too short for 13-grams: never matched


def chat(user: str, answer: str = "Fine.") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def write(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def planted(tmp_path):
    eval_file = write(tmp_path / "eval.jsonl", [{"question": Q1, "answer": "100"}, {"question": Q2, "answer": "Amazon"},
                                                 {"question": Q3, "answer": "Shakespeare"}])
    twelve = " ".join(Q1.split()[:12])  # 12 of the 13 words: not contaminated
    train = [
        chat("Tell me a joke about cats and dogs living together in one small apartment in the city"),
        chat("QUIZ: what is the boiling-point of water, at sea level, in degrees celsius?? As measured by standard instruments!"),
        chat(twelve + " roughly speaking"),
        chat("Rivers?", "Sure: name the longest river in South America and the ocean into which it finally flows, that is the task."),
        chat("Who wrote Hamlet", "Who wrote Hamlet? Shakespeare did, around 1600, in London."),
        {"text": "the boiling point of water at sea level in degrees celsius as measured by standard instruments is 100"},
    ]
    return eval_file, write(tmp_path / "train.jsonl", train)


def test_words_are_case_folded_and_punctuation_free():
    assert words("Hello, World! It's  a_b—c 3.5") == ["hello", "world", "it", "s", "a", "b", "c", "3", "5"]
    a = ngram_hashes(words("The quick, brown FOX"), 2)
    b = ngram_hashes(words("the quick brown fox"), 2)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3
    assert len(ngram_hashes(words("too short"), 3)) == 0


def test_overlap_ngram_finds_exactly_the_planted_records(tmp_path):
    eval_file, train = planted(tmp_path)
    result = find_contamination([str(train)], [str(eval_file)], ngram=13)
    assert result.contaminated_records == 3
    assert [(e["train"], e["eval"]) for e in result.examples] == [
        (f"{train}:2", f"{eval_file}:1"),
        (f"{train}:4", f"{eval_file}:2"),
        (f"{train}:6", f"{eval_file}:1"),
    ]
    assert result.examples[0]["ngram"] == "what is the boiling point of water at sea level in degrees celsius"
    assert result.to_dict()["eval_too_short"] == 1
    # with a shorter n, the Hamlet question matches too
    assert find_contamination([str(train)], [str(eval_file)], ngram=3).contaminated_records == 5


def test_overlap_cli_exits_1_and_explains(tmp_path):
    eval_file, train = planted(tmp_path)
    proc = run_cli("overlap", str(train), "--against", str(eval_file), "--ngram", "13", "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert (doc["command"], doc["ok"], doc["contaminated_records"], doc["ngram"]) == ("overlap", False, 3, 13)
    text = run_cli("overlap", str(train), "--against", str(eval_file), "--ngram", "13").stdout.decode()
    assert "3 of 6 training record(s) share a word 13-gram with the eval set" in text
    clean = write(tmp_path / "clean.jsonl", [chat("nothing in common with the eval set at all, not one bit, really")])
    assert run_cli("overlap", str(clean), "--against", str(eval_file), "--ngram", "13").returncode == 0
    bad = run_cli("overlap", str(train), "--against", str(eval_file), "--ngram", "13", "--key", "prompt")
    assert bad.returncode == 2 and b"does not take --key" in bad.stderr


def test_split_decontaminate_sets_aside_and_accounts(tmp_path):
    eval_file, train = planted(tmp_path)
    outs = {}
    for name, extra in (("inline", ()), ("engine", ("--engine", "local")), ("parquet", ("--format", "parquet"))):
        out = tmp_path / name
        proc = run_cli("split", str(train), "-o", str(out), "-n", "2", "--decontaminate", str(eval_file), *extra)
        assert proc.returncode == 0, proc.stderr
        m = json.loads((out / "manifest.json").read_text())
        c = m["counts"]
        assert (c["read"], c["written"], c["excluded"]) == (6, 3, 3)
        assert c["read"] == c["written"] + c["rejected"] + c["duplicates"] + c["excluded"] + c["blank"]
        side = [orjson.loads(x) for x in (out / "contaminated.jsonl").read_bytes().splitlines()]
        assert [(e["line"], e["code"], e["matches"].rsplit(":", 1)[1]) for e in side] == [
            (2, "contaminated", "1"), (4, "contaminated", "2"), (6, "contaminated", "1"),
        ]
        assert all(e["matches"].startswith(str(eval_file)) for e in side)
        assert orjson.loads(side[1]["raw"]) == chat("Rivers?", "Sure: name the longest river in South America and the ocean into which it finally flows, that is the task.")
        assert m["contaminated"]["records"] == 3 and m["decontaminate"]["ngram"] == 13
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
        assert "contaminated.jsonl" in (out / "SHA256SUMS").read_text()
        outs[name] = out
    for f in ("train-00000.jsonl", "train-00001.jsonl", "contaminated.jsonl"):
        assert (outs["inline"] / f).read_bytes() == (outs["engine"] / f).read_bytes()
    rows = [r for f in sorted(outs["parquet"].glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 3


def test_ngram_index_memory_is_the_eval_side_only(tmp_path):
    eval_file, _ = planted(tmp_path)
    from shardkit.core.io import inspect_input

    index = NgramIndex(13).load([inspect_input(str(eval_file))])
    # Q1 + "100": 19 words -> 7 thirteen-grams; Q2 + "Amazon": 20 words -> 8; Q3: 4 words -> none
    assert len(index) == 7 + 8
    assert index.match(chat("unrelated words " * 10)) is None
