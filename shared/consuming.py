"""Handling one JetStream delivery of an envelope: decode, reject, expire, retry, then ack.

Every bus consumer settles each message exactly one way. A message that no
retry can fix (not an envelope, an unreadable schema version, the wrong type
or payload) is terminated with `msg.term()` and logged as `message_rejected`.
A transient failure (NATS or Redis restarting) is nacked with a delay, so
JetStream redelivers it. Everything else is acked once its work is done.
`EnvelopeHandler` runs these steps for a consumer of one or a few event types.
The functions below it serve consumers that settle messages their own way.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import nats.errors
import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared.bus import EventPublisher
from shared.events import Envelope, EventType, ExpiredPayload, UnsupportedSchemaVersion, decode_envelope

log = structlog.get_logger(__name__)

# A failed publish or Redis call usually means the server is restarting or
# electing a leader, which takes a few seconds. nats-py waits 2 s between
# reconnect attempts, so a redelivery sooner than that would fail again.
RETRY_DELAY_S = 2.0

# Errors of the NATS client and the network, after which a redelivery may succeed.
BUS_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, OSError)


class MalformedMessage(ValueError):
    """A message that no retry can fix: not an envelope, an unreadable schema version or the wrong payload.

    The error text names field paths and error types only, never field
    values, because those may contain prompt or output text.
    """


def decode_message(body: bytes) -> Envelope:
    """Parse a bus message of any event type. Raises `MalformedMessage`."""
    try:
        return decode_envelope(body)
    except UnsupportedSchemaVersion as error:
        raise MalformedMessage(str(error)) from error
    except ValidationError as error:
        raise MalformedMessage(f"invalid envelope at {describe_validation_error(error)}") from error


def decode_event(body: bytes, event_types: Collection[EventType]) -> tuple[Envelope, Any]:
    """Parse a bus message of one of `event_types` and its typed payload. Raises `MalformedMessage`."""
    envelope = decode_message(body)
    if envelope.type not in event_types:
        expected = " or ".join(event_type.value for event_type in event_types)
        raise MalformedMessage(f"event {envelope.event_id} has type {envelope.type.value}, expected {expected}")
    try:
        return envelope, envelope.parsed_payload()
    except ValidationError as error:
        raise invalid_payload(envelope, error) from error


def invalid_payload(envelope: Envelope, error: ValidationError) -> MalformedMessage:
    """Return the `MalformedMessage` for a payload that does not fit the envelope's event type."""
    return MalformedMessage(f"event {envelope.event_id} has an invalid payload at {describe_validation_error(error)}")


def describe_validation_error(error: ValidationError) -> str:
    """Return each failing field path with its error type, e.g. `request.messages.0.role (literal_error)`.

    Input values are left out because they may contain prompt or output text.
    """
    return ", ".join(f"{_field_path(detail['loc'])} ({detail['type']})" for detail in error.errors())


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def log_rejected(error: MalformedMessage, **fields: Any) -> None:
    """Log `message_rejected` at error level, with `fields` identifying the message."""
    log.error("message_rejected", error=str(error), **fields)


async def reject_malformed(msg: Msg, error: MalformedMessage, **fields: Any) -> None:
    """Log `message_rejected` and terminate `msg`, so JetStream never redelivers it."""
    log_rejected(error, **fields)
    await msg.term()


async def nack_for_retry(msg: Msg, event: str, error: Exception, **fields: Any) -> None:
    """Log `event` at warning level and nack `msg`, so JetStream redelivers it after `RETRY_DELAY_S`."""
    log.warning(event, error=repr(error), retry_delay_s=RETRY_DELAY_S, **fields)
    await msg.nak(delay=RETRY_DELAY_S)


def bind_request_context(envelope: Envelope, **fields: Any) -> AbstractContextManager[Any]:
    """Bind `request_id`, `tenant` and `fields` to every log line written inside the block."""
    return structlog.contextvars.bound_contextvars(request_id=envelope.request_id, tenant=envelope.tenant, **fields)


def expired_event(envelope: Envelope, stage: str) -> Envelope | None:
    """Build the `request.expired` event of an envelope past its deadline and log `request_expired`.

    Returns None when the envelope has no deadline or its deadline is still ahead.
    """
    deadline = envelope.deadline
    if deadline is None or not envelope.is_expired():
        return None
    log.info("request_expired", request_id=envelope.request_id, tenant=envelope.tenant, deadline=deadline.isoformat())
    return envelope.follow_up(EventType.EXPIRED, ExpiredPayload(stage=stage, deadline=deadline))


async def publish_if_expired(publisher: EventPublisher, envelope: Envelope, stage: str) -> bool:
    """Publish `request.expired` for an envelope past its deadline and return True, or return False when it is in time.

    Raises what `EventPublisher.publish` raises when the publish fails.
    """
    expired = expired_event(envelope, stage)
    if expired is None:
        return False
    await publisher.publish(expired)
    return True


class EnvelopeHandler(abc.ABC):
    """Handles one delivery of a message of `event_types` and acks, nacks or terminates it.

    A malformed message is terminated. When `process` raises one of
    `retry_errors`, the message is nacked and redelivered after
    `RETRY_DELAY_S`. Otherwise it is acked after `process` returns.
    Subclasses set the class attributes and implement `process`.
    """

    # The pipeline stage, as `message_rejected` log lines name it.
    stage: ClassVar[str]
    event_types: ClassVar[tuple[EventType, ...]]
    retry_errors: ClassVar[tuple[type[Exception], ...]] = BUS_ERRORS
    # The warning logged when `process` raised one of `retry_errors`.
    retry_event: ClassVar[str] = "publish_failed"

    async def handle(self, msg: Msg) -> None:
        """Decode, process and settle one delivery. The consumer must use manual acks."""
        try:
            envelope, payload = decode_event(msg.data, self.event_types)
        except MalformedMessage as error:
            await reject_malformed(msg, error, stage=self.stage)
            return

        with bind_request_context(envelope, **self.log_context(msg)):
            try:
                await self.process(msg, envelope, payload)
            except self.retry_errors as error:
                await nack_for_retry(msg, self.retry_event, error)
                return
        await msg.ack()

    def log_context(self, msg: Msg) -> dict[str, Any]:
        """Return log fields to bind, besides request id and tenant, while the message is processed."""
        return {}

    @abc.abstractmethod
    async def process(self, msg: Msg, envelope: Envelope, payload: Any) -> None:
        """Do the stage's work for one well-formed message. Raise one of `retry_errors` to have it redelivered."""
