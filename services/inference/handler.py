"""The consumer of `request.assigned`: expiry, the redelivery rule, then one generation attempt.

The attempt number is JetStream's delivery count. A redelivered message
(attempt > 1) is generated again only when nothing of the earlier attempt
reached a client. Once the release log contains an entry, the request ends
as failed (`interrupted`) rather than send a second, different response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

import nats.errors
import structlog
from faststream.nats.message import NatsMessage
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.inference.generation import STAGE, Generator
from shared.bus import EventPublisher
from shared.events import (
    AssignedPayload,
    Envelope,
    EventType,
    ExpiredPayload,
    UnsupportedSchemaVersion,
    decode_envelope,
)
from shared.release_log import ReleaseLog

log = structlog.get_logger(__name__)

# JetStream redelivers a message that is not acked within the consumer's
# ack_wait (30 s), so a long generation reports progress this often.
IN_PROGRESS_INTERVAL_S = 10.0
# A failed publish or Redis call usually means a server is restarting, which
# takes a few seconds, so an earlier redelivery would fail again.
RETRY_DELAY_S = 2.0

INTERRUPTED = "interrupted"


class MalformedMessage(ValueError):
    """A message that no retry can fix: not an envelope, an unreadable schema version or the wrong payload."""


def decode_assigned(body: bytes) -> tuple[Envelope, AssignedPayload]:
    """Parse a `request.assigned` message. Raises `MalformedMessage`, whose text contains no message content."""
    try:
        envelope = decode_envelope(body)
    except UnsupportedSchemaVersion as error:
        raise MalformedMessage(str(error)) from error
    except ValidationError as error:
        raise MalformedMessage(f"invalid envelope at {_error_locations(error)}") from error

    if envelope.type is not EventType.ASSIGNED:
        expected = EventType.ASSIGNED.value
        raise MalformedMessage(f"event {envelope.event_id} has type {envelope.type.value}, expected {expected}")
    try:
        return envelope, envelope.parsed_payload()
    except ValidationError as error:
        locations = _error_locations(error)
        raise MalformedMessage(f"event {envelope.event_id} has an invalid payload at {locations}") from error


def _error_locations(error: ValidationError) -> str:
    # Only field paths and error types, because the input values may contain prompt text.
    return ", ".join(f"{_location(detail['loc'])} ({detail['type']})" for detail in error.errors())


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


@contextlib.asynccontextmanager
async def _keep_in_progress(msg: NatsMessage, interval_s: float) -> AsyncIterator[None]:
    """Tell JetStream every `interval_s` seconds that `msg` is still being worked on, until the block ends."""

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await msg.in_progress()
            except (nats.errors.Error, OSError) as error:
                log.warning("in_progress_failed", error=repr(error))

    task = asyncio.create_task(report_progress())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class AssignedHandler:
    """Handles one delivery of a `request.assigned` message and acks, nacks or terminates it."""

    def __init__(self, generator: Generator, release_log: ReleaseLog, publisher: EventPublisher) -> None:
        self._generator = generator
        self._release_log = release_log
        self._publisher = publisher

    async def handle(self, msg: NatsMessage) -> None:
        """Process one message.

        A malformed message is terminated, and one whose processing hit a NATS
        or Redis failure is redelivered after `RETRY_DELAY_S`.
        """
        try:
            envelope, payload = decode_assigned(msg.body)
        except MalformedMessage as error:
            log.error("message_rejected", stage=STAGE, error=str(error))
            await msg.reject()
            return

        attempt = msg.raw_message.metadata.num_delivered
        context = {"request_id": envelope.request_id, "tenant": envelope.tenant, "attempt": attempt}
        with structlog.contextvars.bound_contextvars(**context):
            try:
                async with _keep_in_progress(msg, IN_PROGRESS_INTERVAL_S):
                    await self._process(envelope, payload, attempt)
            except (nats.errors.Error, OSError, RedisError) as error:
                log.warning("attempt_aborted", error=repr(error), retry_delay_s=RETRY_DELAY_S)
                await msg.nack(delay=RETRY_DELAY_S)
                return
        await msg.ack()

    async def _process(self, envelope: Envelope, payload: AssignedPayload, attempt: int) -> None:
        deadline = envelope.deadline
        if deadline is not None and envelope.is_expired():
            await self._publish_expired(envelope, deadline)
            return
        if attempt > 1 and await self._release_log.count_chunks(envelope.tenant, envelope.request_id) > 0:
            message = "an earlier attempt was interrupted after part of its output reached the client"
            await self._generator.fail(envelope, attempt, INTERRUPTED, message)
            return
        await self._generator.run(envelope, payload, attempt)

    async def _publish_expired(self, envelope: Envelope, deadline: datetime) -> None:
        expired = ExpiredPayload(stage=STAGE, deadline=deadline)
        await self._publisher.publish(envelope.follow_up(EventType.EXPIRED, expired))
        log.info("request_expired", deadline=deadline.isoformat())
