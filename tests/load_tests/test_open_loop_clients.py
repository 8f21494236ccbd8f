"""The direct client against the zero-cost backend on a loopback port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from load_tests.open_loop_clients import DirectClient
from load_tests.zero_backend import HttpProtocol
from shared.embedded.infrastructure import free_port

HOST = "127.0.0.1"
BODY = {"messages": [{"role": "user", "content": "Speak."}], "max_tokens": 4, "stream": True}


@pytest.fixture
async def backend_url() -> AsyncIterator[str]:
    port = free_port()
    server = await asyncio.get_running_loop().create_server(HttpProtocol, HOST, port)
    yield f"http://{HOST}:{port}"
    server.close()
    await server.wait_closed()


async def test_direct_client_times_stream(backend_url: str) -> None:
    due = time.perf_counter()
    async with DirectClient(backend_url, BODY) as client:
        result = await client.send(due)

    assert result.error is None
    assert result.ttft_s is not None
    assert result.total_s is not None
    assert 0.0 < result.ttft_s <= result.total_s


async def test_direct_client_labels_http_error(backend_url: str) -> None:
    async with DirectClient(backend_url, {**BODY, "max_tokens": 0}) as client:
        result = await client.send(time.perf_counter())

    assert result.error == "http_422"


async def test_direct_client_labels_refused_connection() -> None:
    async with DirectClient(f"http://{HOST}:{free_port()}", BODY) as client:
        result = await client.send(time.perf_counter())

    assert result.error == "ConnectError"
