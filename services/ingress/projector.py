"""The `request-state` consumer: projects every event of the EVENTS stream into the request's status record.

Runs inside the ingress process on the durable pull consumer
`REQUEST_STATE_CONSUMER`, so every ingress replica shares the work. A message
is acked only after its Redis writes. A Redis failure nacks it for
redelivery, and a malformed message is terminated so it is not redelivered
forever.
"""

from __future__ import annotations

import structlog
from faststream import AckPolicy
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.bus import durable_subscriber
from shared.consuming import MalformedMessage, decode_message, invalid_payload, nack_for_retry, reject_malformed
from shared.events import Envelope
from shared.release_log import ReleaseLog
from shared.subjects import REQUEST_STATE_CONSUMER

from services.ingress.projection import final_message, state_update
from services.ingress.state_store import RequestStateStore, RequestStatus

log = structlog.get_logger(__name__)


class RequestStateProjector:
    """Applies events to status records and closes the release log of requests that end before moderation."""

    def __init__(self, store: RequestStateStore, release_log: ReleaseLog) -> None:
        self._store = store
        self._release_log = release_log

    async def project(self, envelope: Envelope) -> RequestStatus | None:
        """Apply one event; return the request's status afterwards, or None for an event that changes nothing.

        Safe to repeat: a redelivered event writes the same values again.
        Raises `pydantic.ValidationError` for a payload that does not fit its
        type and `redis.exceptions.RedisError` when Redis fails.
        """
        update = state_update(envelope)
        if update is None:
            return None
        status = await self._store.apply(envelope.tenant, envelope.request_id, update)
        final = final_message(envelope)
        if final is not None:
            # No-op when moderation closed the log first.
            await self._release_log.append_final(envelope.tenant, envelope.request_id, final)
        return status

    async def handle(self, msg: NatsMessage) -> None:
        """Project one bus message, then ack, nack or terminate it."""
        try:
            envelope = decode_message(msg.body)
        except MalformedMessage as error:
            await reject_malformed(msg, error, message_id=msg.message_id)
            return
        await self._handle_envelope(envelope, msg)

    async def _handle_envelope(self, envelope: Envelope, msg: NatsMessage) -> None:
        context = {"request_id": envelope.request_id, "tenant": envelope.tenant, "event_type": envelope.type.value}
        try:
            status = await self.project(envelope)
        except ValidationError as error:
            await reject_malformed(msg, invalid_payload(envelope, error), **context)
            return
        except RedisError as error:
            await nack_for_retry(msg, "state_write_failed", error, **context)
            return
        await msg.ack()
        log.debug("event_projected", **context, status=status.value if status else None)


def subscribe_projector(broker: NatsBroker, projector: RequestStateProjector) -> None:
    """Bind `projector` to the durable `request-state` consumer; messages flow once the broker starts."""

    async def project_event(msg: NatsMessage) -> None:
        await projector.handle(msg)

    # One message per fetch: FastStream handles the messages of one fetch
    # concurrently, and a request's events must be applied in stream order
    # so that a terminal status never shows before the verdicts that led to it.
    durable_subscriber(broker, REQUEST_STATE_CONSUMER, batch_size=1, ack_policy=AckPolicy.MANUAL)(project_event)
