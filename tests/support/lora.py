"""LoRA adapters trained in tests on the committed model: each learns one line, so its output shows it ran."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from shared.modeling import load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR

# The speaker tag each adapter's training text starts with.
TRAINING_PROMPT = "ROMEO:\n"
# Adapter id -> the line it learns by heart.
TRAINING_LINES = {
    "verse": "KING HENRY:\nOnce more unto the breach, dear friends, once more;\n",
    "prose": "First Citizen:\nWe are accounted poor citizens, the patricians good.\n",
}
# A few seconds on 2 cores, and enough for greedy decoding to repeat the line.
TRAINING_STEPS = 40
LEARNING_RATE = 1e-2


def train_adapter(line: str, folder: Path) -> None:
    """Fit a rank-8 LoRA on q_proj and v_proj to one repeated line and save it to `folder` with peft."""
    model, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    ids = torch.tensor([tokenizer(TRAINING_PROMPT + line * 3)["input_ids"]])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    peft_model.train()
    for _step in range(TRAINING_STEPS):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(folder)


def train_adapters(folder: Path) -> Path:
    """Train every adapter of `TRAINING_LINES` into its own subfolder of `folder` and return `folder`."""
    for name, line in TRAINING_LINES.items():
        train_adapter(line, folder / name)
    return folder
