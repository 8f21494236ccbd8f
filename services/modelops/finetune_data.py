"""Fine-tuning datasets: read and validate a JSONL file, render chat records, tokenize with loss on the completion only.

Each line of the file is one JSON object of one of two kinds (other fields,
such as a task dataset's `task`, are ignored):

- `{"prompt": "...", "completion": "..."}`: the model learns to write the
  completion after the prompt. The prompt may be empty; the completion may not.
- `{"messages": [{"role": "...", "content": "..."}, ...]}`: a chat. The last
  message must come from `assistant` and is the completion; the messages
  before it are the prompt. With a chat template, the prompt is the template's
  rendering of the earlier messages with the generation prompt, and the
  completion is what the full rendering adds after it, so the template's
  end-of-turn text is learnt too. Without one, each earlier message becomes
  `role: content` on its own line, followed by `assistant: `.

Every line is checked before any training starts, and every problem is
reported at once with file, line number and field. Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

# Labels with this value add nothing to the loss (`torch.nn.CrossEntropyLoss`'s default `ignore_index`).
IGNORED_LABEL = -100
# An error message lists this many problems and counts the rest, so that a
# wholly wrong file gives a readable message rather than thousands of lines.
MAX_REPORTED_PROBLEMS = 20
_PAIR_FIELDS = ("prompt", "completion")
_COMPLETION_ROLE = "assistant"
# Records a problem of the line being parsed: (field, message).
ReportProblem = Callable[[str, str], None]


@dataclass(frozen=True)
class DatasetProblem:
    """One invalid line of a dataset: where it is, which field, what is wrong and how to fix it."""

    path: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class DatasetError(ValueError):
    """A dataset file is missing, empty or has invalid lines; `problems` lists every invalid line."""

    def __init__(self, message: str, problems: Sequence[DatasetProblem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat record."""

    role: str
    content: str


@dataclass(frozen=True)
class DatasetRecord:
    """One valid line: a prompt and completion pair, or a chat whose last message is the completion."""

    path: Path
    line: int
    prompt: str = ""
    completion: str = ""
    messages: tuple[ChatMessage, ...] = ()


