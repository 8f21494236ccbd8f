"""The consumer of the CHUNKS stream: decoding, then ack, nack or terminate around the moderator."""

from __future__ import annotations

from nats.aio.msg import Msg

from services.moderation.moderator import STAGE, Disposition, Moderator
from services.moderation.sink import DeliveryFailed
from shared.consuming import (
    RETRY_DELAY_S,
    MalformedMessage,
    bind_request_context,
    decode_event,
    nack_for_retry,
    reject_malformed,
)
from shared.events import ChunkPayload, EndPayload, Envelope, EventType

CHUNK_EVENT_TYPES = (EventType.CHUNK, EventType.END)


class ChunkHandler:
    """Handles one delivery of a CHUNKS message and acks, nacks or terminates it.

    Unlike `EnvelopeHandler`, it also nacks a well-formed message that the
    moderator wants redelivered because it came before an earlier chunk.
    """

    def __init__(self, moderator: Moderator) -> None:
        self._moderator = moderator

    async def handle(self, msg: Msg) -> None:
        """Process one message: a malformed one is terminated, a failed write is redelivered after `RETRY_DELAY_S`."""
        try:
            envelope, payload = decode_event(msg.data, CHUNK_EVENT_TYPES)
        except MalformedMessage as error:
            await reject_malformed(msg, error, stage=STAGE)
            return

        deliveries = msg.metadata.num_delivered
        with bind_request_context(envelope):
            try:
                disposition = await self._dispatch(envelope, payload, deliveries)
            except DeliveryFailed as error:
                await nack_for_retry(msg, "write_failed", error)
                return

        if disposition is Disposition.RETRY:
            await msg.nak(delay=RETRY_DELAY_S)
        else:
            await msg.ack()

    async def _dispatch(self, envelope: Envelope, payload: ChunkPayload | EndPayload, deliveries: int) -> Disposition:
        if isinstance(payload, ChunkPayload):
            return await self._moderator.handle_chunk(envelope, payload, deliveries)
        return await self._moderator.handle_end(envelope, payload, deliveries)
