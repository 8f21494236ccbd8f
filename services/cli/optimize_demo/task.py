"""The next-speaker task in the form the model server receives it: each prompt wrapped in the model's chat template.

Requests reach the model server through its chat route, which applies the
tokenizer's chat template to the user's message. The shipped model's
template writes `ROMEO:\\n<message, stripped>\\n\\nJULIET:\\n`, so an adapter
trained on the bare task prompt would meet another text at serving time. The
demonstration therefore trains and scores on the rendered prompts, and the
simulated users send the bare prompts, which the server renders the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from services.modelops.task_dataset import HELD_OUT_FILE, HELD_OUT_MANIFEST_FILE, METRIC_NAME, TASK_NAME, TRAIN_FILE

# The name evaluation results are stored under, so they are not mixed up with scores on the bare prompts.
CHAT_TASK_NAME = f"{TASK_NAME}-chat"


def render_user_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """Return the prompt text that the model server builds for one user message of `text`."""
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def write_chat_dataset(dataset_dir: Path, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """Write the training and held-out files of `dataset_dir` to `out` with rendered prompts, and return `out`.

    Completions and the task metric stay the same. The held-out manifest names
    the set `CHAT_TASK_NAME`. Raises `OSError` when a file cannot be read or
    written, and `ValueError` for a line that is not a JSON object.
    """
    out.mkdir(parents=True, exist_ok=True)
    for name in (TRAIN_FILE, HELD_OUT_FILE):
        _render_file(dataset_dir / name, tokenizer, out / name)
    manifest = {"name": CHAT_TASK_NAME, "metric": METRIC_NAME}
    (out / HELD_OUT_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def _render_file(source: Path, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        record["prompt"] = render_user_prompt(tokenizer, record["prompt"])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    target.write_text("".join(lines), encoding="utf-8")


def read_examples(path: Path) -> list[dict[str, str]]:
    """Return the records of a JSONL task file, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
