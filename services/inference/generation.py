"""One generation attempt: stream from the variant's backend and publish every chunk and the outcome.

Chunks and `generation.end` go to the CHUNKS stream, `generation.first_token`,
`generation.completed` and `request.failed` to the EVENTS stream. Every
outcome is published: an attempt ends either with `generation.end` and
`generation.completed`, or with `generation.end` (carrying the error) and
`request.failed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any

import structlog

from services.inference.accounting import AttemptClock
from services.inference.backends import Backend, BackendError, BackendProtocolError, StreamEnd
from services.inference.cancellation import CancelSignal
from services.inference.coalescing import ChunkCoalescer
from services.inference.endpoint_pool import EndpointPool
from services.inference.metrics import InferenceMetrics
from services.inference.prompt_template import apply_prompt_template
from shared.bus import EventPublisher
from shared.cancellation import CANCELLED
from shared.events import (
    AssignedPayload,
    CancelledPayload,
    ChunkPayload,
    CompletedPayload,
    EndPayload,
    Envelope,
    EventType,
    FailedPayload,
    FirstTokenPayload,
    GenerationStats,
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
# The finish reason of a generation.end message that closes a failed attempt.
ERROR_FINISH_REASON = "error"


@dataclass
class _Progress:
    """The chunks one attempt has published so far, its clock, and the endpoint that served it."""

    backend: str
    clock: AttemptClock
    texts: list[str] = field(default_factory=list)
    # The endpoint URL that served the attempt, once one was chosen.
    endpoint: str | None = None

    @property
    def elapsed_ms(self) -> float:
        return self.clock.elapsed_ms

    def stats(self, finish_reason: str, usage: Usage | None = None) -> GenerationStats:
        return self.clock.stats(self.backend, self.endpoint, finish_reason, usage)


class Generator:
    """Runs generation attempts against the configured backends. Safe to share between concurrent requests."""

    def __init__(
        self, pools: Mapping[str, EndpointPool], publisher: EventPublisher, metrics: InferenceMetrics | None = None
    ) -> None:
        self._pools = dict(pools)
        self._publisher = publisher
        # A registry of the generator's own unless the service passes the one it serves.
        self.metrics = metrics or InferenceMetrics()

    async def run(
        self, envelope: Envelope, payload: AssignedPayload, attempt: int, cancel: CancelSignal | None = None
    ) -> None:
        """Generate attempt `attempt` of the request and publish it. Raises only when publishing fails.

        A backend failure before the first chunk is retried, up to
        `MAX_BACKEND_TRIES` tries in all. A failure after it ends the request
        as failed (`stream_broken`), because the client may have seen part of
        the response. When `cancel` fires, the backend stream is closed at
        once, which stops the server's generation, and the attempt ends as cancelled.
        """
        progress = self.progress(envelope, payload)
        # Admission runs a loop only for configured pools, so the variant's pool is always here.
        pool = self._pools[payload.variant.backend]

        log.info("generation_started", variant=payload.variant.key, backend=payload.variant.backend, attempt=attempt)
        streaming = self._stream_with_retries(pool, envelope, payload, attempt, progress)
        with self.metrics.in_flight.labels(backend=progress.backend).track_inprogress():
            cancelled, end = await _run_unless_cancelled(streaming, cancel)
        if cancelled and cancel is not None:
            await self.cancelled(envelope, attempt, cancel.reason or CANCELLED, progress)
        elif end is not None:
            await self._complete(envelope, payload, attempt, progress, end)

    def progress(self, envelope: Envelope, payload: AssignedPayload) -> _Progress:
        """Start the accounting of an attempt at the `request.assigned` message `envelope`."""
        return _Progress(backend=payload.variant.backend, clock=AttemptClock(queued_since=envelope.ts))

    async def fail(
        self, envelope: Envelope, attempt: int, error_code: str, message: str, progress: _Progress | None = None
    ) -> None:
        """Close attempt `attempt` with an error: publish `generation.end`, then `request.failed`."""
        stats = progress.stats(ERROR_FINISH_REASON) if progress is not None else None
        end = EndPayload(
            attempt=attempt,
            finish_reason=ERROR_FINISH_REASON,
            usage=Usage(completion_tokens=stats.completion_tokens if stats else 0),
            error_code=error_code,
            error_message=message,
        )
        await self._publisher.publish_chunk(envelope.follow_up(EventType.END, end, attempt=attempt))
        failed = FailedPayload(stage=STAGE, error_code=error_code, message=message, stats=stats)
        await self._publisher.publish(envelope.follow_up(EventType.FAILED, failed, attempt=attempt))
        log.warning("generation_failed", attempt=attempt, error_code=error_code, error=message)

    async def cancelled(self, envelope: Envelope, attempt: int, reason: str, progress: _Progress) -> None:
        """Close attempt `attempt` as cancelled: publish `generation.end`, then `request.cancelled`."""
        stats = progress.stats(CANCELLED)
        end = EndPayload(
            attempt=attempt,
            finish_reason=CANCELLED,
            usage=Usage(completion_tokens=stats.completion_tokens),
            error_code=CANCELLED,
            error_message=reason,
        )
        await self._publisher.publish_chunk(envelope.follow_up(EventType.END, end, attempt=attempt))
        cancelled = CancelledPayload(stage=STAGE, reason=reason, stats=stats)
        await self._publisher.publish(envelope.follow_up(EventType.CANCELLED, cancelled, attempt=attempt))
        log.info("generation_cancelled", attempt=attempt, reason=reason, completion_tokens=stats.completion_tokens)

    async def _stream_with_retries(
        self, pool: EndpointPool, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress
    ) -> StreamEnd | None:
        """Return the stream's end, or None after publishing the failure.

        A retry goes to an endpoint that this attempt has not tried yet when
        the pool has one whose breaker allows a call, else to one tried before.
        """
        delay_s = FIRST_RETRY_DELAY_S
        tried: set[str] = set()
        for backend_try in range(1, MAX_BACKEND_TRIES + 1):
            try:
                async with pool.lease(avoid=tried) as endpoint:
                    progress.endpoint = endpoint.url
                    tried.add(endpoint.url)
                    return await self._stream(endpoint.backend, envelope, payload, attempt, progress)
            except BackendError as error:
                if progress.texts:
                    await self.fail(envelope, attempt, STREAM_BROKEN, str(error), progress)
                    return None
                if not error.retryable or backend_try == MAX_BACKEND_TRIES:
                    await self.fail(envelope, attempt, error.error_code, str(error), progress)
                    return None
                log.warning(
                    "backend_retry",
                    backend_try=backend_try,
                    endpoint=progress.endpoint,
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
        messages = apply_prompt_template(payload.request.messages, variant.prompt_template)
        stream = backend.stream(messages, variant.params, model=variant.model, adapter_id=variant.adapter_id)
        coalescer = ChunkCoalescer(lambda text: self._publish_chunk(envelope, payload, attempt, progress, text))
        coalescer.start()
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, StreamEnd):
                        await coalescer.flush()
                        return item
                    progress.clock.piece_arrived()
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
        labels = {"backend": first_token.backend, "variant": first_token.variant_key}
        self.metrics.ttft.labels(**labels).observe(first_token.backend_ttft_ms / 1000)
        await self._publisher.publish(envelope.follow_up(EventType.FIRST_TOKEN, first_token, attempt=attempt))

    async def _complete(
        self, envelope: Envelope, payload: AssignedPayload, attempt: int, progress: _Progress, end: StreamEnd
    ) -> None:
        generation_ms = progress.elapsed_ms
        stats = progress.stats(end.finish_reason, end.usage)
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
            stats=stats,
        )
        await self._publisher.publish(envelope.follow_up(EventType.COMPLETED, completed, attempt=attempt))
        self._record_completion(completed)
        log.info(
            "generation_completed",
            variant=payload.variant.key,
            attempt=attempt,
            chunks=len(progress.texts),
            completion_tokens=end.usage.completion_tokens,
            finish_reason=end.finish_reason,
            duration_ms=round(generation_ms, 1),
            queue_ms=stats.queue_ms,
            ttft_ms=stats.ttft_ms,
        )

    def _record_completion(self, completed: CompletedPayload) -> None:
        labels = {"backend": completed.backend, "variant": completed.variant_key}
        self.metrics.generation_duration.labels(**labels).observe(completed.generation_ms / 1000)
        self.metrics.completion_tokens.labels(**labels).inc(completed.usage.completion_tokens)


async def _run_unless_cancelled(
    work: Coroutine[Any, Any, StreamEnd | None], cancel: CancelSignal | None
) -> tuple[bool, StreamEnd | None]:
    """Run `work` until it returns or `cancel` fires; return (whether it was cancelled, its result).

    On cancellation the work task is cancelled, which closes the backend
    stream (`aclosing`) and with it the HTTP connection, so the server stops
    generating before its next token.
    """
    if cancel is None:
        return False, await work
    work_task = asyncio.create_task(work)
    cancel_task = asyncio.create_task(cancel.wait())
    try:
        await asyncio.wait({work_task, cancel_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return False, work_task.result()
        work_task.cancel()
        with suppress(asyncio.CancelledError):
            await work_task
        return True, None
    finally:
        for task in (work_task, cancel_task):
            if not task.done():
                task.cancel()
