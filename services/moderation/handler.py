"""The consumer of the CHUNKS stream: decoding, then ack, nack or terminate around the moderator."""

from __future__ import annotations

import structlog
from faststream.nats.message import NatsMessage
from pydantic import ValidationError

from services.moderation.moderator import STAGE, Disposition, Moderator
from services.moderation.sink import DeliveryFailed
from shared.events import ChunkPayload, EndPayload, Envelope, EventType, UnsupportedSchemaVersion, decode_envelope

log = structlog.get_logger(__name__)

# A failed write usually means Redis or NATS is restarting, which takes a
# few seconds. nats-py waits 2 s between reconnect attempts, so a redelivery
# sooner than that would fail again.
RETRY_DELAY_S = 2.0

_CHUNK_TYPES = (EventType.CHUNK, EventType.END)


class MalformedMessage(ValueError):
    """A message that no retry can fix: not an envelope, an unreadable schema version or the wrong payload."""


def decode_chunk_message(body: bytes) -> tuple[Envelope, ChunkPayload | EndPayload]:
    """Parse a `generation.chunk` or `generation.end` message. Raises `MalformedMessage` whose text contains no output text."""
    try:
        envelope = decode_envelope(body)
    except UnsupportedSchemaVersion as error:
        raise MalformedMessage(str(error)) from error
    except ValidationError as error:
        raise MalformedMessage(f"invalid envelope at {_error_locations(error)}") from error

    if envelope.type not in _CHUNK_TYPES:
        expected = " or ".join(event_type.value for event_type in _CHUNK_TYPES)
        raise MalformedMessage(f"event {envelope.event_id} has type {envelope.type.value}; expected {expected}")
    try:
        return envelope, envelope.parsed_payload()
    except ValidationError as error:
        raise MalformedMessage(f"event {envelope.event_id} has an invalid payload at {_error_locations(error)}") from error


def _error_locations(error: ValidationError) -> str:
    # Only field paths and error types: the input values may contain output text.
    return ", ".join(f"{_location(detail['loc'])} ({detail['type']})" for detail in error.errors())


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


class ChunkHandler:
    """Handles one delivery of a CHUNKS message and acks, nacks or terminates it."""

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator

    async def handle(self, msg: NatsMessage) -> None:
        """Process one message: a malformed one is terminated, a failed write is redelivered after `RETRY_DELAY_S`."""
        try:
            envelope, payload = decode_chunk_message(msg.body)
        except MalformedMessage as error:
            log.error("message_rejected", stage=STAGE, error=str(error))
            await msg.reject()
            return

        deliveries = msg.raw_message.metadata.num_delivered
        with structlog.contextvars.bound_contextvars(request_id=envelope.request_id, tenant=envelope.tenant):
            try:
                disposition = await self._dispatch(envelope, payload, deliveries)
            except DeliveryFailed as error:
                log.warning("write_failed", error=str(error), retry_delay_s=RETRY_DELAY_S)
                await msg.nack(delay=RETRY_DELAY_S)
                return

        if disposition is Disposition.RETRY:
            await msg.nack(delay=RETRY_DELAY_S)
        else:
            await msg.ack()

    async def _dispatch(self, envelope: Envelope, payload: ChunkPayload | EndPayload, deliveries: int) -> Disposition:
        if isinstance(payload, ChunkPayload):
            return await self._moderator.handle_chunk(envelope, payload, deliveries)
        return await self._moderator.handle_end(envelope, payload, deliveries)
