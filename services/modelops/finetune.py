"""LoRA fine-tuning with peft: check every option first, train an adapter on a frozen base, save it in peft's layout.

The steps are separate so a caller can report between them:

    plan = check_options(options)   # cheap: no weights are read
    run = load_run(plan)            # base model, tokenized data, LoRA layers
    result = train_and_save(run, on_step)

The output folder is a peft adapter folder (`adapter_config.json`,
`adapter_model.safetensors` and peft's `README.md`), which peft's
`PeftModel.from_pretrained`, TGI, vLLM and the model server's adapters folder
load. The tokenizer is not copied: LoRA leaves it unchanged, and
`adapter_config.json` names the base folder it came from. `training_run.json`
records the lineage (base, dataset SHA-256, options) and the losses. With
`merge`, the subfolder `merged/` is a full model folder with the adapter folded
into the base weights, and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedTokenizerBase

from services.modelops.finetune_data import (
    DatasetRecord,
    TokenizedExample,
    read_dataset,
    render_examples,
    tokenize_example,
)
from services.modelops.lora_training import TrainingSchedule, mean_completion_loss, train_adapter
from shared.modeling import load_causal_lm
from shared.modeling.layers import linear_layer_names

# peft's default rank: enough for a narrow task, and it keeps the adapter
# well under 1% of a 4.5M-parameter model (0.7% on q_proj and v_proj).
DEFAULT_RANK = 8
# Twice the rank, so the update is scaled by alpha / rank = 2, the usual pairing in LoRA recipes.
DEFAULT_ALPHA = 16.0
# The attention query and value projections: peft 0.21's default for Llama
# (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`). Adding k_proj, o_proj
# or the MLP's gate_proj, up_proj and down_proj gives more capacity for more parameters.
DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")
DEFAULT_EPOCHS = 1
# NOTE: tuned on one task only. With this rate, one epoch of the next-speaker
# task (381 steps) took the shipped model's held-out loss from 9.55 to 1.44
# nats per token.
DEFAULT_LEARNING_RATE = 2e-3
DEFAULT_BATCH_SIZE = 16
DEFAULT_SEED = 1234
MERGED_DIR = "merged"
RUN_FILE = "training_run.json"
# Written folders are read by the model server, whatever user runs it.
FOLDER_MODE = 0o755
FILE_MODE = 0o644


class FinetuneError(ValueError):
    """An option, the base model or the output folder is invalid; the message names the option and the fix."""


@dataclass(frozen=True)
class FinetuneOptions:
    """Settings of one fine-tuning run: base model, data files, output folder, LoRA shape and training schedule."""

    base: str
    dataset: Path
    out: Path
    held_out: Path | None = None
    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_steps: int | None = None
    seed: int = DEFAULT_SEED
    merge: bool = False

    def schedule(self) -> TrainingSchedule:
        """Return the training loop's settings."""
        return TrainingSchedule(self.epochs, self.batch_size, self.learning_rate, self.seed, self.max_steps)


@dataclass(frozen=True)
class FinetunePlan:
    """Options that passed every check, with the validated dataset records."""

    options: FinetuneOptions
    records: list[DatasetRecord]
    held_out_records: list[DatasetRecord] | None


@dataclass
class LoraRun:
    """A loaded base model wrapped with fresh LoRA layers, and the tokenized data to train and score it on."""

    plan: FinetunePlan
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    train_examples: list[TokenizedExample]
    held_out_examples: list[TokenizedExample] | None
    trainable_parameters: int
    total_parameters: int

    @property
    def truncated_examples(self) -> int:
        """The number of training and held-out examples cut to the model's context."""
        examples = self.train_examples + (self.held_out_examples or [])
        return sum(example.truncated for example in examples)


@dataclass(frozen=True)
class FinetuneResult:
    """The numbers of a finished run and where it wrote its folders. Losses are per completion token, in nats."""

    steps: int
    first_step_loss: float
    last_step_loss: float
    held_out_loss_before: float | None
    held_out_loss_after: float | None
    train_s: float
    train_cpu_s: float
    adapter_bytes: int
    adapter_dir: Path
    merged_dir: Path | None


def check_options(options: FinetuneOptions) -> FinetunePlan:
    """Check every option, the output folder, the dataset files and the target modules, before any weights load.

    Raises:
        FinetuneError: a number is out of range, the output folder is not empty,
            or a target module is not a linear layer of the base model.
        DatasetError: a dataset file is missing, empty or has invalid lines.
        ModelLoadError: the base model's config cannot be read.
    """
    _check_numbers(options)
    _check_out(options.out)
    records = read_dataset(options.dataset)
    held_out_records = read_dataset(options.held_out) if options.held_out is not None else None
    _check_target_modules(options)
    return FinetunePlan(options, records, held_out_records)


def _check_numbers(options: FinetuneOptions) -> None:
    rules = [
        ("--rank", options.rank, options.rank >= 1, "a whole number of at least 1, such as 8"),
        ("--alpha", options.alpha, options.alpha > 0 and math.isfinite(options.alpha), "a number above 0, such as twice the rank"),
        ("--epochs", options.epochs, options.epochs >= 1, "a whole number of at least 1"),
        ("--learning-rate", options.learning_rate, 0 < options.learning_rate < math.inf, "a number above 0, such as 1e-3"),
        ("--batch-size", options.batch_size, options.batch_size >= 1, "a whole number of at least 1"),
        ("--max-steps", options.max_steps, options.max_steps is None or options.max_steps >= 1, "a whole number of at least 1, or none"),
    ]
    for option, value, valid, allowed in rules:
        if not valid:
            raise FinetuneError(f"{option} {value} is invalid: pass {allowed}")
    if not options.target_modules:
        raise FinetuneError("--target-modules is empty: name at least one linear layer, such as q_proj,v_proj")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FinetuneError(f"--out {out} already exists and is not an empty folder; choose another path or remove it")


