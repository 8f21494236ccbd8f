"""Sampling parameters of one request and the logits processors that apply them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token; the route that built it has validated every range.

    `do_sample` false means greedy decoding, and the sampling fields are then
    ignored. `seed` is None for greedy decoding and set for sampling.
    """

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_n_tokens: int = 0
    decoder_input_details: bool = False


class OpenAIPenaltyLogitsProcessor(LogitsProcessor):
    """Subtract `frequency × count + presence × (count > 0)` from each token's logit, counting generated tokens only.

    This is OpenAI's definition of frequency and presence penalties, which TGI
    also uses; both range from -2.0 to 2.0.
    """

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self._prompt_length = prompt_length
        self._frequency = frequency
        self._presence = presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self._prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self._frequency * counts - self._presence * (counts > 0).to(scores.dtype)


def build_processors(params: SamplingParams, prompt_length: int) -> LogitsProcessorList:
    """Return the processors for `params`: penalties always, the warpers only when sampling."""
    processors = LogitsProcessorList()
    if params.repetition_penalty is not None:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        penalties = OpenAIPenaltyLogitsProcessor(prompt_length, params.frequency_penalty or 0.0, params.presence_penalty or 0.0)
        processors.append(penalties)
    if params.do_sample:
        processors.extend(_warpers(params))
    return processors


def _warpers(params: SamplingParams) -> list[LogitsProcessor]:
    warpers: list[LogitsProcessor] = []
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    if params.typical_p is not None and params.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(params.typical_p))
    return warpers
