"""The consumer of `request.assigned`: expiry, cancellation, the redelivery rule, then one generation attempt.

A request that the ingress already ended as cancelled is dropped, and one
whose cancel mark is set ends as cancelled without reaching a model. One
cancelled while it generates stops at once (see shared/cancellation.py and
`services/inference/cancellation.py`).

The attempt number is JetStream's delivery count. A redelivered message
(attempt > 1) is generated again only when nothing of the earlier attempt
reached a client. Once the release log contains an entry, the request ends
as failed (`interrupted`) rather than send a second, different response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import structlog
from nats.aio.msg import Msg
from redis.exceptions import RedisError

from services.inference.cancellation import RunningRequests
from services.inference.generation import STAGE, Generator
from shared.bus import EventPublisher
from shared.cancellation import CancelMarks
from shared.consuming import BUS_ERRORS, EnvelopeHandler, publish_if_expired
from shared.events import AssignedPayload, Envelope, EventType
from shared.release_log import ReleaseLog

log = structlog.get_logger(__name__)

# JetStream redelivers a message that is not acked within the consumer's
# ack_wait (30 s), so a long generation reports progress this often.
IN_PROGRESS_INTERVAL_S = 10.0

INTERRUPTED = "interrupted"


@contextlib.asynccontextmanager
async def _keep_in_progress(msg: Msg, interval_s: float) -> AsyncIterator[None]:
    """Tell JetStream every `interval_s` seconds that `msg` is still being worked on, until the block ends."""

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await msg.in_progress()
            except BUS_ERRORS as error:
                log.warning("in_progress_failed", error=repr(error))

    task = asyncio.create_task(report_progress())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _attempt(msg: Msg) -> int:
    # JetStream's delivery count: 1 for the first delivery.
    return msg.metadata.num_delivered


class AssignedHandler(EnvelopeHandler):
    """Handles one delivery of a `request.assigned` message and acks, nacks or terminates it.

    A message whose processing hit a NATS or Redis failure is redelivered
    after `RETRY_DELAY_S`.
    """

    stage: ClassVar[str] = STAGE
    event_types: ClassVar[tuple[EventType, ...]] = (EventType.ASSIGNED,)
    retry_errors: ClassVar[tuple[type[Exception], ...]] = (*BUS_ERRORS, RedisError)
    retry_event: ClassVar[str] = "attempt_aborted"

    def __init__(
        self,
        generator: Generator,
        release_log: ReleaseLog,
        publisher: EventPublisher,
        running: RunningRequests,
        cancel_marks: CancelMarks,
    ) -> None:
        self._generator = generator
        self._release_log = release_log
        self._publisher = publisher
        self._running = running
        self._cancel_marks = cancel_marks

    def log_context(self, msg: Msg) -> dict[str, Any]:
        return {"attempt": _attempt(msg)}

    async def process(self, msg: Msg, envelope: Envelope, payload: AssignedPayload) -> None:
        async with _keep_in_progress(msg, IN_PROGRESS_INTERVAL_S):
            await self._generate_once(envelope, payload, _attempt(msg))

    async def _generate_once(self, envelope: Envelope, payload: AssignedPayload, attempt: int) -> None:
        if await publish_if_expired(self._publisher, envelope, STAGE):
            return
        # Registered before the claim, so a cancel notice sent right after the claim still fires the signal.
        with self._running.register(envelope.tenant, envelope.request_id) as cancel:
            ended_reason = await self._cancel_marks.claim_for_generation(envelope.tenant, envelope.request_id)
            if ended_reason is not None:
                # The ingress ended the request before it reached a model, and published request.cancelled.
                log.info("cancelled_request_dropped", reason=ended_reason)
                return
            reason = await self._cancel_marks.reason(envelope.tenant, envelope.request_id)
            if reason is not None:
                await self._generator.cancelled(envelope, attempt, reason, self._generator.progress(envelope, payload))
                return
            if attempt > 1 and await self._release_log.count_chunks(envelope.tenant, envelope.request_id) > 0:
                message = "an earlier attempt was interrupted after part of its output reached the client"
                await self._generator.fail(envelope, attempt, INTERRUPTED, message, self._generator.progress(envelope, payload))
                return
            await self._generator.run(envelope, payload, attempt, cancel)
