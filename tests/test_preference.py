"""Preference (DPO/ORPO/SimPO) and KTO records: detection, the pair checks at exact paths, and
the pipeline around them (stats, holdout keyed by prompt, dedup, Parquet)."""

from __future__ import annotations

import json

import orjson
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from shardkit.records.validate import Validator, detect_kind


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def found(obj, kind="auto"):
    res = Validator(kind).check(orjson.dumps(obj))
    return res.ok, res.kind, [(i.code, i.severity, i.path, i.message) for i in res.issues]


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, "preference"),
        # conversational, explicit prompt
        ({"prompt": [u("2+2?")], "chosen": [a("4")], "rejected": [a("5")]}, "preference"),
        # conversational, implicit prompt: both sides carry it
        ({"chosen": [u("2+2?"), a("4")], "rejected": [u("2+2?"), a("5")]}, "preference"),
        ({"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 9, "score_rejected": 2, "id": "x"}, "preference"),
        ({"prompt": "2+2?", "completion": "4", "label": True}, "kto"),
        ({"prompt": [u("2+2?")], "completion": [a("5")], "label": False}, "kto"),
    ],
)
def test_valid_pairs_pass_and_are_recognised(obj, kind):
    assert detect_kind(obj) == kind
    for validator_kind in (kind, "auto"):
        assert found(obj, validator_kind) == (True, kind, [])


@pytest.mark.parametrize(
    ("obj", "code", "path", "message"),
    [
        (
            {"prompt": "2+2?", "chosen": "4", "rejected": "4"},
            "same_sides", "rejected", "chosen and rejected are identical: the pair teaches no preference",
        ),
        (
            {"prompt": "Q", "chosen": "The  answer\n", "rejected": "The answer"},
            "same_sides", "rejected", "chosen and rejected differ only in whitespace: the pair teaches no preference",
        ),
        (
            {"chosen": [u("Q"), a("A")], "rejected": [u("Q"), a("A")]},
            "same_sides", "rejected", "chosen and rejected are identical: the pair teaches no preference",
        ),
        ({"prompt": "Q", "chosen": "", "rejected": "B"}, "empty_side", "chosen", "chosen is empty: the pair teaches nothing"),
        ({"prompt": "Q", "chosen": "A", "rejected": "  "}, "empty_side", "rejected", "rejected is empty: the pair teaches nothing"),
        ({"prompt": [u("Q")], "chosen": [a("A")], "rejected": []}, "empty_side", "rejected", "rejected is empty: the pair teaches nothing"),
        ({"prompt": "", "chosen": "A", "rejected": "B"}, "empty_side", "prompt", "the prompt is empty"),
        (
            {"chosen": [u("Q"), a("A"), u("more?"), a("B")], "rejected": [u("Q"), a("X"), u("more?"), a("C")]},
            "prompt_mismatch", "rejected[1]",
            "the prompt of rejected differs from chosen's at message 1: the two sides answer different conversations",
        ),
        (
            {"chosen": [u("Q"), a("A")], "rejected": [u("Q"), a("B"), u("and?"), a("C")]},
            "prompt_mismatch", "rejected[1]",
            "the prompt of rejected has 3 messages, the other side's 1: the two sides answer different conversations",
        ),
        (
            {"chosen": [u("Q"), a("A"), u("so?")], "rejected": [u("Q"), a("B")]},
            "no_answer", "chosen[2]", "chosen does not end with an assistant message: nothing to prefer",
        ),
        (
            {"chosen": [a("A")], "rejected": [a("B")]},
            "prompt_mismatch", "chosen", "no prompt: the record has no prompt key and chosen holds only assistant messages",
        ),
        (
            {"chosen": "A", "rejected": "B"},
            "missing_key", "prompt", "missing required key 'prompt' (only message-list sides carry their prompt)",
        ),
        ({"prompt": "Q", "chosen": "A"}, "missing_key", "rejected", "missing required key 'rejected'"),
        ({"prompt": "Q", "chosen": 3, "rejected": "B"}, "wrong_type", "chosen", "expected a string or an array of messages, got a number"),
        (
            {"prompt": [u("Q")], "chosen": [{"role": "bot", "content": "A"}], "rejected": [a("B")]},
            "unknown_role", "chosen[0].role", "unknown role 'bot' (expected system, user, assistant, tool; did you mean 'assistant'?)",
        ),
        ({"prompt": "Q", "completion": "A", "label": "yes"}, "wrong_type", "label", "expected a boolean (true: desirable), got a string"),
        ({"prompt": "Q", "completion": "A", "label": 1}, "wrong_type", "label", "expected a boolean (true: desirable), got a number"),
        ({"prompt": "Q", "completion": "", "label": True}, "empty_side", "completion", "the completion is empty"),
    ],
)
def test_bad_pairs_fail_at_the_path(obj, code, path, message):
    ok, _, issues = found(obj)
    assert (ok, issues) == (False, [(code, "error", path, message)])


def test_unknown_keys_are_warnings():
    ok, kind, issues = found({"prompt": "Q", "chosen": "A", "rejected": "B", "lang": "en"})
    assert (ok, kind) == (True, "preference")
    assert issues == [("unknown_key", "warning", "lang", "unknown key 'lang'")]


