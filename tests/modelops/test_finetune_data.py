"""Fine-tuning datasets: every invalid line reported with its line and field, chats rendered, loss on completions only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from services.modelops.finetune_data import (
    IGNORED_LABEL,
    MAX_REPORTED_PROBLEMS,
    DatasetError,
    TextExample,
    TokenizedExample,
    collate,
    read_dataset,
    render_examples,
    tokenize_example,
)
from shared.settings import DEFAULT_MODEL_DIR


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(DatasetError) as caught:
        read_dataset(path)
    return [(problem.line, problem.field) for problem in caught.value.problems]


def test_reads_pairs_and_chats(tmp_path: Path) -> None:
    chat = {"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "ROMEO"}]}
    path = write_lines(tmp_path / "data.jsonl", [json.dumps({"prompt": "A", "completion": "B", "task": "x"}), "", json.dumps(chat)])

    records = read_dataset(path)

    assert [(record.line, record.prompt, record.completion) for record in records[:1]] == [(1, "A", "B")]
    assert records[1].line == 3
    assert [message.role for message in records[1].messages] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"prompt": "A", "completion": "B"', "(line)"),
        ('["prompt", "completion"]', "(line)"),
        ('{"prompt": "A"}', "completion"),
        ('{"completion": "B"}', "prompt"),
        ('{"prompt": "A", "completion": 3}', "completion"),
        ('{"prompt": "A", "completion": "  \\n"}', "completion"),
        ('{"messages": []}', "messages"),
        ('{"messages": [{"role": "assistant", "content": "B"}], "prompt": "A"}', "messages"),
        ('{"messages": [{"role": "user", "content": "A"}]}', "messages[0].role"),
        ('{"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": ""}]}', "messages[1].content"),
        ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "B"}]}', "messages[0].content"),
        ('{"messages": ["hello", {"role": "assistant", "content": "B"}]}', "messages[0]"),
    ],
)
def test_invalid_line_named(tmp_path: Path, line: str, field: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", ['{"prompt": "ok", "completion": "ok"}', line])

    assert problems_of(path) == [(2, field)]


def test_invalid_utf8_named(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "A", "completion": "B"}\n{"prompt": "\xff", "completion": "B"}\n')

    assert problems_of(path) == [(2, "(line)")]


def test_message_gives_file_line_and_fix(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", ['{"prompt": "A", "completion": 3}'])

    with pytest.raises(DatasetError) as caught:
        read_dataset(path)

    assert f"{path}:1: completion: expected a string, got int 3" in str(caught.value)
    assert "fix them and run again" in str(caught.value)


def test_every_invalid_line_reported(tmp_path: Path) -> None:
    lines = ['{"prompt": "A"}'] * (MAX_REPORTED_PROBLEMS + 5) + ['{"prompt": "A", "completion": "B"}']
    path = write_lines(tmp_path / "data.jsonl", lines)

    with pytest.raises(DatasetError) as caught:
        read_dataset(path)

    assert [problem.line for problem in caught.value.problems] == list(range(1, MAX_REPORTED_PROBLEMS + 6))
    assert str(caught.value).count("completion: missing") == MAX_REPORTED_PROBLEMS
    assert "... and 5 more" in str(caught.value)


def test_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "absent.jsonl")


def test_empty_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="contains no record"):
        read_dataset(write_lines(tmp_path / "data.jsonl", ["", "  "]))


def test_chat_rendered_with_template(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    chat = {"messages": [{"role": "user", "content": "Speak."}, {"role": "assistant", "content": "I will."}]}
    records = read_dataset(write_lines(tmp_path / "data.jsonl", [json.dumps(chat)]))

    [example] = render_examples(records, tokenizer)

    # The shipped template speaks user turns as ROMEO and assistant turns as JULIET, each ending in a blank line.
    assert example == TextExample("ROMEO:\nSpeak.\n\nJULIET:\n", "I will.\n\n")


def test_chat_without_template_joined(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak."}, {"role": "assistant", "content": "No."}]}
    records = read_dataset(write_lines(tmp_path / "data.jsonl", [json.dumps(chat)]))
    plain = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    plain.chat_template = None

    [example] = render_examples(records, plain)

    assert example == TextExample("system: Be brief.\nuser: Speak.\nassistant: ", "No.")


def test_template_rejection_names_line(tmp_path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    chat = {"messages": [{"role": "narrator", "content": "Once."}, {"role": "assistant", "content": "Twice."}]}
    records = read_dataset(write_lines(tmp_path / "data.jsonl", ["", json.dumps(chat)]))

    with pytest.raises(DatasetError) as caught:
        render_examples(records, tokenizer)

    assert [(problem.line, problem.field) for problem in caught.value.problems] == [(2, "messages")]
    assert "unsupported message role narrator" in str(caught.value)


def test_labels_ignore_prompt(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt_ids = tokenizer("ROMEO:\nSpeak.\n\nNext speaker:\n")["input_ids"]
    completion_ids = tokenizer("JULIET\n", add_special_tokens=False)["input_ids"]

    example = tokenize_example(TextExample("ROMEO:\nSpeak.\n\nNext speaker:\n", "JULIET\n"), tokenizer, max_tokens=1024)

    assert example.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert example.labels == [IGNORED_LABEL] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    assert not example.truncated


def test_truncation_keeps_prompt_tail(tokenizer: PreTrainedTokenizerBase) -> None:
    prompt = "ROMEO:\n" + "Speak again, bright angel.\n" * 20
    completion_ids = tokenizer("JULIET\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    example = tokenize_example(TextExample(prompt, "JULIET\n"), tokenizer, max_tokens=16)

    assert example.truncated
    assert len(example.input_ids) == 16
    assert example.input_ids[-len(completion_ids) :] == completion_ids
    assert example.input_ids[: 16 - len(completion_ids)] == tokenizer(prompt)["input_ids"][-(16 - len(completion_ids)) :]
    assert example.labels[-len(completion_ids) :] == completion_ids


def test_long_completion_cut_at_end(tokenizer: PreTrainedTokenizerBase) -> None:
    completion = "Speak again, bright angel.\n" * 20

    example = tokenize_example(TextExample("ROMEO:\n", completion), tokenizer, max_tokens=8)

    assert example.input_ids == tokenizer(completion, add_special_tokens=False)["input_ids"][:8]
    assert IGNORED_LABEL not in example.labels


def test_collate_pads_right() -> None:
    examples = [TokenizedExample([5, 6, 7], [IGNORED_LABEL, 6, 7], False), TokenizedExample([8], [8], False)]

    batch = collate(examples, pad_token_id=0)

    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORED_LABEL, 6, 7], [8, IGNORED_LABEL, IGNORED_LABEL]]
