"""shardkit overlap: eval records found in the training data, by record or by key, with file:line both sides."""

from __future__ import annotations

import gzip
import importlib.util

import orjson
import pytest
from conftest import ROOT

from shardkit.core.errors import InputError, UsageError
from shardkit.pipeline.overlap import find_overlap, key_function, normalize_text, record_hash


def _load_mixed():
    spec = importlib.util.spec_from_file_location("shardkit_fixture_mixed", ROOT / "fixtures" / "mixed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mixed = _load_mixed()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("overlap")
    truth = mixed.write_mixed(base / "train.jsonl", base / "eval.jsonl", records=400, seed=3)
    return base, truth


def line_of(path, number: int) -> dict:
    return orjson.loads(path.read_bytes().splitlines()[number - 1])


def test_record_key_finds_exactly_the_copied_eval_records(data):
    base, truth = data
    result = find_overlap([base / "train.jsonl"], [base / "eval.jsonl"], key="record", examples=100)
    assert result.overlapping_eval_records == truth["eval_exact"] == 20
    assert result.overlapping_keys == 20
    assert not result.ok
    assert sum(t.records for t in result.eval) == truth["eval_records"]
    assert sum(t.records for t in result.train) == truth["lines"]
    # every example names both sides, and they really are the same record
    assert len(result.examples) == 20
    for ex in result.examples:
        eval_file, eval_line = ex["eval"].rsplit(":", 1)
        train_file, train_line = ex["train"].rsplit(":", 1)
        assert eval_file.endswith("eval.jsonl") and train_file.endswith("train.jsonl")
        assert line_of(base / "eval.jsonl", int(eval_line)) == line_of(base / "train.jsonl", int(train_line))


@pytest.mark.parametrize("key", ["first-user", "prompt"])
def test_question_keys_also_find_reworded_eval_records(data, key):
    base, truth = data
    result = find_overlap([base / "train.jsonl"], [base / "eval.jsonl"], key=key)
    assert result.overlapping_eval_records == truth["eval_exact"] + truth["eval_same_question"] == 40
    assert result.matching_train_records >= 40
    assert len(result.examples) == 10  # default cap
    d = result.to_dict()
    assert d["eval_records"] - d["overlapping_eval_records"] == truth["eval_fresh"]


def test_no_overlap_is_ok_and_a_field_key_compares_that_field(tmp_path):
    train = tmp_path / "t.jsonl"
    train.write_bytes(b'{"prompt": "a", "completion": "b", "src": "x"}\n{"text": "t"}\nnot json\n')
    ev = tmp_path / "e.jsonl"
    ev.write_bytes(b'{"prompt": "c", "completion": "d", "src": "X "}\n')
    assert find_overlap([train], [ev]).ok
    by_src = find_overlap([train], [ev], key="src")
    assert by_src.overlapping_eval_records == 1  # "X " normalises to "x"
    assert by_src.to_dict()["train_unkeyed"] == 2  # the text record has no src; "not json" is not an object
    assert "1 of 1 eval record(s) appear" in by_src.lines()[0]


def test_first_user_per_kind():
    first = key_function("first-user")
    assert first({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": " Hi  THERE "},
                               {"role": "assistant", "content": "x"}]}) == b"hi there"
    assert first({"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "x"}]}) == b"hi there"
    assert first({"instruction": "Hi", "input": "there", "output": "x"}) == b"hi there"
    assert first({"prompt": "hi there", "completion": "x"}) == b"hi there"
    assert first({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]}) == b"hi there"
    assert first({"text": "hi there"}) is None
    prompt = key_function("prompt")
    assert prompt({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                {"role": "assistant", "content": "A"}, {"role": "user", "content": "later"}]}) == b"s\nq".replace(b"\n", b" ")


def test_normalize_text():
    assert normalize_text("  What\tis\n\nTHIS?  ") == "what is this?"
    assert normalize_text("ﬁne Straße") == "fine strasse"  # NFKC ligature, case-folded ß
    assert normalize_text("cafe\u0301") == normalize_text("café")


