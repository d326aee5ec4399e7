"""tokens.py: loading a real (test-built) tokenizer, the text of each record kind, counting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import run_cli

from shardkit.core.errors import InputError, UsageError
from shardkit.records.tokens import count_tokens, load_tokenizer, record_text, text_parts

SENTENCES = [
    "the cat sat on the mat",
    "hello world , how are you ?",
    "shards keep the trainer fast and the data healthy",
]
_WORDS = re.compile(r"\w+|[^\w\s]+")


def word_count(text: str) -> int:
    """What the word-level test tokenizer gives for `text` (its Whitespace pre-tokenizer)."""
    return len(_WORDS.findall(text))


def build_word_tokenizer(path: Path, *, truncate_at: int | None = None) -> Path:
    """Train a WordLevel tokenizer on SENTENCES and save it as tokenizer.json.

    One token per word or punctuation run (unknown words become [UNK]), so expected counts
    are easy to compute. It carries a [CLS] ... [SEP] post-processor that count_tokens
    must not count, and optionally truncation that load_tokenizer must switch off.
    """
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors, trainers

    tokenizer = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[CLS]", "[SEP]"])
    tokenizer.train_from_iterator(SENTENCES, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    if truncate_at is not None:
        tokenizer.enable_truncation(truncate_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def build_bpe_tokenizer(path: Path) -> Path:
    """A small byte-level BPE, trained here: the kind of tokenizer real models ship."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(SENTENCES * 5, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


# ------------------------------------------------------------------ load_tokenizer


def test_load_from_file_and_from_model_folder(tmp_path: Path) -> None:
    file = build_word_tokenizer(tmp_path / "tok" / "tokenizer.json")
    folder = build_word_tokenizer(tmp_path / "models" / "Tiny-0.1B" / "tokenizer.json").parent
    text = "the cat sat on the zebra"
    assert count_tokens(load_tokenizer(file), [text]) == [6]
    assert count_tokens(load_tokenizer(str(folder)), [text]) == [6]


def test_folder_without_tokenizer_json_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(InputError) as e:
        load_tokenizer(tmp_path / "model")
    assert str(e.value) == (
        f"{tmp_path / 'model'}: no tokenizer.json in this folder "
        "(expected a Hugging Face model folder such as models/Qwen3-0.6B/)"
    )
    assert e.value.exit_code == 3


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope: no such file or folder \(expected tokenizer.json"):
        load_tokenizer(tmp_path / "nope")


def test_unreadable_tokenizer_file_is_an_input_error(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(InputError, match=r"tokenizer.json: not a Hugging Face tokenizer file \("):
        load_tokenizer(bad)


def test_missing_tokenizers_package_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    file = tmp_path / "tokenizer.json"
    file.write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import now raises ImportError
    with pytest.raises(UsageError) as e:
        load_tokenizer(file)
    assert "pip install 'shardkit[tokens]'" in str(e.value)
    assert e.value.exit_code == 2


def test_truncation_saved_in_the_file_is_switched_off(tmp_path: Path) -> None:
    file = build_word_tokenizer(tmp_path / "tokenizer.json", truncate_at=3)
    text = "the cat sat on the mat and more words"
    assert count_tokens(load_tokenizer(file), [text]) == [word_count(text)]


def test_importing_tokens_does_not_import_tokenizers() -> None:
    code = "import sys, shardkit.records.tokens, shardkit.pipeline.stats; print('tokenizers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ count_tokens


def test_counts_match_single_encodes_without_special_tokens(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(build_word_tokenizer(tmp_path / "tokenizer.json"))
    texts = ["", "the cat", "hello world , how are you ?", "unknown words here !!", "x " * 500]
    assert count_tokens(tokenizer, texts) == [word_count(t) for t in texts]
    # the post-processor's [CLS]/[SEP] are not counted
    assert len(tokenizer.encode("the cat")) == 4
    assert count_tokens(tokenizer, []) == []


def test_bpe_counts_agree_with_encode(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(build_bpe_tokenizer(tmp_path / "tokenizer.json"))
    texts = ["the cat sat on the mat", "données 中文 😀", "shards shards shards"]
    counts = count_tokens(tokenizer, texts)
    assert counts == [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert all(n > 0 for n in counts)
    assert counts[0] < len("the cat sat on the mat")  # merges learned from the training text


# ------------------------------------------------------------------ record_text


@pytest.mark.parametrize(
    ("obj", "kind", "expected"),
    [
        (
            {"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
            ]},
            "chat",
            "Be brief.\nHi\nHello!",
        ),
        (  # content parts with "text" (OpenAI) or "value" (LLaMA-Factory), images skipped
            {"messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ]},
                {"role": "assistant", "content": [{"type": "text", "value": "A cat."}]},
            ]},
            "chat",
            "What is this?\nA cat.",
        ),
        (  # null content (tool calls), empty strings and non-dict messages are skipped
            {"messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "tool", "content": ""},
                "junk",
                {"role": "assistant", "content": "Sunny."},
            ]},
            "chat",
            "Weather?\nSunny.",
        ),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
            "sharegpt",
            "Hi\nHey",
        ),
        (
            {"instruction": "Add", "input": "", "output": "3"},
            "alpaca",
            "Add\n3",
        ),
        (
            {"system": "S", "history": [["q1", "a1"]], "instruction": "I", "input": "In", "output": "O"},
            "alpaca",
            "S\nq1\na1\nI\nIn\nO",
        ),
        ({"prompt": "Q: 2+2?", "completion": " 4"}, "prompt-completion", "Q: 2+2?\n 4"),
        ({"text": "plain text"}, "text", "plain text"),
        ({"other": "x"}, None, ""),
        ({"messages": "not a list"}, "chat", ""),
        (["not", "a", "dict"], "chat", ""),
    ],
)
def test_record_text(obj, kind, expected) -> None:
    assert record_text(obj, kind) == expected
    assert "\n".join(text_parts(obj, kind)) == expected


def test_a_model_id_is_found_in_the_local_hugging_face_cache(tmp_path: Path, monkeypatch):
    """--tokenizer ORG/NAME: the snapshot refs/main names in the HF cache, offline (18.9)."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-chat"
    build_word_tokenizer(repo / "snapshots" / "abc123" / "tokenizer.json")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "the cat sat on the mat"}\n')
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = run_cli("stats", data, "--tokenizer", "acme/tiny-chat", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = orjson.loads(r.stdout)
    assert doc["tokenizer"] == "acme/tiny-chat" and doc["total"]["tokens"]["total"] == 6, doc["total"]
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert load_tokenizer("acme/tiny-chat").encode("the cat", add_special_tokens=False).tokens == ["the", "cat"]
    missing = run_cli("stats", data, "--tokenizer", "acme/absent", env=env, cwd=tmp_path)
    assert missing.returncode == 3 and b"Traceback" not in missing.stderr
    assert f"looked in {cache / 'models--acme--absent'}".encode() in missing.stderr


def test_the_cache_folder_follows_hf_home(tmp_path: Path, monkeypatch):
    from shardkit.records.tokens import hf_cache_dir

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_cache_dir() == tmp_path / "hf" / "hub"
