from __future__ import annotations

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import ValidationError

from tests.model_server.conftest import TEST_MAX_TOTAL_TOKENS

PROMPT = "ROMEO:\n"


async def _stream(url: str, **parameters) -> list:
    async with AsyncInferenceClient(base_url=url) as client:
        return [event async for event in await client.text_generation(PROMPT, stream=True, details=True, **parameters)]


async def _generate(url: str, **parameters):
    async with AsyncInferenceClient(base_url=url) as client:
        return await client.text_generation(PROMPT, details=True, **parameters)


async def test_stream_matches_generate_greedy(server_url) -> None:
    events = await _stream(server_url, max_new_tokens=24, do_sample=False)
    whole = await _generate(server_url, max_new_tokens=24, do_sample=False)

    assert "".join(event.token.text for event in events) == whole.generated_text
    assert events[-1].generated_text == whole.generated_text
    assert [event.token.id for event in events] == [token.id for token in whole.details.tokens]


async def test_stream_final_event_has_details(server_url) -> None:
    events = await _stream(server_url, max_new_tokens=6)

    assert len(events) == 6
    assert all(event.details is None for event in events[:-1])
    assert events[-1].details.finish_reason == "length"
    assert events[-1].details.generated_tokens == 6
    assert events[-1].details.input_length == 3


async def test_generate_details_list_tokens(server_url) -> None:
    output = await _generate(server_url, max_new_tokens=5)

    assert output.details.finish_reason == "length"
    assert output.details.generated_tokens == 5
    assert len(output.details.tokens) == 5
    assert all(token.logprob <= 0 for token in output.details.tokens)


async def test_stop_sequence_finish_reason(server_url) -> None:
    free_run = await _generate(server_url, max_new_tokens=30)
    stop = free_run.generated_text[4:7]

    output = await _generate(server_url, max_new_tokens=30, stop=[stop])

    assert output.details.finish_reason == "stop_sequence"
    assert output.generated_text.startswith(free_run.generated_text[:4])
    assert stop in output.generated_text
    assert output.details.generated_tokens < 30


async def test_seeded_sampling_repeats(server_url) -> None:
    first = await _generate(server_url, max_new_tokens=20, temperature=0.9, seed=11)
    second = await _generate(server_url, max_new_tokens=20, temperature=0.9, seed=11)

    assert first.generated_text == second.generated_text
    assert first.details.seed == 11


async def test_zero_temperature_sampling_rejected(server_url) -> None:
    with pytest.raises(ValidationError, match="`temperature` must be strictly positive"):
        await _generate(server_url, do_sample=True, temperature=0.0)


async def test_stream_rejects_before_streaming(server_url) -> None:
    with pytest.raises(ValidationError, match="`top_p` must be > 0.0"):
        await _stream(server_url, top_p=1.5)


async def test_input_over_context_rejected(server_url) -> None:
    long_prompt = "ROMEO: " * TEST_MAX_TOTAL_TOKENS
    async with AsyncInferenceClient(base_url=server_url) as client:
        with pytest.raises(ValidationError, match=f"less than {TEST_MAX_TOTAL_TOKENS} tokens"):
            await client.text_generation(long_prompt, max_new_tokens=1)


async def test_total_tokens_over_context_rejected(server_url) -> None:
    with pytest.raises(ValidationError, match=f"must be <= {TEST_MAX_TOTAL_TOKENS}"):
        await _generate(server_url, max_new_tokens=TEST_MAX_TOTAL_TOKENS)


async def test_unknown_adapter_rejected(server_url) -> None:
    with pytest.raises(ValidationError, match="unknown model or adapter 'sonnets-lora'"):
        await _generate(server_url, adapter_id="sonnets-lora")


async def test_compat_route_returns_array(server_url) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "details": False}, "stream": False}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/", json=body)

    assert response.status_code == 200
    assert isinstance(response.json(), list)
    assert set(response.json()[0]) == {"generated_text"}


async def test_return_full_text_prepends_prompt(server_url) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 4, "return_full_text": True}}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/generate", json=body)

    assert response.json()["generated_text"].startswith(PROMPT)


async def test_stream_events_are_sse(server_url) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2}}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/generate_stream", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("data:{")
    assert response.text.count("\n\n") == 2


async def test_wrong_type_names_field(server_url) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": "many"}}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/generate", json=body)

    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"
    assert "`parameters.max_new_tokens`" in response.json()["error"]


async def test_unknown_parameter_rejected(server_url) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_tokens": 3}}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/generate", json=body)

    assert response.status_code == 422
    assert "`parameters.max_tokens`" in response.json()["error"]


async def test_info_reports_limits(server_url) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        info = (await http.get("/info")).json()

    assert info["model_id"] == "tinyshakespeare-llama"
    assert info["max_total_tokens"] == TEST_MAX_TOTAL_TOKENS
    assert info["max_input_tokens"] == TEST_MAX_TOTAL_TOKENS - 1
    assert info["max_stop_sequences"] == 4
    assert info["max_concurrent_requests"] == 2


async def test_health_returns_ok(server_url) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.get("/health")

    assert response.status_code == 200
