"""One generation attempt: stream from the variant's backend and publish every chunk and the outcome.

Chunks and `generation.end` go to the CHUNKS stream, `generation.first_token`,
`generation.completed` and `request.failed` to the EVENTS stream. Every
outcome is published: an attempt ends either with `generation.end` and
`generation.completed`, or with `generation.end` (carrying the error) and
`request.failed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog

from services.inference.backends import Backend, BackendError, BackendProtocolError, StreamEnd
from services.inference.coalescing import ChunkCoalescer
from shared.bus import EventPublisher
from shared.events import (
    AssignedPayload,
    ChunkPayload,
    CompletedPayload,
    EndPayload,
    Envelope,
    EventType,
    FailedPayload,
    FirstTokenPayload,
    Usage,
)

log = structlog.get_logger(__name__)

STAGE = "inference"

# Three tries with 0.5 s then 1 s between them ride out a model server
# restart on the same host without holding a failed request for long.
MAX_BACKEND_TRIES = 3
FIRST_RETRY_DELAY_S = 0.5
RETRY_DELAY_FACTOR = 2.0

STREAM_BROKEN = "stream_broken"
BACKEND_NOT_CONFIGURED = "backend_not_configured"
# The finish reason of a generation.end message that closes a failed attempt.
ERROR_FINISH_REASON = "error"


@dataclass
class _Progress:
    """The chunks one attempt has published so far, and when the attempt started."""

    started_s: float
    texts: list[str] = field(default_factory=list)

    @property
    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started_s) * 1000.0


class Generator:
    """Runs generation attempts against the configured backends. Safe to share between concurrent requests."""

    def __init__(self, backends: Mapping[str, Backend], publisher: EventPublisher) -> None:
        self._backends = dict(backends)
        self._publisher = publisher

    async def run(self, envelope: Envelope, payload: AssignedPayload, attempt: int) -> None:
        """Generate attempt `attempt` of the request and publish it. Raises only when publishing fails.

        A backend failure before the first chunk is retried, up to
        `MAX_BACKEND_TRIES` tries in all. A failure after it ends the request
        as failed (`stream_broken`), because the client may have seen part of
        the response.
        """
        progress = _Progress(started_s=time.monotonic())
        backend = self._backends.get(payload.variant.backend)
        if backend is None:
            message = f"backend {payload.variant.backend!r} is not in this service's backends file"
            await self.fail(envelope, attempt, BACKEND_NOT_CONFIGURED, message)
            return

        log.info("generation_started", variant=payload.variant.key, backend=payload.variant.backend, attempt=attempt)
        end = await self._stream_with_retries(backend, envelope, payload, attempt, progress)
        if end is not None:
            await self._complete(envelope, payload, attempt, progress, end)

    async def fail(self, envelope: Envelope, attempt: int, error_code: str, message: str) -> None:
        """Close attempt `attempt` with an error: publish `generation.end`, then `request.failed`."""
        end = EndPayload(
            attempt=attempt,
            finish_reason=ERROR_FINISH_REASON,
            usage=Usage(),
            error_code=error_code,
            error_message=message,
        )
        await self._publisher.publish_chunk(envelope.follow_up(EventType.END, end, attempt=attempt))
        failed = FailedPayload(stage=STAGE, error_code=error_code, message=message)
        await self._publisher.publish(envelope.follow_up(EventType.FAILED, failed, attempt=attempt))
        log.warning("generation_failed", attempt=attempt, error_code=error_code, error=message)

    async def _stream_with_retries(
        self, backend: Backend, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress
    ) -> StreamEnd | None:
        """Return the stream's end, or None after publishing the failure."""
        delay_s = FIRST_RETRY_DELAY_S
        for backend_try in range(1, MAX_BACKEND_TRIES + 1):
            try:
                return await self._stream(backend, envelope, payload, attempt, progress)
            except BackendError as error:
                if progress.texts:
                    await self.fail(envelope, attempt, STREAM_BROKEN, str(error))
                    return None
                if not error.retryable or backend_try == MAX_BACKEND_TRIES:
                    await self.fail(envelope, attempt, error.error_code, str(error))
                    return None
                log.warning(
                    "backend_retry",
                    backend_try=backend_try,
                    delay_s=delay_s,
                    error_code=error.error_code,
                    error=str(error),
                )
            await asyncio.sleep(delay_s)
            delay_s *= RETRY_DELAY_FACTOR
        return None

    async def _stream(
        self, backend: Backend, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress
    ) -> StreamEnd:
        variant = payload.variant
        stream = backend.stream(
            payload.request.messages, variant.params, model=variant.model, adapter_id=variant.adapter_id
        )
        coalescer = ChunkCoalescer(lambda text: self._publish_chunk(envelope, payload, attempt, progress, text))
        coalescer.start()
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, StreamEnd):
                        await coalescer.flush()
                        return item
                    coalescer.add(item.text)
        finally:
            await coalescer.abandon()
        raise BackendProtocolError(f"backend {variant.backend!r} ended its stream without a StreamEnd")

    async def _publish_chunk(
        self, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress, text: str
    ) -> None:
        seq = len(progress.texts)
        chunk = ChunkPayload(attempt=attempt, seq=seq, text=text)
        await self._publisher.publish_chunk(envelope.follow_up(EventType.CHUNK, chunk, attempt=attempt, seq=seq))
        progress.texts.append(text)
        if seq == 0:
            await self._publish_first_token(envelope, payload, attempt, progress)

    async def _publish_first_token(
        self, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress
    ) -> None:
        first_token = FirstTokenPayload(
            variant_key=payload.variant.key,
            backend=payload.variant.backend,
            attempt=attempt,
            backend_ttft_ms=progress.elapsed_ms,
        )
        await self._publisher.publish(envelope.follow_up(EventType.FIRST_TOKEN, first_token, attempt=attempt))

    async def _complete(
        self, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress, end: StreamEnd
    ) -> None:
        generation_ms = progress.elapsed_ms
        end_payload = EndPayload(attempt=attempt, finish_reason=end.finish_reason, usage=end.usage)
        await self._publisher.publish_chunk(envelope.follow_up(EventType.END, end_payload, attempt=attempt))
        completed = CompletedPayload(
            variant_key=payload.variant.key,
            backend=payload.variant.backend,
            attempt=attempt,
            text="".join(progress.texts),
            finish_reason=end.finish_reason,
            usage=end.usage,
            generation_ms=generation_ms,
        )
        await self._publisher.publish(envelope.follow_up(EventType.COMPLETED, completed, attempt=attempt))
        log.info(
            "generation_completed",
            variant=payload.variant.key,
            attempt=attempt,
            chunks=len(progress.texts),
            completion_tokens=end.usage.completion_tokens,
            finish_reason=end.finish_reason,
            duration_ms=round(generation_ms, 1),
        )
