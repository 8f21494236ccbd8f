"""`WS /v1/requests/{request_id}/stream`: sends a request's release log to a WebSocket client.

Each entry of the log goes out as one JSON text message: chunks
`{"type": "chunk", "seq", "text"}`, then one `{"type": "final", ...}`, after
which the server closes normally (1000). `?offset=N` starts at chunk N, so a
client that reconnects gets what it missed. The log lives in Redis, so any
ingress replica can serve any request. A client that disconnects only stops
its reader; the request goes on.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

import asyncio
import json
import time
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, WebSocket
from prometheus_client import Gauge
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from shared.release_log import ReleaseLog, offset_to_entry_id

from services.ingress.auth import ApiKeyAuthenticator
from services.ingress.errors import AuthenticationError
from services.ingress.routes_requests import STREAM_ROUTE_NAME
from services.ingress.state_store import RequestStateStore

log = structlog.get_logger(__name__)

# One blocking read waits at most this long. It must stay well under the
# client's socket timeout (redis-py 8 defaults to 5 s), or a quiet stream
# reads as a network timeout. A separate task notices a disconnect at once.
STREAM_READ_BLOCK_MS = 1_000

# The final message is held back until the status record is terminal, so
# GET /v1/requests/{id} called after the final message returns the finished
# request. The projector records the status a few milliseconds after the
# final message, and the wait ends on the record's terminal notice, without
# polling. The bound keeps a stalled projector from keeping the stream open.
FINAL_STATUS_WAIT_S = 5.0

# Application close codes (RFC 6455 leaves 4000-4999 to applications), named
# after the HTTP status with the same meaning.
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE_TIMEOUT = 4408
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011


class ReleaseStreamer:
    """Sends one request's release log to one WebSocket, from a chunk offset to the final message."""

    def __init__(self, release_log: ReleaseLog, state_store: RequestStateStore, idle_timeout_s: float) -> None:
        self._release_log = release_log
        self._state_store = state_store
        self._idle_timeout_s = idle_timeout_s

    async def send(self, websocket: WebSocket, tenant: str, request_id: str, offset: int) -> int:
        """Send entries until the final one; return the close code to end the connection with.

        The final message waits for the status record to turn terminal, up to
        `FINAL_STATUS_WAIT_S` seconds. Returns `CLOSE_IDLE_TIMEOUT` when no entry arrived for `idle_timeout_s`
        seconds. Raises `WebSocketDisconnect` when the client left and
        `redis.exceptions.RedisError` when Redis fails.
        """
        after = offset_to_entry_id(offset)
        idle_deadline = time.monotonic() + self._idle_timeout_s
        while time.monotonic() < idle_deadline:
            entries = await self._release_log.read(tenant, request_id, after_entry_id=after, block_ms=STREAM_READ_BLOCK_MS)
            for entry in entries:
                if entry.is_final:
                    await self._wait_for_terminal_status(tenant, request_id)
                    await websocket.send_text(json.dumps(entry.data))
                    return CLOSE_NORMAL
                await websocket.send_text(json.dumps(entry.data))
                after = entry.entry_id
            if entries:
                idle_deadline = time.monotonic() + self._idle_timeout_s
        return CLOSE_IDLE_TIMEOUT

    async def _wait_for_terminal_status(self, tenant: str, request_id: str) -> None:
        deadline = time.monotonic() + FINAL_STATUS_WAIT_S
        while (remaining_s := deadline - time.monotonic()) > 0:
            block_ms = max(1, min(STREAM_READ_BLOCK_MS, int(remaining_s * 1000)))
            if await self._state_store.wait_until_terminal(tenant, request_id, block_ms):
                return
        log.warning("final_sent_before_terminal_status", request_id=request_id, tenant=tenant, waited_s=FINAL_STATUS_WAIT_S)


async def _wait_for_disconnect(websocket: WebSocket) -> None:
    """Return when the client closes; messages the client sends are ignored."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _stream_until_done_or_gone(websocket: WebSocket, send_entries: asyncio.Task[int]) -> int | None:
    """Wait for the streamer or the client's disconnect, whichever comes first; None means the client left."""
    watcher = asyncio.create_task(_wait_for_disconnect(websocket))
    done, _pending = await asyncio.wait({send_entries, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in (send_entries, watcher):
        task.cancel()
    await asyncio.gather(send_entries, watcher, return_exceptions=True)
    if send_entries not in done or send_entries.cancelled():
        return None
    return send_entries.result()


def stream_router(
    authenticator: ApiKeyAuthenticator, state_store: RequestStateStore, streamer: ReleaseStreamer, streams_in_flight: Gauge
) -> APIRouter:
    router = APIRouter(tags=["requests"])

    @router.websocket("/v1/requests/{request_id}/stream", name=STREAM_ROUTE_NAME)
    async def stream_request(websocket: WebSocket, request_id: str, offset: Annotated[int, Query(ge=0)] = 0) -> None:
        # Accept first: a close code reaches the client only on an open connection.
        await websocket.accept()
        try:
            tenant = await _authorize(websocket, authenticator, state_store, request_id)
            if tenant is None:
                return
            log.info("stream_opened", request_id=request_id, tenant=tenant, offset=offset)
            with streams_in_flight.track_inprogress():
                send_entries = asyncio.create_task(streamer.send(websocket, tenant, request_id, offset))
                close_code = await _stream_until_done_or_gone(websocket, send_entries)
        except (WebSocketDisconnect, RedisError) as error:
            await _close_after_error(websocket, request_id, error)
            return
        await _finish(websocket, request_id, tenant, close_code)

    return router


async def _authorize(
    websocket: WebSocket, authenticator: ApiKeyAuthenticator, state_store: RequestStateStore, request_id: str
) -> str | None:
    """Return the caller's tenant, or close the connection and return None when the key or the request is unknown."""
    try:
        tenant = authenticator.tenant_for(websocket.headers.get("authorization"))
    except AuthenticationError as error:
        log.info("stream_rejected", request_id=request_id, close_code=CLOSE_UNAUTHORIZED, error=error.message)
        await websocket.close(CLOSE_UNAUTHORIZED, reason="missing or invalid API key: send Authorization: Bearer <key>")
        return None
    if not await state_store.exists(tenant, request_id):
        log.info("stream_rejected", request_id=request_id, tenant=tenant, close_code=CLOSE_NOT_FOUND)
        await websocket.close(CLOSE_NOT_FOUND, reason="request not found")
        return None
    return tenant


async def _finish(websocket: WebSocket, request_id: str, tenant: str, close_code: int | None) -> None:
    if close_code is None:
        log.info("stream_client_disconnected", request_id=request_id, tenant=tenant)
        return
    if close_code == CLOSE_IDLE_TIMEOUT:
        log.warning("stream_idle_timeout", request_id=request_id, tenant=tenant)
        await websocket.close(CLOSE_IDLE_TIMEOUT, reason="no output within the request timeout")
        return
    try:
        await websocket.close(CLOSE_NORMAL)
    except WebSocketDisconnect:
        # Clients usually close as soon as they read the final message.
        log.debug("stream_closed_by_client", request_id=request_id, tenant=tenant)
        return
    log.info("stream_closed", request_id=request_id, tenant=tenant)


async def _close_after_error(websocket: WebSocket, request_id: str, error: Exception) -> None:
    if isinstance(error, WebSocketDisconnect):
        log.info("stream_client_disconnected", request_id=request_id)
        return
    log.warning("stream_read_failed", request_id=request_id, error=repr(error))
    await websocket.close(CLOSE_INTERNAL_ERROR, reason="the release log (Redis) is unavailable; reconnect with ?offset")
