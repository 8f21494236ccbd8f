"""The consumer of `request.accepted`: decoding, screening, publishing, then ack, nack or terminate."""

from __future__ import annotations

import nats.errors
import structlog
from faststream.nats.message import NatsMessage
from pydantic import ValidationError

from services.safety.screening import STAGE, Screener
from shared.bus import EventPublisher
from shared.events import AcceptedPayload, Envelope, EventType, UnsupportedSchemaVersion, decode_envelope

log = structlog.get_logger(__name__)

# A failed publish usually means NATS is restarting or electing a leader,
# which takes a few seconds. nats-py waits 2 s between reconnect attempts, so
# a redelivery sooner than that would fail again.
RETRY_DELAY_S = 2.0


class MalformedMessage(ValueError):
    """A message that no retry can fix: not an envelope, an unreadable schema version or the wrong payload."""


def decode_accepted(body: bytes) -> tuple[Envelope, AcceptedPayload]:
    """Parse a `request.accepted` message. Raises `MalformedMessage` whose text contains no prompt text."""
    try:
        envelope = decode_envelope(body)
    except UnsupportedSchemaVersion as error:
        raise MalformedMessage(str(error)) from error
    except ValidationError as error:
        raise MalformedMessage(f"invalid envelope at {_error_locations(error)}") from error

    if envelope.type is not EventType.ACCEPTED:
        raise MalformedMessage(f"event {envelope.event_id} has type {envelope.type.value}; expected {EventType.ACCEPTED.value}")
    try:
        return envelope, envelope.parsed_payload()
    except ValidationError as error:
        raise MalformedMessage(f"event {envelope.event_id} has an invalid payload at {_error_locations(error)}") from error


def _error_locations(error: ValidationError) -> str:
    # Only field paths and error types: the input values may contain prompt text.
    return ", ".join(f"{_location(detail['loc'])} ({detail['type']})" for detail in error.errors())


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


class AcceptedHandler:
    """Handles one delivery of a `request.accepted` message and acks, nacks or terminates it."""

    def __init__(self, screener: Screener, publisher: EventPublisher) -> None:
        self._screener = screener
        self._publisher = publisher

    async def handle(self, msg: NatsMessage) -> None:
        """Screen and publish; ack only after JetStream acknowledged the publish.

        A malformed message is terminated; a failed publish is redelivered after `RETRY_DELAY_S`.
        """
        try:
            envelope, accepted = decode_accepted(msg.body)
        except MalformedMessage as error:
            log.error("message_rejected", stage=STAGE, error=str(error))
            await msg.reject()
            return

        with structlog.contextvars.bound_contextvars(request_id=envelope.request_id, tenant=envelope.tenant):
            try:
                await self._publisher.publish(await self._screener.screen(envelope, accepted))
            except (nats.errors.Error, OSError) as error:
                log.warning("publish_failed", error=repr(error), retry_delay_s=RETRY_DELAY_S)
                await msg.nack(delay=RETRY_DELAY_S)
                return
        await msg.ack()