@dataclass(frozen=True)
class TextExample:
    """A prompt and its completion as text, ready to tokenize."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels of one example; labels are `IGNORED_LABEL` on the prompt."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool


def read_dataset(path: Path) -> list[DatasetRecord]:
    """Read and validate every line of the JSONL file at `path`.

    Raises:
        DatasetError: the file does not exist, contains no record, or has
            invalid lines (all of them are in `problems`, the first
            `MAX_REPORTED_PROBLEMS` in the message).
    """
    if not path.is_file():
        raise DatasetError(f"dataset file {path} does not exist; pass the path of a JSONL file")
    records: list[DatasetRecord] = []
    problems: list[DatasetProblem] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                _parse_line(path, number, line, records, problems)
    if problems:
        raise DatasetError(_problems_message(path, problems), problems)
    if not records:
        raise DatasetError(f"dataset file {path} contains no record; write one JSON object per line")
    return records


def _parse_line(
    path: Path, number: int, line: bytes, records: list[DatasetRecord], problems: list[DatasetProblem]
) -> None:
    def problem(field: str, message: str) -> None:
        problems.append(DatasetProblem(path, number, field, message))

    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        problem("(line)", f"invalid UTF-8 at byte {error.start + 1}; save the file as UTF-8")
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        problem("(line)", f"invalid JSON ({error.msg} at column {error.colno}); write one JSON object per line")
        return
    if not isinstance(value, dict):
        problem("(line)", f"expected a JSON object, got {type(value).__name__}; write one JSON object per line")
        return
    count_before = len(problems)
    record = _chat_record(path, number, value, problem) if "messages" in value else _pair_record(path, number, value, problem)
    if len(problems) == count_before and record is not None:
        records.append(record)


def _pair_record(path: Path, number: int, value: dict, problem: ReportProblem) -> DatasetRecord | None:
    for field in _PAIR_FIELDS:
        if field not in value:
            problem(field, f"missing; each record needs {' and '.join(_PAIR_FIELDS)} strings, or a messages list")
        elif not isinstance(value[field], str):
            problem(field, f"expected a string, got {_describe(value[field])}")
    if isinstance(value.get("completion"), str) and not value["completion"].strip():
        problem("completion", "empty; write the text the model should learn to produce")
    if not all(isinstance(value.get(field), str) for field in _PAIR_FIELDS):
        return None
    return DatasetRecord(path, number, prompt=value["prompt"], completion=value["completion"])


def _chat_record(path: Path, number: int, value: dict, problem: ReportProblem) -> DatasetRecord | None:
    if any(field in value for field in _PAIR_FIELDS):
        problem("messages", "a record has either messages or prompt and completion, not both; keep one form")
        return None
    messages = value["messages"]
    if not isinstance(messages, list) or not messages:
        problem("messages", f"expected a non-empty list of {{role, content}} objects, got {_describe(messages)}")
        return None
    checked = [_chat_message(index, item, problem) for index, item in enumerate(messages)]
    parsed = [message for message in checked if message is not None]
    if len(parsed) != len(checked):
        return None
    last_field = f"messages[{len(parsed) - 1}]"
    if parsed[-1].role != _COMPLETION_ROLE:
        problem(
            f"{last_field}.role",
            f"the last message is the completion, so it must come from {_COMPLETION_ROLE!r}, "
            f"got {parsed[-1].role!r}; end the chat with the reply to learn",
        )
    elif not parsed[-1].content.strip():
        problem(f"{last_field}.content", "empty; write the reply the model should learn to produce")
    return DatasetRecord(path, number, messages=tuple(parsed))


def _chat_message(index: int, item: object, problem: ReportProblem) -> ChatMessage | None:
    if not isinstance(item, dict):
        problem(f"messages[{index}]", f"expected an object with role and content strings, got {_describe(item)}")
        return None
    role, content = item.get("role"), item.get("content")
    if not isinstance(role, str) or not role:
        problem(f"messages[{index}].role", f"expected a non-empty string such as 'user', got {_describe(role)}")
    if not isinstance(content, str):
        problem(f"messages[{index}].content", f"expected a string, got {_describe(content)}")
    if not isinstance(role, str) or not role or not isinstance(content, str):
        return None
    return ChatMessage(role, content)


def _describe(value: object) -> str:
    if value is None:
        return "nothing (missing or null)"
    text = json.dumps(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _problems_message(path: Path, problems: list[DatasetProblem]) -> str:
    listed = "\n".join(f"  {problem}" for problem in problems[:MAX_REPORTED_PROBLEMS])
    more = len(problems) - MAX_REPORTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return f"dataset file {path} has {len(problems)} invalid line(s); fix them and run again:\n{listed}{tail}"


def render_examples(records: Sequence[DatasetRecord], tokenizer: PreTrainedTokenizerBase) -> list[TextExample]:
    """Turn records into prompt and completion text, rendering chats with the tokenizer's chat template if it has one.

    Raises:
        DatasetError: the chat template rejected a chat (for example a role it does not know).
    """
    problems: list[DatasetProblem] = []
    examples: list[TextExample] = []
    for record in records:
        if not record.messages:
            examples.append(TextExample(record.prompt, record.completion))
            continue
        try:
            examples.append(_render_chat(record.messages, tokenizer))
        except TemplateError as error:
            problems.append(DatasetProblem(record.path, record.line, "messages", f"the chat template rejected it: {error}"))
    if problems:
        raise DatasetError(_problems_message(problems[0].path, problems), problems)
    return examples


def _render_chat(messages: tuple[ChatMessage, ...], tokenizer: PreTrainedTokenizerBase) -> TextExample:
    history = [{"role": message.role, "content": message.content} for message in messages[:-1]]
    reply = messages[-1].content
    if not tokenizer.chat_template:
        prompt = "".join(f"{message['role']}: {message['content']}\n" for message in history)
        return TextExample(prompt + f"{_COMPLETION_ROLE}: ", reply)

    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*history, {"role": _COMPLETION_ROLE, "content": reply}], tokenize=False)
    # Some templates render earlier turns differently once a reply follows
    # (dropping reasoning text, for example); then only the reply is learnt.
    completion = full[len(prompt) :] if full.startswith(prompt) else reply
    return TextExample(prompt, completion)


def tokenize_example(example: TextExample, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> TokenizedExample:
    """Tokenize prompt and completion apart, append EOS, and keep at most `max_tokens` tokens.

    The two are tokenized apart because at inference the prompt is tokenized
    alone and the completion's tokens are generated after it. EOS (when the
    tokenizer has one) teaches the model to stop. Truncation drops the
    prompt's first tokens, and cuts the completion's end only when the
    completion alone exceeds `max_tokens`.
    """
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    completion_ids = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    truncated = len(prompt_ids) + len(completion_ids) > max_tokens
    completion_ids = completion_ids[:max_tokens]
    prompt_ids = prompt_ids[len(prompt_ids) - (max_tokens - len(completion_ids)) :] if truncated else prompt_ids
    return TokenizedExample(prompt_ids + completion_ids, [IGNORED_LABEL] * len(prompt_ids) + completion_ids, truncated)


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch on the right to its longest example: input ids, attention mask, and labels ignored on padding."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORED_LABEL, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids)
        labels[row, :size] = torch.tensor(example.labels)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
