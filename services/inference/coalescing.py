"""Coalescing streamed tokens into fewer chunk messages.

Each chunk is a JetStream publish that moderation then handles on its own,
so one message per token costs every stage a message per token. The
coalescer publishes the first text at once, because it sets the time to
first token. After that it publishes whatever has arrived, at most once per
interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

# A reader of streamed text notices no pause shorter than this, and a model
# writing 500 tokens/s puts about ten tokens in each chunk.
DEFAULT_CHUNK_INTERVAL_S = 0.02


class ChunkCoalescer:
    """Buffers text and publishes it through `publish` from a task of its own.

    Call `start`, then `add` for each piece of text, then `flush` once the
    stream ended (it publishes the rest and raises what a publish raised), or
    `abandon` when the stream failed. Not thread-safe; one event loop only.
    """

    def __init__(self, publish: Callable[[str], Awaitable[None]], interval_s: float = DEFAULT_CHUNK_INTERVAL_S) -> None:
        self._publish = publish
        self._interval_s = interval_s
        self._buffer: list[str] = []
        self._has_text = asyncio.Event()
        self._ending = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chunk-coalescer")

    def add(self, text: str) -> None:
        """Buffer `text`; raises at once the error of a publish that already failed."""
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise self._task.exception()
        if text:
            self._buffer.append(text)
            self._has_text.set()

    async def flush(self) -> None:
        """Publish everything buffered and wait for it; raises the error of a failed publish."""
        self._ending = True
        self._has_text.set()
        if self._task is not None:
            await self._task

    async def abandon(self) -> None:
        """Drop buffered text and wait for a publish in flight, so no chunk is left half-sent."""
        self._buffer.clear()
        self._ending = True
        self._has_text.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._has_text.wait()
            self._has_text.clear()
            if self._buffer:
                text = "".join(self._buffer)
                self._buffer.clear()
                await self._publish(text)
            if self._ending and not self._buffer:
                return
            if not self._ending:
                await asyncio.sleep(self._interval_s)
