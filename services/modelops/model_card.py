"""Write the README.md model card that records how a trained model folder was made."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.modelops.tokenizer_training import CHAT_TEMPLATE


@dataclass(frozen=True)
class CardFacts:
    """The facts the card reports. Every number comes from the run that wrote the folder."""

    command: str
    budget_minutes: float
    threads: int
    seed: int
    parameters: int
    weights_dtype: str
    context_tokens: int
    max_position_embeddings: int
    steps: int
    tokens_seen: int
    val_bits_per_char: float
    periodic_val_bits_per_char: float
    samples: list[str]


def write_model_card(out_dir: Path, facts: CardFacts) -> None:
    """Write `out_dir/README.md`, replacing any card already there."""
    (out_dir / "README.md").write_text(_render(facts), encoding="utf-8")


def _render(facts: CardFacts) -> str:
    samples = "\n\n".join(f"```text\n{sample}\n```" for sample in facts.samples)
    return f"""# tinyshakespeare-llama

A {facts.parameters / 1e6:.1f}M-parameter Llama-style causal LM and a byte-level
BPE tokenizer, both trained from scratch on tinyshakespeare (about 1.1M
characters of Shakespeare's plays). It writes recognisable pastiche of play
scripts: speaker tags, verse lines, thee and thou. It is not coherent English
and knows nothing about the world; it exists so that the platform can serve a
real model on a CPU.

## Training

- Command: `{facts.command}`
- Budget: {facts.budget_minutes:g} minutes of wall-clock time on a CPU with
  {facts.threads} threads (a 2-core machine shared with other jobs), seed {facts.seed}.
- {facts.steps} optimiser steps, {facts.tokens_seen:,} training tokens.
- Windows of {facts.context_tokens} tokens; the last 10% of the corpus is held out.
- Validation: **{facts.val_bits_per_char:.3f} bits per character** on the whole
  held-out tail ({facts.periodic_val_bits_per_char:.3f} on the subset that
  chose the checkpoint). Characters per token is the held-out text's average,
  so both are estimates.
- Weights: {facts.weights_dtype}, safetensors.

## Limits

- `max_position_embeddings` is {facts.max_position_embeddings} so that a server
  can accept longer prompts, but training only saw positions below
  {facts.context_tokens}; text degrades past that point.
- The corpus has no end-of-text marker, so the model rarely emits EOS and a
  reply runs until `max_new_tokens` or a stop sequence (for example
  `"\\n\\n"`, the end of a speech).

## Chat template

Each message becomes one speech: `system` is spoken by CHORUS, `user` by ROMEO
and `assistant` by JULIET, as `NAME:\\n<content>\\n\\n`. The generation prompt
ends with `JULIET:\\n`, so the model replies in verse.

```jinja
{CHAT_TEMPLATE}
```

## Samples

Sampled with temperature 0.8 and top-p 0.95 after the prompt shown.

{samples}
"""
