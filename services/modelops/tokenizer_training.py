"""Train the byte-level BPE tokenizer and give it the special tokens and chat template the server relies on."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

# Each message becomes one speech of a play script, the form every line of the
# corpus has ("NAME:\n<speech>\n\n"), so the model continues it as dialogue.
# ROMEO and JULIET are two of the most frequent speakers in tinyshakespeare.
ASSISTANT_SPEAKER = "JULIET"
CHAT_TEMPLATE = (
    '{%- set speakers = {"system": "CHORUS", "user": "ROMEO", "assistant": "'
    + ASSISTANT_SPEAKER
    + '"} -%}'
    "{%- for message in messages -%}"
    '{%- if message["role"] not in speakers -%}'
    '{{ raise_exception("unsupported message role " ~ message["role"] ~ "; use system, user or assistant") }}'
    "{%- endif -%}"
    '{{ speakers[message["role"]] ~ ":\\n" ~ (message["content"] | trim) ~ "\\n\\n" }}'
    "{%- endfor -%}"
    '{%- if add_generation_prompt -%}{{ "' + ASSISTANT_SPEAKER + ':\\n" }}{%- endif -%}'
)


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of `vocab_size` entries (special tokens included) on `text`.

    The result encodes without adding BOS or EOS, because training windows are
    cut from the middle of the corpus. Byte-level BPE means every string, in
    any script, encodes without unknown tokens.
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([text], trainer=trainer)
    return _wrap(core)


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    # Without `model_input_names`, `generate()` receives `token_type_ids` and fails.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
