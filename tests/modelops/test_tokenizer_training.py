from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from services.modelops.tokenizer_training import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, train_tokenizer

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus" / "tinyshakespeare.txt"


@pytest.fixture(scope="module")
def tokenizer():
    if not CORPUS.is_file():
        pytest.skip(f"{CORPUS} not found")
    return train_tokenizer(CORPUS.read_text(encoding="utf-8")[:100_000], vocab_size=512)


def test_vocab_size_includes_specials(tokenizer) -> None:
    assert len(tokenizer) == 512
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)


def test_encoding_adds_no_specials(tokenizer) -> None:
    ids = tokenizer("First Citizen:\n")["input_ids"]

    assert not set(ids) & set(tokenizer.all_special_ids)


def test_any_text_round_trips(tokenizer) -> None:
    text = "Ça, 日本語 and 🙂 — not in the corpus"

    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_no_token_type_ids(tokenizer) -> None:
    assert set(tokenizer("hello")) == {"input_ids", "attention_mask"}


def test_chat_template_writes_play_script(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": "  Who goes there?  "},
        {"role": "assistant", "content": "A friend."},
        {"role": "user", "content": "Stand."},
    ]

    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    assert rendered == (
        "CHORUS:\nSpeak in verse.\n\nROMEO:\nWho goes there?\n\nJULIET:\nA friend.\n\nROMEO:\nStand.\n\nJULIET:\n"
    )


def test_chat_template_without_generation_prompt(tokenizer) -> None:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hark."}], tokenize=False)

    assert rendered == "ROMEO:\nHark.\n\n"


def test_chat_template_survives_save(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)

    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)

    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.model_input_names == ["input_ids", "attention_mask"]
