"""Chat templates and loss masks (shardkit.records.template): loading from a model folder,
rendering as transformers does, assistant spans by the prefix rule or {% generation %}, and
`validate`/`stats --tokenizer` counting the tokens after the template. The tokenizer and the
templates are made here (tests/chatmodel.py); nothing is downloaded."""

from __future__ import annotations

import json

import orjson
import pytest
from chatmodel import CHATML, CHATML_GENERATION, DROPS_THINKING, make_model
from conftest import run_cli

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from shardkit.core.errors import InputError  # noqa: E402
from shardkit.records.template import ChatTemplate, TemplateError, load_chat_template  # noqa: E402
from shardkit.records.tokens import count_spans, load_tokenizer  # noqa: E402

SYSTEM = {"role": "system", "content": "Be brief."}
Q1 = {"role": "user", "content": "What is the weather like in Paris?"}
A1 = {"role": "assistant", "content": "It is sunny and warm."}
Q2 = {"role": "user", "content": "And tomorrow?"}
A2 = {"role": "assistant", "content": "About twenty degrees."}
CONVERSATION = [SYSTEM, Q1, A1, Q2, A2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("model"))


def plain_render(template: str, messages: list, **kw) -> str:
    """The reference: jinja2 as transformers sets it up, with nothing of shardkit."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, **kw)


# ------------------------------------------------------------------ loading


def test_loads_the_template_of_tokenizer_config(model):
    template = load_chat_template(model)
    assert template.source == CHATML
    assert template.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert load_chat_template(model / "tokenizer.json").source == CHATML  # the file's folder


def test_chat_template_jinja_wins_and_named_templates(tmp_path):
    folder = make_model(tmp_path / "m", CHATML_GENERATION, as_file=True)
    assert load_chat_template(folder).source == CHATML_GENERATION
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": CHATML}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink()
    assert load_chat_template(folder).source == CHATML


def test_no_template_and_broken_templates(tmp_path):
    assert load_chat_template(make_model(tmp_path / "none", None)) is None
    broken = make_model(tmp_path / "broken", "{% for m in messages %}{{ m.content }")
    with pytest.raises(InputError, match="the chat template does not compile"):
        load_chat_template(broken)


# ------------------------------------------------------------------ rendering and spans


def test_renders_as_plain_jinja2_does():
    template = ChatTemplate(CHATML)
    for gen in (False, True):
        assert template.render(CONVERSATION, add_generation_prompt=gen) == plain_render(
            CHATML, CONVERSATION, add_generation_prompt=gen
        )


def test_prefix_rule_spans_are_the_assistant_content_and_end_of_turn():
    rendered = ChatTemplate(CHATML).assistant_spans(CONVERSATION)
    assert rendered.problem is None
    assert [rendered.text[s:e] for s, e in rendered.spans] == [
        "It is sunny and warm.<|im_end|>\n",
        "About twenty degrees.<|im_end|>\n",
    ]
    # the role header is outside: the text just before each span
    for s, _ in rendered.spans:
        assert rendered.text[:s].endswith("<|im_start|>assistant\n")


def test_generation_blocks_mark_the_spans_themselves():
    rendered = ChatTemplate(CHATML_GENERATION).assistant_spans(CONVERSATION)
    assert rendered.problem is None
    assert [rendered.text[s:e] for s, e in rendered.spans] == [
        "It is sunny and warm.<|im_end|>",
        "About twenty degrees.<|im_end|>",
    ]
    assert rendered.text == plain_render(CHATML, CONVERSATION)  # same text as the plain layout


def test_a_template_that_rewrites_earlier_turns_is_reported():
    thinking = [Q1, {"role": "assistant", "content": "<think>rain?</think>Sunny."}, Q2, A2]
    rendered = ChatTemplate(DROPS_THINKING).assistant_spans(thinking)
    assert rendered.spans == ()
    assert rendered.problem == (
        "rendering messages[:2] is not a prefix of the whole conversation's (the template rewrites earlier turns)"
    )
    # without reasoning in the earlier turn, the rule holds
    assert ChatTemplate(DROPS_THINKING).assistant_spans(CONVERSATION).problem is None


def test_raise_exception_and_template_failures_are_template_errors():
    with pytest.raises(TemplateError, match="unknown role: bot"):
        ChatTemplate(CHATML).render([{"role": "bot", "content": "x"}])
    with pytest.raises(TemplateError, match="the template failed on this record"):
        ChatTemplate("{{ messages[0].content + 1 }}").render([Q1])


def test_tojson_keeps_non_ascii_and_strftime_is_fixed(monkeypatch):
    template = ChatTemplate("{{ tools | tojson }} {{ strftime_now('%d %b %Y') }}")
    assert template.render([], tools=[{"name": "météo"}]) == '[{"name": "météo"}] 26 Jul 2024'
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert template.render([], tools=[]).endswith("01 Jan 1970")


# ------------------------------------------------------------------ tokens


def test_span_tokens_are_exactly_the_assistant_tokens(model):
    """Counted independently: the tokens of each assistant content, its <|im_end|> and the
    newline (the header ends in a newline and <|im_end|> is special, so the span's edges are
    token edges with this tokenizer)."""
    tokenizer = load_tokenizer(model)
    rendered = ChatTemplate(CHATML).assistant_spans(CONVERSATION)
    (count,) = count_spans(tokenizer, [rendered.text], [rendered.spans])
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    encode = lambda text: reference.encode(text, add_special_tokens=False).ids  # noqa: E731
    ids = encode(rendered.text)
    assert reference.decode(ids, skip_special_tokens=False) == rendered.text
    expected = sum(len(encode(m["content"])) + 1 + len(encode("\n")) for m in (A1, A2))
    assert count.tokens == len(ids)
    assert count.assistant == expected
    before = rendered.text[: rendered.spans[0][0]]
    assert count.first_assistant == len(encode(before))


# ------------------------------------------------------------------ the command line


def chat_file(tmp_path, records):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def test_validate_counts_after_the_template_and_flags_no_loss(tmp_path, model):
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    length = lambda messages: len(reference.encode(plain_render(CHATML, messages), add_special_tokens=False).ids)  # noqa: E731
    short = {"messages": [Q1, A1]}
    long_prompt = {"messages": [{"role": "user", "content": "Validate every record. " * 40}, A1]}
    long_answer = {"messages": [Q1, {"role": "assistant", "content": "It is sunny and warm. " * 40}]}
    limit = length(short["messages"]) + 5
    assert length(long_prompt["messages"][:1]) > limit  # its answer starts beyond the limit
    path = chat_file(tmp_path, [short, long_prompt, long_answer, {"messages": [{"role": "bot", "content": "x"}, A1]}])
    proc = run_cli("validate", str(path), "--tokenizer", str(model), "--max-tokens", str(limit), "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    tokens = doc["tokens"]
    assert tokens["template"].endswith("tokenizer_config.json: chat_template")
    assert tokens["records"] == 3  # the invalid record (unknown role) is not counted
    assert tokens["total"] == sum(length(r["messages"]) for r in (short, long_prompt, long_answer))
    assert (tokens["over_limit"], tokens["no_loss"]) == (2, 1)
    issues = {i["code"]: i for i in doc["issues"]}
    assert [e["line"] for e in issues["too_many_tokens"]["examples"]] == [2, 3]
    assert issues["too_many_tokens"]["examples"][0]["message"] == (
        f"{length(long_prompt['messages']):,} tokens after the chat template, over --max-tokens {limit:,}"
    )
    assert [e["line"] for e in issues["no_loss"]["examples"]] == [2]
    assert "every assistant token lies beyond --max-tokens" in issues["no_loss"]["examples"][0]["message"]
    # the text report says the same
    text = run_cli("validate", str(path), "--tokenizer", str(model), "--max-tokens", str(limit)).stdout.decode()
    assert f"tokens after the chat template: {tokens['total']:,} in 3 records" in text
    assert "with no assistant token within it (no loss at all): 1" in text


def test_validate_reports_a_template_that_breaks_the_prefix_rule(tmp_path):
    model = make_model(tmp_path / "qwen-ish", DROPS_THINKING)
    thinking = {"messages": [Q1, {"role": "assistant", "content": "<think>rain?</think>Sunny."}, Q2, A2]}
    proc = run_cli("validate", str(chat_file(tmp_path, [thinking])), "--tokenizer", str(model), "--max-tokens", "9999", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    (issue,) = doc["issues"]
    assert (issue["code"], issue["severity"]) == ("template_prefix", "warning")
    assert issue["examples"][0]["message"].startswith("assistant tokens unknown: rendering messages[:2] is not a prefix")


def test_stats_token_percentiles_after_the_template(tmp_path, model):
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    records = [{"messages": [Q1, {"role": "assistant", "content": "Sunny. " * k}]} for k in range(1, 12)]
    path = chat_file(tmp_path, records)
    proc = run_cli("stats", str(path), "--tokenizer", str(model), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    lengths = sorted(len(reference.encode(plain_render(CHATML, r["messages"]), add_special_tokens=False).ids) for r in records)
    tokens = doc["total"]["tokens"]
    assert (tokens["min"], tokens["p50"], tokens["max"], tokens["total"]) == (lengths[0], lengths[5], lengths[-1], sum(lengths))
    assert doc["chat_template"].endswith("chat_template") and doc["template_failed"] == 0
    text = run_cli("stats", str(path), "--tokenizer", str(model)).stdout.decode()
    assert "tokens/record (after the chat template): min" in text


# ------------------------------------------------------------------ the token plan (issue 21.4)


def test_token_plan_counts_sequences_and_padding():
    from shardkit.pipeline.stats import token_plan

    plan = token_plan([5, 3, 9, 2, 7], 8)
    # truncated to 8: 5 3 8 2 7 = 25 tokens kept; packed in order: [5 3] [8] [2] [7]
    assert plan == {
        "seq_len": 8, "records": 5, "tokens": 26, "kept_tokens": 25, "truncated_tokens": 1, "truncated_records": 1,
        "unpacked": {"sequences": 5, "padding_share": round(1 - 25 / 40, 4)},
        "packed": {"sequences": 4, "padding_share": round(1 - 25 / 32, 4)},
    }
    assert token_plan([], 8)["packed"] == {"sequences": 0, "padding_share": 0.0}


def test_stats_seq_len_gives_the_plan_after_the_template(tmp_path, model):
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    records = [{"messages": [Q1, {"role": "assistant", "content": "Sunny. " * k}]} for k in (1, 2, 30, 3)]
    lengths = [len(reference.encode(plain_render(CHATML, r["messages"]), add_special_tokens=False).ids) for r in records]
    seq_len = lengths[0] + lengths[1] + 1  # the first two pack together, the third is cut
    assert lengths[2] > seq_len and lengths[3] + seq_len > seq_len
    path = chat_file(tmp_path, records)
    for engine in ((), ("--engine", "local")):
        proc = run_cli("stats", str(path), "--tokenizer", str(model), "--seq-len", str(seq_len), "--json", *engine)
        assert proc.returncode == 0, proc.stderr
        plan = json.loads(proc.stdout)["token_plan"]
        kept = lengths[0] + lengths[1] + seq_len + lengths[3]
        assert (plan["tokens"], plan["kept_tokens"], plan["truncated_records"]) == (sum(lengths), kept, 1)
        assert plan["packed"]["sequences"] == 3  # [0 1] [2] [3]
        assert plan["unpacked"] == {"sequences": 4, "padding_share": round(1 - kept / (4 * seq_len), 4)}
    proc = run_cli("stats", str(path), "--seq-len", "100")
    assert proc.returncode == 2 and b"--seq-len needs --tokenizer" in proc.stderr
