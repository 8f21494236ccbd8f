"""Moderating each request's output as it streams: hold back, scan, release, and close the release log.

Each message first updates the request's `OutputStream` in memory and then
performs the writes that are still missing. The update is safe to repeat,
because chunks are accepted by seq and the way a stream ends is decided
once. A message whose writes failed is therefore redelivered, and it only
repeats the missing writes, each of which is idempotent.

NOTE: the state lives in this process. A restart, or a second replica that
receives part of a request's chunks, loses the held text of open streams:
such a request ends as failed (`moderation_state_lost`) when its next chunk
arrives. Run one moderation replica.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import structlog

from services.moderation.holdback import OutputPolicy, OutputScanners
from services.moderation.metrics import FULL_CHECK, HOLDBACK_CHECK, ModerationMetrics
from services.moderation.sink import OutputSink
from services.moderation.stream import ChunkOrder, Closing, OutputStream, StreamTable
from shared.cancellation import CANCELLED
from shared.events import (
    ChunkPayload,
    DeliveredPayload,
    EndPayload,
    Envelope,
    EventType,
    FailedPayload,
    ModeratedPayload,
    Usage,
    Verdict,
)
from shared.scanning import ChainResult, ScannerFailed

log = structlog.get_logger(__name__)

STAGE = "moderation"

# The finish reason of an output that moderation blocked.
BLOCKED_FINISH_REASON = "moderation"

# Error codes of the failures that moderation itself ends a request with.
STATE_LOST = "moderation_state_lost"
INTERRUPTED = "interrupted"
CHUNK_MISSING = "chunk_missing"
SCANNER_FAILED = "scanner_failed"

# A chunk that arrives before an earlier one is redelivered this many times
# while it waits. The earlier chunk was nacked for a failed write and comes
# back after the app's retry delay, so a few deliveries cover a short outage.
MAX_EARLY_DELIVERIES = 5


class Disposition(enum.Enum):
    """The consumer's action on a message after the moderator handled it."""

    ACK = "ack"
    # Nack with a delay: an earlier chunk of the same attempt must be handled first.
    RETRY = "retry"


