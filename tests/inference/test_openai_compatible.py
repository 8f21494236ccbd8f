"""The OpenAI-compatible adapter against the scripted chat completions server and the real model server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.inference.backends import (
    BackendGenerationFailed,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    StreamEnd,
    StreamItem,
    TokenDelta,
)
from services.inference.openai_compatible import NO_API_KEY, OpenAICompatibleBackend
from shared.embedded.infrastructure import free_port
from shared.events import ChatMessage, GenerationParams, Usage
from shared.experiments import BackendConfig, ConfigError
from tests.inference.scripted_tgi import GOOD_EVENTS, ScriptedServer, chunk, error, stream

HOST = "127.0.0.1"
MESSAGES = [ChatMessage(role="user", content="Speak.")]


@pytest.fixture
async def backends() -> AsyncIterator[list[OpenAICompatibleBackend]]:
    """Collects the backends a test builds and closes their clients afterwards."""
    built: list[OpenAICompatibleBackend] = []
    yield built
    for backend in built:
        await backend.close()


def _build(built: list[OpenAICompatibleBackend], url: str, **options: object) -> OpenAICompatibleBackend:
    backend = OpenAICompatibleBackend("engine", BackendConfig(kind="openai", url=url, **options))
    built.append(backend)
    return backend


async def _collect(
    backend: OpenAICompatibleBackend,
    params: GenerationParams | None = None,
    model: str | None = "served-model",
    adapter_id: str | None = None,
) -> list[StreamItem]:
    items = backend.stream(MESSAGES, params or GenerationParams(), model=model, adapter_id=adapter_id)
    return [item async for item in items]


async def test_stream_yields_deltas_then_end(scripted: ScriptedServer, backends: list) -> None:
    items = await _collect(_build(backends, scripted.url))

    assert items == [
        TokenDelta("Good "),
        TokenDelta("morrow"),
        StreamEnd(finish_reason="length", usage=Usage(prompt_tokens=5, completion_tokens=2)),
    ]


async def test_request_body_follows_chat_api(scripted: ScriptedServer, backends: list) -> None:
    await _collect(_build(backends, scripted.url), GenerationParams(max_new_tokens=12, top_p=0.9, stop=["\n"]))

    body = scripted.bodies[0]
    assert body["model"] == "served-model"
    assert body["max_tokens"] == 12
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Speak."}]
    assert "temperature" not in body


async def test_adapter_id_wins_over_model(scripted: ScriptedServer, backends: list) -> None:
    await _collect(_build(backends, scripted.url), adapter_id="verse-lora")

    assert scripted.bodies[0]["model"] == "verse-lora"


async def test_backend_model_is_fallback(scripted: ScriptedServer, backends: list) -> None:
    await _collect(_build(backends, scripted.url, model="engine-default"), model=None)

    assert scripted.bodies[0]["model"] == "engine-default"


async def test_no_model_anywhere_rejected(scripted: ScriptedServer, backends: list) -> None:
    with pytest.raises(BackendRejected, match="needs a model name"):
        await _collect(_build(backends, scripted.url), model=None)

    assert scripted.bodies == []


async def test_api_key_read_from_environment(
    scripted: ScriptedServer, backends: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_KEY", "sk-engine-test")

    await _collect(_build(backends, scripted.url, api_key_env="ENGINE_KEY"))

    assert scripted.headers[0]["Authorization"] == "Bearer sk-engine-test"


async def test_missing_key_variable_fails_at_start(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_KEY", raising=False)

    with pytest.raises(ConfigError, match=r"backend engine \(.*\): api_key_env names ENGINE_KEY, which is not set"):
        OpenAICompatibleBackend("engine", BackendConfig(kind="openai", url=scripted.url, api_key_env="ENGINE_KEY"))


async def test_placeholder_key_without_variable(scripted: ScriptedServer, backends: list) -> None:
    await _collect(_build(backends, scripted.url))

    assert scripted.headers[0]["Authorization"] == f"Bearer {NO_API_KEY}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [(503, BackendUnavailable), (500, BackendUnavailable), (429, BackendUnavailable), (422, BackendRejected)],
)
async def test_http_status_translated(
    scripted: ScriptedServer, backends: list, status: int, expected: type[Exception]
) -> None:
    scripted.reset(error(status, "validation"))

    with pytest.raises(expected) as caught:
        await _collect(_build(backends, scripted.url))

    assert f"HTTP {status}" in str(caught.value)
    assert "scripted failure" in str(caught.value)
    # One attempt only: retries belong to the generator.
    assert len(scripted.bodies) == 1


async def test_error_event_mid_stream(scripted: ScriptedServer, backends: list) -> None:
    scripted.reset(stream([chunk("Good "), {"error": "CUDA out of memory", "error_type": "generation"}]))
    received: list[StreamItem] = []

    with pytest.raises(BackendGenerationFailed):
        async for item in _build(backends, scripted.url).stream(MESSAGES, GenerationParams(), model="m"):
            received.append(item)

    assert received == [TokenDelta("Good ")]


async def test_stream_without_finish_reason(scripted: ScriptedServer, backends: list) -> None:
    scripted.reset(stream([chunk("Good ")], done=False))

    with pytest.raises(BackendProtocolError):
        await _collect(_build(backends, scripted.url))


async def test_slow_first_token_times_out(scripted: ScriptedServer, backends: list) -> None:
    scripted.reset(stream(GOOD_EVENTS, delay_s=1.0))

    with pytest.raises(BackendTimeout) as caught:
        await _collect(_build(backends, scripted.url, first_token_timeout_s=0.2))

    assert caught.value.retryable is True


async def test_stalled_stream_times_out(scripted: ScriptedServer, backends: list) -> None:
    scripted.reset(stream(GOOD_EVENTS, delay_s=0.3))
    backend = _build(backends, scripted.url, first_token_timeout_s=2.0, token_timeout_s=0.1)
    received: list[StreamItem] = []

    with pytest.raises(BackendTimeout):
        async for item in backend.stream(MESSAGES, GenerationParams(), model="m"):
            received.append(item)

    assert received == [TokenDelta("Good ")]


async def test_refused_connection_unavailable(backends: list) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        await _collect(_build(backends, f"http://{HOST}:{free_port()}"))

    assert caught.value.error_code == "backend_unavailable"


async def test_model_server_streams_text(model_server_url: str, backends: list) -> None:
    backend = _build(backends, model_server_url)

    items = await _collect(backend, GenerationParams(max_new_tokens=8, temperature=0.8), model="tinyshakespeare-llama")

    deltas = [item for item in items if isinstance(item, TokenDelta)]
    end = items[-1]
    assert deltas
    assert isinstance(end, StreamEnd)
    assert end.usage.completion_tokens == 8
    assert end.finish_reason == "length"
