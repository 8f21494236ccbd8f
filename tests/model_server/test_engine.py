from __future__ import annotations

import asyncio

import pytest

from services.model_server.engine import GenerationEngine
from services.model_server.errors import RequestValidationFailed
from services.model_server.sampling import SamplingParams
from shared.modeling import load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR
from tests.model_server.conftest import TEST_MAX_TOTAL_TOKENS, make_engine

PROMPT = "ROMEO:\n"


async def _run(engine: GenerationEngine, params: SamplingParams, prompt: str = PROMPT):
    generation = engine.generate(engine.encode(prompt), params)
    tokens = [token async for token in generation]
    return generation, tokens


async def test_greedy_is_deterministic(engine) -> None:
    first, _ = await _run(engine, SamplingParams(max_new_tokens=20))
    second, _ = await _run(engine, SamplingParams(max_new_tokens=20))

    assert first.text == second.text
    assert first.seed is None


async def test_same_seed_same_sample(engine) -> None:
    params = SamplingParams(max_new_tokens=20, do_sample=True, temperature=1.0, seed=7)

    first, _ = await _run(engine, params)
    second, _ = await _run(engine, params)

    assert first.text == second.text
    assert first.seed == 7


async def test_length_finish_counts_tokens(engine) -> None:
    generation, tokens = await _run(engine, SamplingParams(max_new_tokens=9))

    assert generation.finish_reason == "length"
    assert generation.generated_tokens == 9
    assert len(tokens) == 9
    assert generation.finished


async def test_token_texts_join_to_text(engine) -> None:
    generation, tokens = await _run(engine, SamplingParams(max_new_tokens=40, do_sample=True, seed=3))

    assert "".join(token.text for token in tokens) == generation.text


async def test_stop_sequence_ends_generation(engine) -> None:
    greedy, _ = await _run(engine, SamplingParams(max_new_tokens=30))
    stop = greedy.text[5:8]

    stopped, tokens = await _run(engine, SamplingParams(max_new_tokens=30, stop=(stop,)))

    assert stopped.finish_reason == "stop_sequence"
    assert stopped.stop_index == greedy.text.find(stop)
    assert stopped.text[stopped.stop_index :].startswith(stop)
    assert len(tokens) < 30


async def test_eos_token_ends_generation(model_and_tokenizer) -> None:
    # A separate model instance whose end tokens include the first greedy token.
    model, tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    _, tokens = await _run(make_engine((model, tokenizer)), SamplingParams(max_new_tokens=1))
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokens[0].id]

    generation, tokens = await _run(make_engine((model, tokenizer)), SamplingParams(max_new_tokens=10))

    assert generation.finish_reason == "eos_token"
    assert len(tokens) == 1


async def test_top_tokens_include_greedy_choice(engine) -> None:
    _, tokens = await _run(engine, SamplingParams(max_new_tokens=3, top_n_tokens=4))

    for token in tokens:
        assert len(token.top_tokens) == 4
        assert token.top_tokens[0].id == token.id
        assert token.top_tokens[0].logprob == pytest.approx(token.logprob)


async def test_prefill_details_cover_prompt(engine) -> None:
    generation, _ = await _run(engine, SamplingParams(max_new_tokens=2, decoder_input_details=True))

    assert [t.id for t in generation.prefill] == generation.input_ids
    assert generation.prefill[0].logprob is None
    assert all(t.logprob is not None and t.logprob <= 0 for t in generation.prefill[1:])


async def test_concurrency_limit_queues_generations(model_and_tokenizer) -> None:
    engine = make_engine(model_and_tokenizer, max_concurrent_generations=1)
    events: list[str] = []

    async def consume(name: str) -> None:
        async for _ in engine.generate(engine.encode(PROMPT), SamplingParams(max_new_tokens=5)):
            events.append(name)

    await asyncio.gather(consume("a"), consume("b"))

    assert events == ["a"] * 5 + ["b"] * 5


async def test_cancelled_generation_frees_slot(model_and_tokenizer) -> None:
    engine = make_engine(model_and_tokenizer, max_concurrent_generations=1)
    generation = engine.generate(engine.encode(PROMPT), SamplingParams(max_new_tokens=50))
    iterator = aiter(generation)
    await anext(iterator)

    await iterator.aclose()
    _, tokens = await asyncio.wait_for(_run(engine, SamplingParams(max_new_tokens=2)), timeout=10)

    assert not generation.finished
    assert len(tokens) == 2


def test_empty_input_rejected(engine) -> None:
    with pytest.raises(RequestValidationFailed, match="cannot be empty"):
        engine.check_lengths(0, 10)


def test_long_input_rejected_with_limit(engine) -> None:
    with pytest.raises(RequestValidationFailed, match=f"less than {TEST_MAX_TOTAL_TOKENS} tokens. Given: 200"):
        engine.check_lengths(200, 1)


def test_total_tokens_rejected_with_limit(engine) -> None:
    with pytest.raises(RequestValidationFailed, match=f"must be <= {TEST_MAX_TOTAL_TOKENS}. Given: 100 .* and 50"):
        engine.check_lengths(100, 50)


def test_lengths_within_limits_pass(engine) -> None:
    engine.check_lengths(TEST_MAX_TOTAL_TOKENS - 1, 1)