class Moderator:
    """Handles the `generation.chunk` and `generation.end` messages of every request.

    Not safe for concurrent use, so the consumer must hand it one message at
    a time, in stream order. A failed write raises `DeliveryFailed`, after
    which the message should be redelivered. `policy` returns the output
    policy in force. Each stream picks its scanners from it once, when it
    opens, by the envelope's tenant and route.
    """

    def __init__(
        self,
        policy: Callable[[], OutputPolicy],
        sink: OutputSink,
        table: StreamTable,
        metrics: ModerationMetrics | None = None,
    ) -> None:
        self._policy = policy
        self._sink = sink
        self._table = table
        # A registry of the moderator's own unless the service passes the one it serves.
        self.metrics = metrics or ModerationMetrics()
        self.metrics.watch_streams(table)

    @property
    def holdback_chars(self) -> int:
        """The holdback of requests that no override applies to, in the policy in force."""
        return self._policy().default.holdback.holdback_chars

    async def handle_chunk(self, envelope: Envelope, chunk: ChunkPayload, deliveries: int) -> Disposition:
        """Accept, check and release one chunk; `deliveries` counts JetStream deliveries of this message."""
        self._evict_idle()
        stream = self._stream_for_chunk(envelope, chunk)
        if stream is None or stream.closed:
            return Disposition.ACK

        if stream.closing is None:
            order = stream.accept(chunk.seq, chunk.text)
            if order is ChunkOrder.EARLY:
                return await self._wait_for_missing_chunk(stream, envelope, deliveries)
            if order is ChunkOrder.NEXT:
                await self._check(stream)

        await self._write(stream, envelope)
        return Disposition.ACK

    async def handle_end(self, envelope: Envelope, end: EndPayload, deliveries: int) -> Disposition:
        """Close the stream: the full output check, the held tail and the final entry, then the events."""
        self._evict_idle()
        stream = await self._stream_for_end(envelope, end)
        if stream is None:
            return Disposition.ACK

        if stream.closing is None and stream.awaiting_missing_chunk:
            if await self._wait_for_missing_chunk(stream, envelope, deliveries) is Disposition.RETRY:
                return Disposition.RETRY
        if stream.closing is None:
            stream.closing = await self._closing_at_end(stream, end)

        if not stream.closed:
            await self._write(stream, envelope)
        self._table.drop(stream)
        return Disposition.ACK

    def _stream_for_chunk(self, envelope: Envelope, chunk: ChunkPayload) -> OutputStream | None:
        """Return the stream the chunk belongs to, or None when it is from an earlier attempt."""
        stream = self._table.get(envelope.tenant, envelope.request_id)
        restarts = stream is not None and chunk.attempt > stream.attempt and stream.closing is None
        if stream is None or (restarts and not stream.released_chunks):
            # A new request, or a retried attempt whose predecessor released nothing:
            # the earlier attempt's held text is discarded.
            stream = self._open(envelope, chunk.attempt)
            if chunk.seq > 0:
                stream.closing = self._failure(
                    STATE_LOST, f"chunk {chunk.seq} of attempt {chunk.attempt} arrived, but not the chunks before it"
                )
            return stream

        if chunk.attempt < stream.attempt:
            return None
        if restarts:
            stream.closing = self._failure(
                INTERRUPTED, f"attempt {chunk.attempt} started after attempt {stream.attempt} had released output"
            )
        return stream

    async def _stream_for_end(self, envelope: Envelope, end: EndPayload) -> OutputStream | None:
        """Return the stream that `end` closes, or None when it is from an earlier attempt."""
        stream = self._table.get(envelope.tenant, envelope.request_id)
        if stream is not None and end.attempt < stream.attempt:
            return None
        if stream is not None and (end.attempt == stream.attempt or stream.closing is not None):
            return stream

        # No chunk of this attempt came here: an empty output, a failed
        # attempt, or chunks that this process lost.
        previous = stream
        stream = self._open(envelope, end.attempt)
        if end.error_code is None and previous is not None and previous.released_chunks:
            stream.closing = self._failure(
                INTERRUPTED, f"attempt {end.attempt} ended after attempt {previous.attempt} had released output"
            )
        elif end.error_code is None and await self._sink.count_released(envelope.tenant, envelope.request_id):
            stream.closing = self._failure(STATE_LOST, f"attempt {end.attempt} ended, but its chunks were not seen")
        elif end.error_code is None and end.usage.completion_tokens:
            # NOTE: a process that restarted after receiving a short output,
            # all of it still held back, cannot tell it from an output that
            # produced no text, so it delivers an empty output.
            log.warning("end_without_chunks", request_id=envelope.request_id, attempt=end.attempt)
        return stream

    def _open(self, envelope: Envelope, attempt: int) -> OutputStream:
        scanners = self._policy().for_request(envelope.tenant, envelope.route)
        stream = OutputStream(tenant=envelope.tenant, request_id=envelope.request_id, attempt=attempt, scanners=scanners)
        self._table.put(stream)
        return stream

    async def _check(self, stream: OutputStream) -> None:
        started = time.perf_counter()
        try:
            verdict = await _scanners_of(stream).holdback.check(stream)
        except ScannerFailed as error:
            stream.closing = self._scanner_failure(stream, error)
            return
        self.metrics.check_duration.labels(check=HOLDBACK_CHECK).observe(time.perf_counter() - started)
        if verdict.blocked:
            stream.closing = self._blocked(stream, verdict, Usage())

    async def _closing_at_end(self, stream: OutputStream, end: EndPayload) -> Closing:
        if end.error_code == CANCELLED:
            # Inference publishes request.cancelled itself; the held-back tail is dropped with the stream.
            return Closing(final={"status": CANCELLED, "reason": end.error_message or CANCELLED})
        if end.error_code is not None:
            # Inference publishes request.failed itself; the log only needs its final entry.
            message = end.error_message or f"generation failed with {end.error_code}"
            return Closing(final={"status": "failed", "error_code": end.error_code, "message": message})
        scanners = _scanners_of(stream)
        started = time.perf_counter()
        try:
            verdict = await scanners.full_chain.scan_async(stream.text)
            self.metrics.check_duration.labels(check=FULL_CHECK).observe(time.perf_counter() - started)
            if not verdict.blocked:
                await scanners.holdback.settle_at_end(stream)
        except ScannerFailed as error:
            return self._scanner_failure(stream, error)
        if verdict.blocked:
            return self._blocked(stream, verdict, end.usage)
        return self._completed(stream, verdict, end)

    async def _wait_for_missing_chunk(self, stream: OutputStream, envelope: Envelope, deliveries: int) -> Disposition:
        if deliveries < MAX_EARLY_DELIVERIES:
            stream.awaiting_missing_chunk = True
            log.info("chunk_awaited", request_id=stream.request_id, seq=stream.next_chunk_seq, deliveries=deliveries)
            return Disposition.RETRY

        stream.closing = self._failure(
            CHUNK_MISSING, f"chunk {stream.next_chunk_seq} of attempt {stream.attempt} did not arrive"
        )
        await self._write(stream, envelope)
        return Disposition.ACK

    async def _write(self, stream: OutputStream, envelope: Envelope) -> None:
        """Perform the writes the stream still needs; each step records its progress before the next."""
        closing = stream.closing
        if closing is None:
            await self._release(stream, _scanners_of(stream).holdback.releasable(stream))
            return

        if closing.release_tail:
            await self._release(stream, stream.releasable())
        if closing.failed is None:
            # Events first: ingress updates the status record from them, so it
            # is usually terminal by the time a client reads the final entry.
            await self._publish(stream, envelope, closing)
            await self._close_log(stream, closing)
        elif await self._close_log(stream, closing):
            # Only the replica that closed the log reports moderation's own
            # failure, so a late duplicate of a finished request changes nothing.
            failed = closing.failed
            log.warning("output_failed", request_id=stream.request_id, error_code=failed.error_code, error=failed.message)
            await self._publish(stream, envelope, closing)
        stream.closed = True

    async def _close_log(self, stream: OutputStream, closing: Closing) -> bool:
        """Append the final entry once; return whether it closed the log."""
        if closing.final_stored is None:
            closing.final_stored = await self._sink.close(stream.tenant, stream.request_id, closing.final)
            if not closing.final_stored:
                log.info("release_log_already_closed", request_id=stream.request_id, status=closing.final["status"])
        return closing.final_stored

    async def _publish(self, stream: OutputStream, envelope: Envelope, closing: Closing) -> None:
        for event in self._closing_events(stream, envelope, closing):
            await self._sink.publish(event)

    async def _release(self, stream: OutputStream, piece: str) -> None:
        if piece:
            await self._sink.release_chunk(stream.tenant, stream.request_id, stream.released_chunks, piece)
            stream.mark_released(piece)

    def _closing_events(self, stream: OutputStream, envelope: Envelope, closing: Closing) -> list[Envelope]:
        events: list[Envelope] = []
        if closing.moderated is not None:
            events.append(envelope.follow_up(EventType.MODERATED, closing.moderated, attempt=stream.attempt))
        if closing.delivered_finish_reason is not None:
            delivered = DeliveredPayload(
                text=stream.released_text,
                finish_reason=closing.delivered_finish_reason,
                chunks=stream.released_chunks,
                usage=closing.delivered_usage,
            )
            events.append(envelope.follow_up(EventType.DELIVERED, delivered, attempt=stream.attempt))
        if closing.failed is not None:
            events.append(envelope.follow_up(EventType.FAILED, closing.failed, attempt=stream.attempt))
        return events

    def _blocked(self, stream: OutputStream, verdict: ChainResult, usage: Usage) -> Closing:
        self._log_verdict(stream, verdict)
        final = {
            "status": "blocked",
            "stage": "output",
            "blocked_by": verdict.blocked_by,
            "reason": verdict.reason,
            "finish_reason": BLOCKED_FINISH_REASON,
            "usage": usage.model_dump(),
        }
        moderated = ModeratedPayload(
            verdict=Verdict.BLOCKED,
            scanners=list(verdict.results),
            blocked_by=verdict.blocked_by,
            reason=verdict.reason,
            refusal=_scanners_of(stream).is_refusal(verdict),
        )
        # NOTE: an output blocked while streaming reports zero usage, because
        # inference reports usage only in generation.end.
        return Closing(final=final, moderated=moderated, delivered_finish_reason=BLOCKED_FINISH_REASON, delivered_usage=usage)

    def _completed(self, stream: OutputStream, verdict: ChainResult, end: EndPayload) -> Closing:
        self._log_verdict(stream, verdict)
        final = {"status": "completed", "finish_reason": end.finish_reason, "usage": end.usage.model_dump()}
        refusal = _scanners_of(stream).is_refusal(verdict)
        # NOTE: a scanner result carries action "redact" only for data that the
        # full check found still raw in the held tail. The redactions made while
        # the output streamed (`stream.redacted_count`) are not named per scanner.
        moderated = ModeratedPayload(verdict=Verdict.PASSED, scanners=list(verdict.results), refusal=refusal)
        return Closing(
            final=final,
            release_tail=True,
            moderated=moderated,
            delivered_finish_reason=end.finish_reason,
            delivered_usage=end.usage,
        )

    def _failure(self, error_code: str, message: str) -> Closing:
        final = {"status": "failed", "error_code": error_code, "message": message}
        return Closing(final=final, failed=FailedPayload(stage=STAGE, error_code=error_code, message=message))

    def _scanner_failure(self, stream: OutputStream, error: ScannerFailed) -> Closing:
        log.error("scanner_failed", request_id=stream.request_id, scanner=error.scanner, exc_info=error)
        return self._failure(SCANNER_FAILED, f"output moderation failed: {error}")

    def _log_verdict(self, stream: OutputStream, verdict: ChainResult) -> None:
        self.metrics.record_verdict(verdict.blocked_by if verdict.blocked else None)
        log.info(
            "output_moderated",
            request_id=stream.request_id,
            tenant=stream.tenant,
            attempt=stream.attempt,
            verdict=Verdict.BLOCKED.value if verdict.blocked else Verdict.PASSED.value,
            blocked_by=verdict.blocked_by,
            flagged=list(verdict.flagged),
            refusal=_scanners_of(stream).is_refusal(verdict),
            released_chars=stream.released_chars,
            redacted_count=stream.redacted_count,
            duration_ms=round(verdict.duration_ms, 2),
        )

    def _evict_idle(self) -> None:
        for stream in self._table.evict_idle():
            if not stream.closed:
                log.warning(
                    "output_stream_evicted", request_id=stream.request_id, tenant=stream.tenant, attempt=stream.attempt
                )


def _scanners_of(stream: OutputStream) -> OutputScanners:
    if stream.scanners is None:
        # `Moderator._open` creates every stream that reaches here, with its scanners set.
        raise RuntimeError(f"stream of request {stream.request_id} has no scanners; open it with Moderator._open")
    return stream.scanners
