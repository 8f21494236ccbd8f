"""Reading a request's release log for the OpenAI-compatible routes, and sending it as server-sent events.

A stream is `data: {chunk}\\n\\n` events ending with `data: [DONE]\\n\\n`, as
OpenAI sends them. A request that fails after output was sent ends with one
`data: {"error": {...}}` event and no `[DONE]`, so the `openai` client raises
`openai.APIError` instead of reporting a normal finish.

`DisconnectWatch` notices a client that closes its connection, from
acceptance to the end of the response, so the route can cancel the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.release_log import ReleasedMessage, ReleaseLog, offset_to_entry_id

from services.ingress.openai_errors import OpenAIError, state_store_unavailable
from services.ingress.openai_responses import ResponseFormat, final_outcome
from services.ingress.streaming import STREAM_READ_BLOCK_MS

T = TypeVar("T")

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def release_entries(
    release_log: ReleaseLog, tenant: str, request_id: str, idle_timeout_s: float, watch: DisconnectWatch
) -> AsyncIterator[ReleasedMessage]:
    """Yield the request's release log from the first chunk through the final entry.

    Raises `OpenAIError` (504) when no entry arrives for `idle_timeout_s`
    seconds, `ClientDisconnected` at the next read after `watch` saw the
    client leave, and `redis.exceptions.RedisError` when Redis fails.
    """
    after = offset_to_entry_id(0)
    idle_deadline = time.monotonic() + idle_timeout_s
    while time.monotonic() < idle_deadline:
        if watch.client_left():
            raise ClientDisconnected()
        entries = await release_log.read(tenant, request_id, after_entry_id=after, block_ms=STREAM_READ_BLOCK_MS)
        for entry in entries:
            yield entry
            if entry.is_final:
                return
            after = entry.entry_id
        if entries:
            idle_deadline = time.monotonic() + idle_timeout_s
    raise OpenAIError(
        504,
        "timeout",
        f"no output for {idle_timeout_s:g} s (SLUICE_REQUEST_TIMEOUT_S); "
        f"the request may still finish: read it with GET /v1/requests/{request_id}",
    )


async def completion_events(
    first: ReleasedMessage, rest: AsyncIterator[ReleasedMessage], output: ResponseFormat, include_usage: bool
) -> AsyncIterator[bytes]:
    """Yield the SSE events of a stream whose first release log entry was `first`.

    Ends with `[DONE]` after the finish chunk (and the usage chunk when
    `include_usage`), or with an error event when the request failed, timed
    out or Redis failed.
    """
    opening = output.opening_choice()
    if opening is not None:
        yield sse_event(output.chunk(opening))
    entry = first
    try:
        while not entry.is_final:
            yield sse_event(output.chunk(output.text_choice(entry.data["text"])))
            entry = await anext(rest)
    except OpenAIError as error:
        yield sse_event(error.body())
        return
    except RedisError:
        yield sse_event(state_store_unavailable().body())
        return
    async for event in _closing_events(entry, output, include_usage):
        yield event


async def _closing_events(final: ReleasedMessage, output: ResponseFormat, include_usage: bool) -> AsyncIterator[bytes]:
    outcome = final_outcome(final.data, output.prompt_param)
    if isinstance(outcome, OpenAIError):
        yield sse_event(outcome.body())
        return
    yield sse_event(output.chunk(output.finish_choice(outcome.finish_reason)))
    if include_usage:
        yield sse_event(output.usage_chunk(outcome.usage))
    yield DONE_EVENT


class ClientDisconnected(Exception):
    """The HTTP client closed its connection before the response was complete."""


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Listens for `http.disconnect` on one request's ASGI `receive`, after its body was read.

    Create it in the route and call `stop` once the response is complete; it
    owns `receive` until then, so nothing else may read from it.
    """

    def __init__(self, receive: Receive) -> None:
        self._disconnected = asyncio.create_task(_wait_for_disconnect(receive))

    def client_left(self) -> bool:
        return self._disconnected.done() and not self._disconnected.cancelled()

    async def run(self, operation: Awaitable[T]) -> T:
        """Await `operation`; cancel it and raise `ClientDisconnected` when the client leaves first."""
        task = asyncio.ensure_future(operation)
        try:
            await asyncio.wait({task, self._disconnected}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()

        # NOTE: redis-py 8.2.0 can swallow a cancellation that arrives while it
        # opens a connection, and the task then reads on. So the task is not
        # awaited here, and `release_entries` ends it before its next read.
        task.cancel()
        task.add_done_callback(_retrieve_outcome)
        raise ClientDisconnected()

    def stop(self) -> None:
        self._disconnected.cancel()


def _retrieve_outcome(task: asyncio.Future[Any]) -> None:
    """Mark an abandoned task's exception as retrieved, so asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


class EventStreamResponse(StreamingResponse):
    """An SSE response that calls `on_disconnect` when the client leaves before the last event.

    Starlette's `StreamingResponse` notices a disconnect too, but it cancels
    the stream inside a cancel scope, where awaiting the cancellation of the
    request would be cancelled as well.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        watch: DisconnectWatch,
        on_disconnect: Callable[[], Awaitable[None]],
        headers: dict[str, str],
    ) -> None:
        # no-cache and X-Accel-Buffering: no keep proxies (nginx among them) from holding events back.
        stream_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers}
        super().__init__(events, media_type="text/event-stream", headers=stream_headers)
        self._watch = watch
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._watch.run(self.stream_response(send))
        except (ClientDisconnected, OSError):
            # uvicorn raises an OSError from `send` once the client is gone.
            await self._on_disconnect()
        finally:
            self._watch.stop()
