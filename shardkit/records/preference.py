"""Preference data: what makes a pair useless to DPO, ORPO, SimPO or KTO, though it is valid JSON.

Two kinds, in TRL's layouts:

- ``preference``: ``prompt`` + ``chosen`` + ``rejected``. Each is a string, or a list of chat
  messages (conversational). With message lists the prompt may be left implicit: ``chosen``
  and ``rejected`` are then whole conversations that share it, and the prompt is everything
  before each side's closing assistant turn(s).
- ``kto``: ``prompt`` + ``completion`` + a boolean ``label`` (desirable or not).

The validator checks the structure (types, messages, unknown keys); this module the pair:

  empty_side       error  chosen/rejected/completion is empty (or only whitespace, or no answer)
  same_sides       error  chosen and rejected are identical[, but for whitespace]: the pair
                          teaches no preference
  prompt_mismatch  error  the implicit prompts of chosen and rejected differ (at a message)
  no_answer        error  a conversational side does not end with an assistant message
"""

from __future__ import annotations

from shardkit.records.issue import Issue, error

__all__ = ["PREFERENCE_CODES", "check_kto", "check_pair", "prompt_messages", "side_texts"]

PREFERENCE_CODES = {
    "empty_side": "error",
    "same_sides": "error",
    "prompt_mismatch": "error",
    "no_answer": "error",
}


def side_texts(value: object) -> list[str]:
    """The text of a side: the string, or the contents of its messages (text parts included)."""
    if type(value) is str:
        return [value]
    texts: list[str] = []
    for m in value if type(value) is list else ():
        content = m.get("content") if type(m) is dict else None
        if type(content) is str:
            texts.append(content)
        elif type(content) is list:
            texts.extend(p["text"] for p in content if type(p) is dict and type(p.get("text")) is str)
    return texts


def prompt_messages(side: list) -> list:
    """An implicit-prompt side's prompt: its messages before the closing assistant turn(s)."""
    end = len(side)
    while end and type(side[end - 1]) is dict and side[end - 1].get("role") == "assistant":
        end -= 1
    return side[:end]


def _answer(side: object, explicit_prompt: bool) -> object:
    """What a side adds to the prompt: the string, or its closing assistant messages."""
    if type(side) is not list or explicit_prompt:
        return side
    return side[len(prompt_messages(side)) :]


def _blank(value: object) -> bool:
    return not "".join(side_texts(value)).strip()


def _same(a: object, b: object) -> str | None:
    """'identical', 'whitespace' (equal but for whitespace) or None."""
    if a == b:
        return "identical"
    ta, tb = side_texts(a), side_texts(b)
    if len(ta) == len(tb) and all(same_words(x, y) for x, y in zip(ta, tb, strict=True)):
        return "whitespace"
    return None


def same_words(a: str, b: str) -> bool:
    """Whether a and b are equal but for whitespace (`" ".join(a.split())` equals b's).

    Answers from their first and last characters when those already differ (as they do
    for nearly every real pair), without splitting two long texts into words: the
    normalized text starts with the first character that is not whitespace and ends
    with the last."""
    a0, b0 = a[:1], b[:1]
    if a0 != b0 and not a0.isspace() and not b0.isspace():
        return False
    a1, b1 = a[-1:], b[-1:]
    if a1 != b1 and not a1.isspace() and not b1.isspace():
        return False
    return " ".join(a.split()) == " ".join(b.split())


def check_pair(obj: dict, issues: list[Issue]) -> None:
    """A structurally valid preference record: non-empty sides that differ, and (implicit
    prompt) the same prompt on both sides."""
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    explicit = "prompt" in obj
    if explicit and type(obj["prompt"]) is str and not obj["prompt"].strip():
        issues.append(error("empty_side", "prompt", "the prompt is empty"))
    answers = {}
    ended = True  # each conversational side ends with an answer
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if type(side) is list and side and not explicit:
            last = side[-1]
            if type(last) is not dict or last.get("role") != "assistant":
                issues.append(
                    error("no_answer", f"{key}[{len(side) - 1}]", f"{key} does not end with an assistant message: nothing to prefer")
                )
                ended = False
                continue
        answer = _answer(side, explicit)
        if _blank(answer):
            issues.append(error("empty_side", key, f"{key} is empty: the pair teaches nothing"))
            continue
        answers[key] = answer
    if len(answers) == 2:
        same = _same(answers["chosen"], answers["rejected"])
        if same == "identical":
            issues.append(error("same_sides", "rejected", "chosen and rejected are identical: the pair teaches no preference"))
        elif same == "whitespace":
            issues.append(
                error("same_sides", "rejected", "chosen and rejected differ only in whitespace: the pair teaches no preference")
            )
    if ended and not explicit and type(chosen) is list and type(rejected) is list:
        _check_same_prompt(chosen, rejected, issues)


def _check_same_prompt(chosen: list, rejected: list, issues: list[Issue]) -> None:
    a, b = prompt_messages(chosen), prompt_messages(rejected)
    if a == b:
        if not a:
            issues.append(
                error("prompt_mismatch", "chosen", "no prompt: the record has no prompt key and chosen holds only assistant messages")
            )
        return
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            issues.append(
                error(
                    "prompt_mismatch",
                    f"rejected[{i}]",
                    f"the prompt of rejected differs from chosen's at message {i}: the two sides answer different conversations",
                )
            )
            return
    longer, n = ("chosen", len(a)) if len(a) > len(b) else ("rejected", len(b))
    shorter = min(len(a), len(b))
    issues.append(
        error(
            "prompt_mismatch",
            f"{longer}[{shorter}]",
            f"the prompt of {longer} has {n} messages, the other side's {shorter}: the two sides answer different conversations",
        )
    )


def check_kto(obj: dict, issues: list[Issue]) -> None:
    """A structurally valid kto record: a prompt and a completion that are not empty."""
    for key in ("prompt", "completion"):
        if key in obj and _blank(obj[key]):
            issues.append(error("empty_side", key, f"the {key} is empty"))