def _check_target_modules(options: FinetuneOptions) -> None:
    available = linear_layer_names(options.base)
    unknown = sorted(set(options.target_modules) - available)
    if unknown:
        raise FinetuneError(
            f"--target-modules {','.join(unknown)} not found in {options.base}: its linear layers are "
            f"{','.join(sorted(available))}; pass some of those"
        )


def load_run(plan: FinetunePlan) -> LoraRun:
    """Load the base model, render and tokenize the data to the model's context, and add LoRA layers.

    Only the LoRA matrices require gradients; the base weights are frozen.
    peft draws the LoRA A matrices from torch's global generator, seeded here with `options.seed`.

    Raises:
        ModelLoadError: the base model or tokenizer does not load.
        DatasetError: the tokenizer's chat template rejects a chat record.
    """
    options = plan.options
    model, tokenizer = load_causal_lm(options.base)
    max_tokens = model.config.max_position_embeddings
    train_examples = _tokenize(plan.records, tokenizer, max_tokens)
    held_out = _tokenize(plan.held_out_records, tokenizer, max_tokens) if plan.held_out_records is not None else None

    torch.manual_seed(options.seed)
    config = LoraConfig(
        r=options.rank, lora_alpha=options.alpha, target_modules=list(options.target_modules), task_type=TaskType.CAUSAL_LM
    )
    peft_model = get_peft_model(model, config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    return LoraRun(plan, peft_model, tokenizer, train_examples, held_out, trainable, total)


def _tokenize(records: list[DatasetRecord], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[TokenizedExample]:
    return [tokenize_example(example, tokenizer, max_tokens) for example in render_examples(records, tokenizer)]


def train_and_save(run: LoraRun, on_step: Callable[[int, int, float], None]) -> FinetuneResult:
    """Train the adapter, score the held-out set before and after, and write the output folder.

    The folder is written next to `options.out` and renamed into place, so
    `out` appears only once complete. With `merge`, `run.model` contains merged
    weights afterwards and no longer has LoRA layers.
    """
    options = run.plan.options
    pad_token_id = run.tokenizer.pad_token_id
    held_out_before = _held_out_loss(run)
    started_s, started_cpu_s = time.monotonic(), time.process_time()
    losses = train_adapter(run.model, run.train_examples, options.schedule(), pad_token_id, on_step)
    train_s, train_cpu_s = time.monotonic() - started_s, time.process_time() - started_cpu_s
    held_out_after = _held_out_loss(run)

    staging = Path(tempfile.mkdtemp(prefix=f".{options.out.name}.", dir=_parent(options.out)))
    run.model.save_pretrained(staging)
    adapter_bytes = sum(path.stat().st_size for path in staging.iterdir() if path.is_file())
    result = FinetuneResult(
        steps=len(losses.step_losses),
        first_step_loss=losses.step_losses[0],
        last_step_loss=losses.step_losses[-1],
        held_out_loss_before=held_out_before,
        held_out_loss_after=held_out_after,
        train_s=train_s,
        train_cpu_s=train_cpu_s,
        adapter_bytes=adapter_bytes,
        adapter_dir=options.out,
        merged_dir=options.out / MERGED_DIR if options.merge else None,
    )
    _write_run_file(staging / RUN_FILE, run, result)
    if options.merge:
        _save_merged(run, staging / MERGED_DIR)
    _publish(staging, options.out)
    return result


def _held_out_loss(run: LoraRun) -> float | None:
    if run.held_out_examples is None:
        return None
    return mean_completion_loss(run.model, run.held_out_examples, run.tokenizer.pad_token_id)


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _write_run_file(path: Path, run: LoraRun, result: FinetuneResult) -> None:
    options = run.plan.options
    lineage = {
        "base": options.base,
        "dataset": {"file": str(options.dataset), "sha256": _sha256(options.dataset), "records": len(run.plan.records)},
        "held_out": None if options.held_out is None else {"file": str(options.held_out), "sha256": _sha256(options.held_out)},
        "options": {key: value for key, value in asdict(options).items() if key not in {"base", "dataset", "held_out", "out"}},
        "parameters": {"trainable": run.trainable_parameters, "total": run.total_parameters},
        "result": {key: value for key, value in asdict(result).items() if not key.endswith("_dir")},
    }
    path.write_text(json.dumps(lineage, indent=2, default=str) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_merged(run: LoraRun, folder: Path) -> None:
    # merge_and_unload folds B @ A * alpha / rank into each base weight in place
    # and returns the plain transformers model, which saves as a full model folder.
    merged = run.model.merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    run.tokenizer.save_pretrained(folder)


def _publish(staging: Path, out: Path) -> None:
    for path in [staging, *staging.rglob("*")]:
        path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)
    if out.exists():
        out.rmdir()  # `_check_out` allowed only an empty folder.
    staging.rename(out)