# ------------------------------------------------------------------ the pipeline


def write(path, records):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def pairs(n=60):
    """n pairs over n // 4 prompts (4 answers each), some conversational."""
    out = []
    for i in range(n):
        q = f"Question number {i // 4}?"
        if i % 5 == 0:
            out.append({"prompt": [u(q)], "chosen": [a(f"good {i}")], "rejected": [a(f"bad {i}")]})
        else:
            out.append({"prompt": q, "chosen": f"good {i}", "rejected": f"bad {i}"})
    return out


def test_stats_counts_the_kinds(tmp_path):
    src = write(tmp_path / "p.jsonl", [*pairs(20), {"prompt": "Q", "completion": "A", "label": False}])
    proc = run_cli("stats", str(src), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["total"]["kinds"] == {"preference": 20, "kto": 1}


def test_holdout_keeps_a_prompts_pairs_together_and_dedup_drops_copies(tmp_path):
    records = pairs(80)
    src = write(tmp_path / "p.jsonl", [*records, records[3], records[10]])
    out = tmp_path / "out"
    proc = run_cli("split", str(src), "-o", str(out), "-n", "1000", "--validate", "preference",
                   "--holdout", "0.25", "--dedup", "exact", "--holdout-seed", "3")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["read"], counts["written"], counts["duplicates"], counts["rejected"]) == (82, 80, 2, 0)
    assert counts["train"] > 0 and counts["validation"] > 0
    split_of = {}
    for entry in manifest["files"]:
        for line in (out / entry["path"]).read_bytes().splitlines():
            obj = orjson.loads(line)
            prompt = obj["prompt"] if type(obj["prompt"]) is str else obj["prompt"][0]["content"]
            split_of.setdefault(prompt, set()).add(entry["split"])
    assert len(split_of) == 20
    assert all(len(splits) == 1 for splits in split_of.values()), split_of


def test_parquet_shards_hold_preference_data_losslessly(tmp_path):
    records = pairs(30)
    src = write(tmp_path / "p.jsonl", records)
    out = tmp_path / "out"
    proc = run_cli("split", str(src), "-o", str(out), "-n", "1000", "--format", "parquet", "--validate", "auto")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(next(out.glob("*.parquet")))
    assert table.num_rows == 30
    rows = table.to_pylist()
    for row, record in zip(rows, records, strict=True):
        for key in ("prompt", "chosen", "rejected"):
            # a field that is a string in some records and an array in others is kept as JSON text
            assert json.loads(row[key]) == record[key]


def test_split_rejects_the_bad_pairs_with_their_reason(tmp_path):
    src = write(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}, {"prompt": "Q", "chosen": "A", "rejected": "A"}])
    out = tmp_path / "out"
    proc = run_cli("split", str(src), "-o", str(out), "-n", "10", "--validate", "auto")
    assert proc.returncode == 0, proc.stderr
    reject = orjson.loads((out / "rejects.jsonl").read_bytes())
    assert reject["line"] == 2 and "identical" in reject["reason"]


_WORDY = st.text(alphabet=st.sampled_from(list("ab é中") + [" ", "\t", "\n", "\u3000", "\u00a0", "\x85", "\u2028", "\x1c"]), max_size=12)


@settings(max_examples=3000, deadline=None)
@given(_WORDY, _WORDY, st.sampled_from(["", " ", "\u3000", "x", "\n\t"]))
def test_same_words_is_whitespace_normalized_equality(a, b, pad):
    """The shortcut from the ends answers as the definition does, whitespace of every kind
    (str.split's) included; `pad` makes pairs that differ only at their ends."""
    from shardkit.records.preference import same_words

    for x, y in ((a, b), (a, pad + a), (a + pad, a), (pad + a + pad, a.strip())):
        assert same_words(x, y) == (" ".join(x.split()) == " ".join(y.split())), (x, y)


@pytest.mark.parametrize(
    ("kind", "record", "fast"),
    [
        ("preference", {"prompt": "q", "chosen": "good", "rejected": "bad", "id": "7", "metadata": {"a": 1}}, True),
        ("preference", {"prompt": "q", "chosen": "good", "rejected": "bad", "meta": {"lang": "en"}}, True),
        ("preference", {"prompt": "q", "chosen": "same  words", "rejected": " same words ", "meta": 1}, False),
        ("kto", {"prompt": "q", "completion": "a", "label": False, "id": 3, "meta": None}, True),
    ],
)
def test_preference_and_kto_gates_take_an_id_and_unknown_keys(kind, record, fast):
    """An id, metadata and a `meta` object beside the pair: the fast path gives the
    explainer's answer; a pair equal but for whitespace never passes it."""
    v = Validator(kind)
    raw = orjson.dumps(record)
    thorough = v._check_thoroughly(raw, None)
    assert v.check(raw) == thorough
    shortcut = v.gate(orjson.loads(raw)) or v.gate_extra(orjson.loads(raw))
    assert (shortcut is not None) is fast
    assert thorough.ok is fast
