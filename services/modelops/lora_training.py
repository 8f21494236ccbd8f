"""The optimizer loop for an adapter: shuffled padded batches, AdamW, a linear schedule, completion-only loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from services.modelops.finetune_data import IGNORED_LABEL, TokenizedExample, collate

# The learning rate rises linearly over this fraction of the steps, then falls
# linearly to zero, as in the Hugging Face Trainer's "linear" schedule. The
# warmup keeps the first updates small while the adapter's B matrices are still zero.
WARMUP_FRACTION = 0.06
# The Hugging Face Trainer's default `max_grad_norm`.
GRAD_CLIP_NORM = 1.0
# Examples per forward pass when measuring loss; it bounds memory, not the result.
EVAL_BATCH_SIZE = 32


@dataclass(frozen=True)
class TrainingSchedule:
    """How long and how fast to train: epochs, batch size, an optional step cap, the peak learning rate, the seed."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    max_steps: int | None = None

    def total_steps(self, example_count: int) -> int:
        """Return the number of optimizer steps over `example_count` examples: every batch of every epoch, capped."""
        steps = self.epochs * math.ceil(example_count / self.batch_size)
        return steps if self.max_steps is None else min(steps, self.max_steps)


@dataclass
class TrainingLosses:
    """The training loss of every optimizer step, in order (mean over the batch's completion tokens)."""

    step_losses: list[float] = field(default_factory=list)


def train_adapter(
    model: PreTrainedModel,
    examples: Sequence[TokenizedExample],
    schedule: TrainingSchedule,
    pad_token_id: int,
    on_step: Callable[[int, int, float], None],
) -> TrainingLosses:
    """Train the parameters of `model` that require gradients; call `on_step(step, total_steps, loss)` after each step.

    Batches are drawn without replacement within an epoch, in an order fixed
    by `schedule.seed`. The model is left in eval mode.
    """
    total_steps = schedule.total_steps(len(examples))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=schedule.learning_rate)
    warmup_steps = math.ceil(total_steps * WARMUP_FRACTION)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    losses = TrainingLosses()
    model.train()
    for batch in _batches(examples, schedule, total_steps, pad_token_id):
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP_NORM)
        optimizer.step()
        scheduler.step()
        losses.step_losses.append(loss.item())
        on_step(len(losses.step_losses), total_steps, losses.step_losses[-1])
    model.eval()
    return losses


def _batches(
    examples: Sequence[TokenizedExample], schedule: TrainingSchedule, total_steps: int, pad_token_id: int
) -> Iterator[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(schedule.seed)
    steps = 0
    while steps < total_steps:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), schedule.batch_size):
            if steps == total_steps:
                return
            yield collate([examples[index] for index in order[start : start + schedule.batch_size]], pad_token_id)
            steps += 1


def mean_completion_loss(model: PreTrainedModel, examples: Sequence[TokenizedExample], pad_token_id: int) -> float:
    """Return the cross-entropy per completion token over all `examples`, in nats (its exponential is the perplexity)."""
    total_loss = 0.0
    total_tokens = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH_SIZE):
            batch = collate(examples[start : start + EVAL_BATCH_SIZE], pad_token_id)
            # The model shifts labels by one, so the first label never counts.
            tokens = int((batch["labels"][:, 1:] != IGNORED_LABEL).sum())
            total_loss += model(**batch).loss.item() * tokens
            total_tokens += tokens
    model.train(was_training)
    # No token counts when every completion is a single token with an empty prompt.
    return total_loss / total_tokens if total_tokens else math.nan
