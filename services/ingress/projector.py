"""The `request-state` consumer: projects every event of the EVENTS stream into the request's status record.

Runs inside the ingress process on the durable pull consumer
`REQUEST_STATE_CONSUMER`, so every ingress replica shares the work. Each
fetched batch is written to Redis in one pipeline, in stream order, and its
messages are acked only after the pipeline ran. A Redis failure nacks the
batch for redelivery, and a malformed message is terminated so it is not
redelivered forever.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis
import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.consuming import (
    BUS_ERRORS,
    MalformedMessage,
    decode_message,
    invalid_payload,
    nack_for_retry,
    reject_malformed,
)
from shared.events import Envelope
from shared.pulling import BatchPuller
from shared.queue_positions import QueuePositions
from shared.release_log import ReleaseLog
from shared.subjects import REQUEST_STATE_CONSUMER

from services.ingress.projection import final_message, state_update
from services.ingress.state_store import RequestStateStore, StateUpdate

log = structlog.get_logger(__name__)

# The largest batch: one round trip to fetch it and one to write it to Redis.
# A fetch returns the events already there, so a batch never waits to fill.
FETCH_BATCH_SIZE = 256


@dataclass(frozen=True)
class _Projection:
    """The writes of one well-formed event: its status update, and the final message of a request ending early.

    A request that ends before moderation (blocked prompt, failure, expiry) gets its final message here.
    """

    msg: Msg
    envelope: Envelope
    update: StateUpdate
    final: dict | None


class RequestStateProjector:
    """Applies events to status records and queue positions, and closes the release log of requests that end before moderation."""

    def __init__(
        self, client: redis.Redis, store: RequestStateStore, release_log: ReleaseLog, positions: QueuePositions
    ) -> None:
        self._redis = client
        self._store = store
        self._release_log = release_log
        self._positions = positions

    async def handle_batch(self, batch: list[Msg]) -> None:
        """Project a batch in stream order in one Redis pipeline, then ack, nack or terminate each message.

        Safe to repeat: a redelivered event writes the same values again. An
        event type that changes nothing is acked at once.
        """
        projections = [projection for msg in batch if (projection := await self._prepare(msg)) is not None]
        if not projections:
            return
        try:
            await self._write(projections)
        except RedisError as error:
            for projection in projections:
                await nack_for_retry(projection.msg, "state_write_failed", error, **_context(projection.envelope))
            return
        for projection in projections:
            await _ack(projection)

    async def _prepare(self, msg: Msg) -> _Projection | None:
        """Decode one message; settle it and return None when it is malformed or changes nothing."""
        try:
            envelope = decode_message(msg.data)
        except MalformedMessage as error:
            await reject_malformed(msg, error, sequence=msg.metadata.sequence.stream)
            return None
        try:
            update = state_update(envelope)
            final = final_message(envelope) if update is not None else None
        except ValidationError as error:
            await reject_malformed(msg, invalid_payload(envelope, error), **_context(envelope))
            return None
        if update is None:
            await msg.ack()
            return None
        return _Projection(msg, envelope, update, final)

    async def _write(self, projections: list[_Projection]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for projection in projections:
                envelope = projection.envelope
                await self._store.queue_apply(pipe, envelope.tenant, envelope.request_id, projection.update)
                self._positions.queue_event(pipe, envelope, projection.msg.metadata.sequence.stream)
                if projection.final is not None:
                    # A no-op when moderation closed the log first.
                    await self._release_log.queue_append_final(
                        pipe, envelope.tenant, envelope.request_id, projection.final
                    )
            await pipe.execute()

    def puller(self) -> BatchPuller:
        """Return the pull loop that feeds `handle_batch` from the `request-state` consumer."""
        return BatchPuller(REQUEST_STATE_CONSUMER, self.handle_batch, batch_size=FETCH_BATCH_SIZE)


async def _ack(projection: _Projection) -> None:
    try:
        await projection.msg.ack()
    except BUS_ERRORS as error:
        # The write is done and safe to repeat, so JetStream redelivering the event costs nothing.
        log.warning("ack_failed", error=repr(error), **_context(projection.envelope))
        return
    log.debug("event_projected", **_context(projection.envelope))


def _context(envelope: Envelope) -> dict[str, str]:
    return {"request_id": envelope.request_id, "tenant": envelope.tenant, "event_type": envelope.type.value}
