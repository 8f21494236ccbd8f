"""A scripted TGI-protocol HTTP server on a loopback port, for failures the real model server cannot produce on demand.

Replies follow the shapes of TGI 3.3's OpenAPI description: stream chunks,
the usage chunk that `stream_options.include_usage` adds, and error bodies
with `error` and `error_type`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shared.embedded.infrastructure import free_port

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]

HOST = "127.0.0.1"
USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def chunk(content: str | None, finish_reason: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """Return one `ChatCompletionChunk`; `content=None` gives the usage-only chunk with no choices."""
    choices = [] if content is None else [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]
    return {"id": "", "created": 1, "model": "tgi", "system_fingerprint": "3.3.0", "choices": choices, "usage": usage}


GOOD_EVENTS = [chunk("Good "), chunk("morrow", "length"), chunk(None, usage=USAGE)]


def stream(events: list[dict[str, Any]], *, done: bool = True, delay_s: float = 0.0) -> Reply:
    """Reply with `events` as server-sent events, each after `delay_s`, then `[DONE]` unless `done` is False."""

    async def reply(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await asyncio.sleep(delay_s)
            await response.write(b"data:" + json.dumps(event).encode() + b"\n\n")
        if done:
            await response.write(b"data: [DONE]\n\n")
        return response

    return reply


def error(status: int, error_type: str) -> Reply:
    """Reply with HTTP `status` and a TGI error body."""

    async def reply(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "scripted failure", "error_type": error_type}, status=status)

    return reply


class ScriptedServer:
    """Serves `POST /v1/chat/completions`: each request gets the next of `replies`, the last one repeating.

    Every request body is recorded in `bodies` and its headers in `headers`.
    """

    def __init__(self) -> None:
        self.replies: list[Reply] = [stream(GOOD_EVENTS)]
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def reset(self, *replies: Reply) -> None:
        self.replies = list(replies) or [stream(GOOD_EVENTS)]
        self.bodies.clear()
        self.headers.clear()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.url = f"http://{HOST}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        reply = self.replies[min(len(self.bodies), len(self.replies)) - 1]
        return await reply(request)
