from __future__ import annotations

import aiohttp
import httpx
import pytest
from huggingface_hub import AsyncInferenceClient

from tests.model_server.conftest import TEST_MAX_TOTAL_TOKENS

MESSAGES = [{"role": "user", "content": "What say you, fair maid?"}]


async def _stream_chunks(url: str, **arguments) -> list:
    async with AsyncInferenceClient(base_url=url) as client:
        stream = await client.chat_completion(
            messages=arguments.pop("messages", MESSAGES), stream=True, stream_options={"include_usage": True}, **arguments
        )
        return [chunk async for chunk in stream]


async def _complete(url: str, **arguments):
    async with AsyncInferenceClient(base_url=url) as client:
        return await client.chat_completion(messages=MESSAGES, **arguments)


def _content(chunks: list) -> str:
    return "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)


def _finish_reasons(chunks: list) -> list[str]:
    return [choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason]


async def test_stream_matches_completion_greedy(server_url) -> None:
    chunks = await _stream_chunks(server_url, max_tokens=30, temperature=0.0)
    completion = await _complete(server_url, max_tokens=30, temperature=0.0)

    assert _content(chunks) == completion.choices[0].message.content
    assert completion.choices[0].message.role == "assistant"


async def test_usage_chunk_counts_tokens(server_url) -> None:
    chunks = await _stream_chunks(server_url, max_tokens=12, temperature=0.0)
    completion = await _complete(server_url, max_tokens=12, temperature=0.0)

    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert usage.completion_tokens == 12
    assert usage.prompt_tokens == completion.usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_length_finish_reason(server_url) -> None:
    chunks = await _stream_chunks(server_url, max_tokens=3, temperature=0.0)

    assert _finish_reasons(chunks) == ["length"]


async def test_stop_sequence_cut_from_content(server_url) -> None:
    free_run = await _complete(server_url, max_tokens=40, temperature=0.0)
    text = free_run.choices[0].message.content
    stop = text[6:9]

    chunks = await _stream_chunks(server_url, max_tokens=40, temperature=0.0, stop=[stop])
    completion = await _complete(server_url, max_tokens=40, temperature=0.0, stop=[stop])

    assert _finish_reasons(chunks) == ["stop"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == text[: text.find(stop)]
    assert _content(chunks) == completion.choices[0].message.content


async def test_sampling_parameters_accepted(server_url) -> None:
    chunks = await _stream_chunks(server_url, max_tokens=8, temperature=0.8, top_p=0.9, seed=5)

    assert chunks[-1].usage.completion_tokens == 8
    assert _content(chunks)


async def test_seeded_chat_repeats(server_url) -> None:
    first = await _complete(server_url, max_tokens=16, temperature=1.2, seed=21)
    second = await _complete(server_url, max_tokens=16, temperature=1.2, seed=21)

    assert first.choices[0].message.content == second.choices[0].message.content


async def test_tgi_model_name_accepted(server_url) -> None:
    completion = await _complete(server_url, model="tgi", max_tokens=2)

    assert completion.model == "tinyshakespeare-llama"


async def test_unknown_model_rejected(server_url) -> None:
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        await _complete(server_url, model="sonnets-lora", max_tokens=2)

    assert raised.value.status == 422
    assert "unknown model or adapter 'sonnets-lora'" in raised.value.response_error_payload["error"]
    assert "tinyshakespeare-llama" in raised.value.response_error_payload["error"]


async def test_negative_temperature_rejected(server_url) -> None:
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        await _stream_chunks(server_url, temperature=-1.0)

    assert raised.value.status == 422
    assert "`temperature`" in raised.value.response_error_payload["error"]


async def test_long_prompt_rejected_with_limit(server_url) -> None:
    messages = [{"role": "user", "content": "Speak. " * TEST_MAX_TOTAL_TOKENS}]
    with pytest.raises(aiohttp.ClientResponseError) as raised:
        await _stream_chunks(server_url, messages=messages, max_tokens=5)

    assert raised.value.status == 422
    assert f"less than {TEST_MAX_TOTAL_TOKENS} tokens" in raised.value.response_error_payload["error"]


async def test_stream_ends_with_done(server_url) -> None:
    body = {"messages": MESSAGES, "max_tokens": 2, "stream": True}
    async with httpx.AsyncClient(base_url=server_url) as http:
        response = await http.post("/v1/chat/completions", json=body)

    assert response.text.endswith("data: [DONE]\n\n")
    assert '"object":"chat.completion.chunk"' in response.text


async def test_models_lists_served_model(server_url) -> None:
    async with httpx.AsyncClient(base_url=server_url) as http:
        body = (await http.get("/v1/models")).json()

    assert [model["id"] for model in body["data"]] == ["tinyshakespeare-llama"]
