from __future__ import annotations

import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from services.model_server.sampling import OpenAIPenaltyLogitsProcessor, SamplingParams, build_processors


def test_greedy_builds_no_warpers() -> None:
    params = SamplingParams(max_new_tokens=5, do_sample=False, temperature=0.5, top_p=0.9)

    processors = build_processors(params, prompt_length=3)

    assert len(processors) == 0


def test_sampling_builds_requested_warpers() -> None:
    params = SamplingParams(max_new_tokens=5, do_sample=True, temperature=0.5, top_p=0.9, repetition_penalty=1.2)

    kinds = [type(p) for p in build_processors(params, prompt_length=3)]

    assert kinds == [RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper]


def test_top_p_one_adds_no_warper() -> None:
    params = SamplingParams(max_new_tokens=5, do_sample=True, top_p=1.0)

    assert len(build_processors(params, prompt_length=3)) == 0


def test_penalties_count_generated_tokens_only() -> None:
    # Prompt [1, 1]; generated tokens [2, 2, 3].
    input_ids = torch.tensor([[1, 1, 2, 2, 3]])
    scores = torch.zeros(1, 4)

    penalised = OpenAIPenaltyLogitsProcessor(prompt_length=2, frequency=0.5, presence=1.0)(input_ids, scores)

    assert penalised[0].tolist() == [0.0, 0.0, -2.0, -1.5]
