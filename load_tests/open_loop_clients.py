"""The requests the open-loop generator sends: straight to a TGI-protocol backend, or through the Sluice API.

Each client uses one `httpx.AsyncClient` with keep-alive connections and no
pool limit, so the client never queues a request that is due. Each request
sends a body built once. Error labels name the kind of failure, for example
"http_503", "final_failed", "websocket_closed_1011", "stream_closed" or the
transport exception's class. The WebSocket client negotiates
permessage-deflate, as websockets and browsers do by default.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import connect

from load_tests.open_loop import RequestResult

# The generator never waits for a pooled connection, because it opens another instead.
_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=None)
# The last SSE event of a completed chat stream.
_DONE_MARKER = b"[DONE]"
_TAIL_BYTES = 64
# Every final message contains this text, so chunk messages without it skip JSON parsing.
_FINAL_MARKER = '"final"'


def _transport_error(error: Exception) -> RequestResult:
    return RequestResult(error=type(error).__name__)


class DirectClient:
    """A client that streams `POST /v1/chat/completions` from a TGI-protocol server at `base_url`.

    TTFT ends at the first bytes of the response body and the total at its
    end, which must hold `data: [DONE]`. Use as an async context manager.
    """

    def __init__(self, base_url: str, body: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, limits=_LIMITS, timeout=None)
        self._body = body

    async def __aenter__(self) -> DirectClient:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self._http.aclose()

    async def send(self, due: float) -> RequestResult:
        try:
            return await self._stream(due)
        except httpx.HTTPError as error:
            return _transport_error(error)

    async def _stream(self, due: float) -> RequestResult:
        ttft_s = None
        tail = b""
        async with self._http.stream("POST", "/v1/chat/completions", json=self._body) as response:
            if response.status_code != 200:
                return RequestResult(error=f"http_{response.status_code}")
            async for data in response.aiter_raw():
                if ttft_s is None:
                    ttft_s = time.perf_counter() - due
                # The end of the body so far, long enough to contain the marker even when it arrives split.
                tail = (tail + data)[-_TAIL_BYTES:]
        if _DONE_MARKER not in tail:
            return RequestResult(error="stream_incomplete")
        return RequestResult(ttft_s=ttft_s, total_s=time.perf_counter() - due)


class PipelineClient:
    """A client that does what a Sluice client does: `POST /v1/requests`, then read the WebSocket `stream_url`.

    It reads to the final message. TTFT ends at the first chunk message and
    the total at the final message, whose status must be "completed". Use as an async context manager.
    """

    def __init__(self, base_url: str, api_key: str, body: dict[str, Any]) -> None:
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = httpx.AsyncClient(base_url=base_url, headers=self._headers, limits=_LIMITS, timeout=None)
        self._body = body

    async def __aenter__(self) -> PipelineClient:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self._http.aclose()

    async def send(self, due: float) -> RequestResult:
        try:
            response = await self._http.post("/v1/requests", json=self._body)
        except httpx.HTTPError as error:
            return _transport_error(error)
        if response.status_code != 202:
            return RequestResult(error=f"http_{response.status_code}")
        try:
            stream_url = response.json()["stream_url"]
        except (ValueError, KeyError, TypeError):
            return RequestResult(error="invalid_accepted_body")
        try:
            return await self._read_stream(stream_url, due)
        except ValueError:
            return RequestResult(error="invalid_final_message")
        except websockets.InvalidStatus as error:
            return RequestResult(error=f"websocket_http_{error.response.status_code}")
        except websockets.ConnectionClosed as error:
            code = error.rcvd.code if error.rcvd is not None else "without_close_frame"
            return RequestResult(error=f"websocket_closed_{code}")
        except (websockets.WebSocketException, OSError) as error:
            return _transport_error(error)

    async def _read_stream(self, stream_url: str, due: float) -> RequestResult:
        ttft_s = None
        async with connect(stream_url, additional_headers=self._headers) as connection:
            async for message in connection:
                final = _parse_final(message)
                if final is not None:
                    return _final_result(final, ttft_s, due)
                if ttft_s is None:
                    ttft_s = time.perf_counter() - due
        return RequestResult(error="stream_closed")


def _parse_final(message: str | bytes) -> dict[str, Any] | None:
    """Return the message as a dict when it is the final message, None when it is a chunk."""
    text = message.decode() if isinstance(message, bytes) else message
    if _FINAL_MARKER not in text:
        return None
    data = json.loads(text)
    return data if data.get("type") == "final" else None


def _final_result(final: dict[str, Any], ttft_s: float | None, due: float) -> RequestResult:
    if final.get("status") != "completed":
        return RequestResult(error=f"final_{final.get('status')}")
    return RequestResult(ttft_s=ttft_s, total_s=time.perf_counter() - due)
