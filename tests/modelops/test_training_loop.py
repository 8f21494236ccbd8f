from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from services.modelops.training_loop import Corpus, Recipe, bits_per_char, train

VOCAB = 32


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64
    )
    return LlamaForCausalLM(config)


def _repeating_corpus() -> Corpus:
    # A cycle the model can learn within a second: 0, 1, ..., 7, 0, 1, ...
    ids = torch.arange(4000) % 8
    return Corpus(train_ids=ids[:3000], val_ids=ids[3000:], val_chars_per_token=2.0)


def test_untrained_model_near_uniform() -> None:
    score = bits_per_char(_tiny_model(), _repeating_corpus(), context_tokens=16, max_windows=None)

    # log2(32) bits per token over 2 characters per token, give or take initialisation noise.
    assert math.isclose(score, math.log2(VOCAB) / 2, rel_tol=0.1)


def test_training_lowers_validation_score() -> None:
    model = _tiny_model()
    corpus = _repeating_corpus()
    before = bits_per_char(model, corpus, context_tokens=16, max_windows=None)
    reports: list[dict[str, float]] = []

    result = train(model, corpus, Recipe(context_tokens=16, batch_size=4, eval_interval_s=0.5), 1.5, 0, reports.append)

    assert result.steps > 0
    assert result.best_val_bits_per_char < before
    assert result.best_val_bits_per_char == min(point["val_bits_per_char"] for point in reports)
    assert result.tokens_seen == result.steps * 4 * 16


def test_best_state_is_a_copy() -> None:
    model = _tiny_model()

    result = train(model, _repeating_corpus(), Recipe(context_tokens=16, batch_size=4), 0.3, 0, lambda _: None)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    assert not torch.equal(next(iter(result.best_state.values())), next(model.parameters()))
