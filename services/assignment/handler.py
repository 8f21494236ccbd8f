"""The consumer of `request.screened`: publishes `request.assigned`, or `request.expired` after the deadline."""

from __future__ import annotations

from datetime import datetime

import nats.errors
import structlog
from faststream.nats.message import NatsMessage
from pydantic import ValidationError

from services.assignment.assigner import Assigner
from shared.bus import EventPublisher
from shared.events import (
    AssignedPayload,
    Envelope,
    EventType,
    ExpiredPayload,
    ScreenedPayload,
    UnsupportedSchemaVersion,
    Verdict,
    decode_envelope,
)

log = structlog.get_logger(__name__)

STAGE = "assignment"

# A failed publish usually means NATS is restarting or electing a leader,
# which takes a few seconds, so an earlier redelivery would fail again.
RETRY_DELAY_S = 2.0


class MalformedMessage(ValueError):
    """A message that no retry can fix: not an envelope, an unreadable schema version or the wrong payload."""


def decode_screened(body: bytes) -> tuple[Envelope, ScreenedPayload]:
    """Parse a `request.screened` message. Raises `MalformedMessage`, whose text contains no message content."""
    try:
        envelope = decode_envelope(body)
    except UnsupportedSchemaVersion as error:
        raise MalformedMessage(str(error)) from error
    except ValidationError as error:
        raise MalformedMessage(f"invalid envelope at {_error_locations(error)}") from error

    if envelope.type is not EventType.SCREENED:
        expected = EventType.SCREENED.value
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


class ScreenedHandler:
    """Handles one delivery of a `request.screened` message and acks, nacks or terminates it."""

    def __init__(self, assigner: Assigner, publisher: EventPublisher) -> None:
        self._assigner = assigner
        self._publisher = publisher

    async def handle(self, msg: NatsMessage) -> None:
        """Process one message.

        A malformed message is terminated, and one whose publish failed is
        redelivered after `RETRY_DELAY_S`.
        """
        try:
            envelope, payload = decode_screened(msg.body)
        except MalformedMessage as error:
            log.error("message_rejected", stage=STAGE, error=str(error))
            await msg.reject()
            return

        with structlog.contextvars.bound_contextvars(request_id=envelope.request_id, tenant=envelope.tenant):
            try:
                await self._process(envelope, payload)
            except (nats.errors.Error, OSError) as error:
                log.warning("publish_failed", error=repr(error), retry_delay_s=RETRY_DELAY_S)
                await msg.nack(delay=RETRY_DELAY_S)
                return
        await msg.ack()

    async def _process(self, envelope: Envelope, payload: ScreenedPayload) -> None:
        if payload.verdict is Verdict.BLOCKED:
            log.debug("request_skipped", reason="blocked")
            return
        deadline = envelope.deadline
        if deadline is not None and envelope.is_expired():
            await self._publish_expired(envelope, deadline)
            return
        await self._publish_assigned(envelope, payload)

    async def _publish_expired(self, envelope: Envelope, deadline: datetime) -> None:
        expired = ExpiredPayload(stage=STAGE, deadline=deadline)
        await self._publisher.publish(envelope.follow_up(EventType.EXPIRED, expired))
        log.info("request_expired", deadline=deadline.isoformat())

    async def _publish_assigned(self, envelope: Envelope, payload: ScreenedPayload) -> None:
        assignment = self._assigner.assign(payload.request, envelope.request_id)
        assigned = AssignedPayload(
            request=payload.request,
            experiment_key=assignment.experiment_key,
            variant=assignment.variant,
            hash_value=assignment.hash_value,
            hash_attribute=assignment.hash_attribute,
        )
        await self._publisher.publish(envelope.follow_up(EventType.ASSIGNED, assigned))
        log.info(
            "request_assigned",
            experiment_key=assignment.experiment_key,
            variant=assignment.variant.key,
            hash_attribute=assignment.hash_attribute,
        )