def test_record_hash_ignores_key_order_and_whitespace_only():
    assert record_hash(orjson.loads(b'{"a": 1, "b": [1, 2]}')) == record_hash(orjson.loads(b'{"b":[1,2],"a":1}'))
    assert record_hash({"a": 1}) != record_hash({"a": 1.0})
    assert len(record_hash({"a": 1})) == 16


def test_reads_json_arrays_and_compressed_inputs(tmp_path):
    records = [{"instruction": f"q{i}", "input": "", "output": "a"} for i in range(5)]
    ev = tmp_path / "eval.json"
    ev.write_bytes(orjson.dumps(records[:2], option=orjson.OPT_INDENT_2))
    train = tmp_path / "train.jsonl.gz"
    train.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))
    result = find_overlap([train], [ev])
    assert result.overlapping_eval_records == 2
    assert result.examples[0] == {"eval": f"{ev}:2", "train": f"{train}:1"}
    assert result.eval[0].sha256 is not None


def test_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        find_overlap([tmp_path / "missing.jsonl"], [tmp_path / "x"])
    with pytest.raises(UsageError, match="give at least one eval"):
        find_overlap([tmp_path], [])
    with pytest.raises(UsageError, match="--key"):
        key_function("")


def test_real_data_duplicates_overlap_with_themselves():
    path = ROOT.parent / "shared" / "realdata" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present (shared real-data folder)")
    result = find_overlap([path], [path])
    # every record meets itself; 1,800 records, 437 of them copies: 1,363 distinct keys
    assert result.eval_keys == 1800 - 437
    assert result.overlapping_eval_records == 1800


def test_a_bom_line_is_still_compared_and_bad_lines_are_counted_apart(tmp_path):
    """A train line with a UTF-8 BOM used to be 'without the key' and never compared: the
    leak passed. It is the same record; lines that are not JSON are counted as such."""
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    ev.write_bytes(b'{"text": "leak", "n": 1}\n{"text": "kept"}\n')
    tr.write_bytes(b'\xef\xbb\xbf{"n":1,"text":"leak"}\nnot json\n{"text": "other"}\n')
    r = find_overlap([tr], [ev])
    assert not r.ok and r.overlapping_eval_records == 1 and r.examples == [{"eval": f"{ev}:1", "train": f"{tr}:1"}]
    assert r.train[0].invalid == 1 and r.train[0].unkeyed == 1
    assert "  not valid JSON (not compared): eval 0, train 1" in r.lines()


@pytest.mark.parametrize("key", ["record", "nosuchfield"])
def test_a_key_no_eval_record_has_is_refused_not_passed(tmp_path, key):
    """A typo'd --key compared nothing and exited 0; eval files that are all invalid too."""
    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    ev.write_bytes(b'{"text": "a"}\n' if key != "record" else b"not json\n[1, 2]\n")
    tr.write_bytes(b'{"text": "a"}\n')
    with pytest.raises(UsageError, match="nothing to compare"):
        find_overlap([tr], [ev], key=key)


def test_split_exclude_matches_a_bom_line_and_warns_of_what_it_could_not_compare(tmp_path):
    from conftest import run_cli

    ev, tr = tmp_path / "eval.jsonl", tmp_path / "train.jsonl"
    ev.write_bytes(b'{"text": "leak"}\n')
    tr.write_bytes(b'\xef\xbb\xbf{"text": "leak"}\nnot json\n{"text": "other"}\n')
    out = tmp_path / "out"
    r = run_cli("split", tr, "-o", out, "-n", "10", "--exclude", ev, "--json")
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["counts"]["excluded"] == 1
    assert any("1 record(s) kept without a comparison (1 not valid JSON" in w for w in doc["warnings"])
    assert b"leak" not in (out / "train-00000.jsonl").read_bytes()
    r = run_cli("split", tr, "-o", tmp_path / "o2", "-n", "10", "--exclude", ev, "--exclude-key", "nosuch")
    assert r.returncode == 2 and b"nothing to compare" in r.stderr
