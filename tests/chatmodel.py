"""A small model folder the tests make themselves (nothing is downloaded): a byte-level BPE
tokenizer trained on a few sentences, and a ChatML chat template in tokenizer_config.json."""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n# Tools\\n' + (tools | tojson) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('unknown role: ' + message.role) }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# the same layout, with the assistant spans marked by the template itself
CHATML_GENERATION = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# drops the reasoning of assistant turns before the last user message (as Qwen3's does):
# the prefix rule cannot hold for a conversation with two answers that think
DROPS_THINKING = (
    "{%- set ns = namespace(last_user=0) %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content %}"
    "{%- if message.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip() %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How can I help you today?",
    "What is the weather like in Paris?",
    "It is sunny and warm, about twenty degrees.",
    "Split the file into shards of fifty thousand records.",
    "Validate every record before training the model.",
    "user assistant system tool think",
] * 20

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def make_model(folder: Path, template: str | None = CHATML, *, as_file: bool = False, vocab: int = 400) -> Path:
    """`folder` with tokenizer.json and tokenizer_config.json (holding `template`, or in
    chat_template.jinja when `as_file`); returns the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config: dict = {"eos_token": "<|im_end|>", "bos_token": None, "pad_token": {"content": "<|endoftext|>"}}
    if template is not None and not as_file:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    if template is not None and as_file:
        (folder / "chat_template.jinja").write_text(template)
    return folder
