"""No timeout cuts a stream that keeps sending tokens, for both client kinds.

The first-token and inter-token timeouts of each kind are tested in
test_tgi.py and test_openai_compatible.py. These tests stream for longer than
every configured timeout, with each gap shorter than the inter-token timeout.
"""

from __future__ import annotations

import aiohttp
import aiohttp.client
import pytest

from services.inference.backends import Backend, StreamEnd, TokenDelta
from services.inference.openai_compatible import OpenAICompatibleBackend
from services.inference.tgi import TgiBackend
from shared.events import ChatMessage, GenerationParams
from shared.experiments import BackendConfig
from tests.inference.scripted_tgi import ScriptedServer, chunk, stream

MESSAGES = [ChatMessage(role="user", content="Speak.")]
GAP_S = 0.3
# Seven gaps of 0.3 s: the stream lasts about 2.1 s, longer than any timeout below.
LONG_EVENTS = [chunk(f"word{index} ") for index in range(6)] + [chunk("end", "length")]
SHORT_TIMEOUTS = {"connect_timeout_s": 0.5, "first_token_timeout_s": 1.0, "token_timeout_s": 1.0}


async def _text_and_end(backend: Backend) -> tuple[str, StreamEnd]:
    items = [item async for item in backend.stream(MESSAGES, GenerationParams(), model="m")]
    text = "".join(item.text for item in items if isinstance(item, TokenDelta))
    end = items[-1]
    assert isinstance(end, StreamEnd)
    return text, end


@pytest.mark.parametrize("kind", ["tgi", "openai"])
async def test_long_stream_outlasts_timeouts(scripted: ScriptedServer, kind: str) -> None:
    scripted.reset(stream(LONG_EVENTS, delay_s=GAP_S))
    config = BackendConfig(kind=kind, url=scripted.url, **SHORT_TIMEOUTS)
    backend: Backend = TgiBackend("long", config) if kind == "tgi" else OpenAICompatibleBackend("long", config)

    try:
        text, end = await _text_and_end(backend)
    finally:
        await backend.close()

    assert text == "word0 word1 word2 word3 word4 word5 end"
    assert end.finish_reason == "length"


async def test_tgi_ignores_aiohttp_default_total(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp (3.14) gives a session without a timeout a 5-minute total timeout.
    # Shrunk to 0.5 s, it would cut this 2 s stream if the TGI client fell back to it.
    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=0.5))
    scripted.reset(stream(LONG_EVENTS, delay_s=GAP_S))

    text, end = await _text_and_end(TgiBackend("long", BackendConfig(kind="tgi", url=scripted.url)))

    assert text == "word0 word1 word2 word3 word4 word5 end"
    assert end.finish_reason == "length"
