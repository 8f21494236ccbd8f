"""The zero-cost backend on a loopback port, read by the inference service's own TGI client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from load_tests.zero_backend import DEFAULT_MAX_TOKENS, TOKEN_TEXT, HttpProtocol
from services.inference.backends import StreamEnd, TokenDelta
from services.inference.tgi import TgiBackend
from shared.embedded.infrastructure import free_port
from shared.events import ChatMessage, GenerationParams, Usage
from shared.experiments import BackendConfig

HOST = "127.0.0.1"
MESSAGES = [ChatMessage(role="user", content="Speak.")]


@pytest.fixture
async def backend_url() -> AsyncIterator[str]:
    port = free_port()
    server = await asyncio.get_running_loop().create_server(HttpProtocol, HOST, port)
    yield f"http://{HOST}:{port}"
    server.close()
    await server.wait_closed()


async def _stream(url: str, params: GenerationParams) -> list[object]:
    backend = TgiBackend("zero", BackendConfig(kind="tgi", url=url))
    return [item async for item in backend.stream(MESSAGES, params)]


async def test_stream_sends_max_tokens(backend_url: str) -> None:
    items = await _stream(backend_url, GenerationParams(max_new_tokens=5, temperature=0.8))

    assert items[:-1] == [TokenDelta(TOKEN_TEXT)] * 5
    assert items[-1] == StreamEnd(finish_reason="length", usage=Usage(prompt_tokens=0, completion_tokens=5))


async def test_stream_defaults_token_count(backend_url: str) -> None:
    items = await _stream(backend_url, GenerationParams())

    assert len(items) == DEFAULT_MAX_TOKENS + 1


async def test_stream_ends_with_done(backend_url: str) -> None:
    body = {"messages": [], "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(base_url=backend_url) as client:
        response = await client.post("/v1/chat/completions", json=body)

    events = [line for line in response.text.split("\n\n") if line]
    assert response.headers["content-type"] == "text/event-stream"
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data:"))["usage"]["completion_tokens"] == 2
    assert len(events) == 4


async def test_completion_without_stream(backend_url: str) -> None:
    async with httpx.AsyncClient(base_url=backend_url) as client:
        response = await client.post("/v1/chat/completions", json={"messages": [], "max_tokens": 3})

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == TOKEN_TEXT * 3


@pytest.mark.parametrize("max_tokens", [0, -1, 5000, "many", True])
async def test_invalid_max_tokens_rejected(backend_url: str, max_tokens: object) -> None:
    async with httpx.AsyncClient(base_url=backend_url) as client:
        response = await client.post("/v1/chat/completions", json={"messages": [], "max_tokens": max_tokens})

    assert response.status_code == 422
    assert "max_tokens" in response.json()["error"]


async def test_invalid_json_rejected(backend_url: str) -> None:
    async with httpx.AsyncClient(base_url=backend_url) as client:
        response = await client.post("/v1/chat/completions", content=b"{not json")

    assert response.status_code == 400


async def test_unknown_route_not_found(backend_url: str) -> None:
    async with httpx.AsyncClient(base_url=backend_url) as client:
        response = await client.get("/generate")

    assert response.status_code == 404


async def test_health_and_info_answer(backend_url: str) -> None:
    async with httpx.AsyncClient(base_url=backend_url) as client:
        health = await client.get("/health")
        info = await client.get("/info")

    assert health.status_code == 200
    assert info.json()["model_id"] == "zero-backend"


async def test_pipelined_requests_answered_in_order(backend_url: str) -> None:
    host, port = backend_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /info HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=5.0)
    writer.close()

    responses = data.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 2
    assert b"zero-backend" in responses[0]
    assert responses[1].startswith(b"200 OK")
