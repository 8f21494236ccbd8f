"""The TGI adapter against a scripted TGI-protocol HTTP server on a loopback port."""

from __future__ import annotations

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
from services.inference.tgi import TgiBackend
from shared.embedded.infrastructure import free_port
from shared.events import ChatMessage, GenerationParams, Usage
from shared.experiments import BackendConfig
from tests.inference.scripted_tgi import GOOD_EVENTS, ScriptedServer, chunk, error, stream

HOST = "127.0.0.1"
MESSAGES = [ChatMessage(role="user", content="Speak.")]


def _backend(url: str, **timeouts: float) -> TgiBackend:
    return TgiBackend("scripted", BackendConfig(kind="tgi", url=url, **timeouts))


async def _collect(backend: TgiBackend, params: GenerationParams | None = None, adapter_id: str | None = None) -> list[StreamItem]:
    return [item async for item in backend.stream(MESSAGES, params or GenerationParams(), adapter_id=adapter_id)]


async def test_stream_yields_deltas_then_end(scripted: ScriptedServer) -> None:
    items = await _collect(_backend(scripted.url))

    assert items == [
        TokenDelta("Good "),
        TokenDelta("morrow"),
        StreamEnd(finish_reason="length", usage=Usage(prompt_tokens=5, completion_tokens=2)),
    ]


async def test_unset_params_not_sent(scripted: ScriptedServer) -> None:
    await _collect(_backend(scripted.url), GenerationParams(temperature=0.5))

    body = scripted.bodies[0]
    assert body["temperature"] == 0.5
    for name in ("max_tokens", "top_p", "stop"):
        assert name not in body


async def test_params_mapped_to_chat_names(scripted: ScriptedServer) -> None:
    await _collect(_backend(scripted.url), GenerationParams(max_new_tokens=12, top_p=0.9, stop=["\n"]))

    body = scripted.bodies[0]
    assert body["max_tokens"] == 12
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n"]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Speak."}]


async def test_base_model_named_tgi(scripted: ScriptedServer) -> None:
    await _collect(_backend(scripted.url))

    assert scripted.bodies[0]["model"] == "tgi"


async def test_adapter_id_sent_as_model(scripted: ScriptedServer) -> None:
    await _collect(_backend(scripted.url), adapter_id="verse-lora")

    assert scripted.bodies[0]["model"] == "verse-lora"


async def test_missing_usage_gives_zero_usage(scripted: ScriptedServer) -> None:
    scripted.reset(stream([chunk("Hark", "eos_token")]))

    items = await _collect(_backend(scripted.url))

    assert items[-1] == StreamEnd(finish_reason="eos_token", usage=Usage())


async def test_empty_deltas_skipped(scripted: ScriptedServer) -> None:
    scripted.reset(stream([chunk(""), chunk("Hark"), chunk("", "eos_token")]))

    items = await _collect(_backend(scripted.url))

    assert items[:-1] == [TokenDelta("Hark")]


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (503, "overloaded", BackendUnavailable),
        (500, "incomplete_generation", BackendUnavailable),
        (429, "overloaded", BackendUnavailable),
        (422, "validation", BackendRejected),
    ],
)
async def test_http_status_translated(
    scripted: ScriptedServer, status: int, error_type: str, expected: type[Exception]
) -> None:
    scripted.reset(error(status, error_type))

    with pytest.raises(expected) as caught:
        await _collect(_backend(scripted.url))

    assert f"HTTP {status}" in str(caught.value)
    assert "scripted failure" in str(caught.value)


async def test_rejected_not_retryable(scripted: ScriptedServer) -> None:
    scripted.reset(error(422, "validation"))

    with pytest.raises(BackendRejected) as caught:
        await _collect(_backend(scripted.url))

    assert caught.value.retryable is False
    assert caught.value.error_code == "backend_rejected"


async def test_error_event_mid_stream(scripted: ScriptedServer) -> None:
    scripted.reset(stream([chunk("Good "), {"error": "CUDA out of memory", "error_type": "generation"}]))
    received: list[StreamItem] = []

    with pytest.raises(BackendGenerationFailed):
        async for item in _backend(scripted.url).stream(MESSAGES, GenerationParams()):
            received.append(item)

    assert received == [TokenDelta("Good ")]


async def test_stream_without_finish_reason(scripted: ScriptedServer) -> None:
    scripted.reset(stream([chunk("Good ")], done=False))

    with pytest.raises(BackendProtocolError):
        await _collect(_backend(scripted.url))


async def test_slow_first_token_times_out(scripted: ScriptedServer) -> None:
    scripted.reset(stream(GOOD_EVENTS, delay_s=1.0))

    with pytest.raises(BackendTimeout) as caught:
        await _collect(_backend(scripted.url, first_token_timeout_s=0.2))

    assert caught.value.retryable is True
    assert caught.value.error_code == "backend_timeout"


async def test_refused_connection_unavailable() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        await _collect(_backend(f"http://{HOST}:{free_port()}"))

    assert caught.value.error_code == "backend_unavailable"
    assert isinstance(caught.value.__cause__, OSError)


async def test_stalled_stream_times_out(scripted: ScriptedServer) -> None:
    scripted.reset(stream(GOOD_EVENTS, delay_s=0.3))
    received: list[StreamItem] = []

    with pytest.raises(BackendTimeout):
        async for item in _backend(scripted.url, first_token_timeout_s=2.0, token_timeout_s=0.1).stream(MESSAGES, GenerationParams()):
            received.append(item)

    assert received == [TokenDelta("Good ")]
