"""Cancelling a request from the ingress: `DELETE /v1/requests/{id}` and OpenAI streaming clients that disconnect.

The canceller first claims the request (shared/cancellation.py). A
successful claim means the request has not reached a model, so the
canceller ends it here. It takes the request out of its pool's queue count
and publishes `request.cancelled`. The projector turns that event into the
status `cancelled` and the stream's final message.

When inference claimed the request first, the canceller sets the cancel
mark and publishes the notice. Inference then publishes `request.cancelled`
once generation stopped.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient

from services.ingress.state_store import TERMINAL_STATUSES, RecordField, RequestStateStore, RequestStatus
from shared.bus import EventPublisher
from shared.cancellation import CancelMarks, CancelNotice, cancel_subject
from shared.events import CancelledPayload, EventType, new_envelope
from shared.queue_positions import QueuePositions
from shared.trace_context import TRACEPARENT

log = structlog.get_logger(__name__)

# The notice is flushed to nats-server before `cancel` returns, waiting at most this long.
NOTICE_FLUSH_TIMEOUT_S = 1.0
# The stage that `request.cancelled` names when the ingress ended the request.
STAGE = "ingress"


class RequestCanceller:
    """The ingress side of cancellation: stops a request that has not ended yet."""

    def __init__(
        self,
        state_store: RequestStateStore,
        marks: CancelMarks,
        publisher: EventPublisher,
        positions: QueuePositions,
        connection: Callable[[], NatsClient],
    ) -> None:
        self._state_store = state_store
        self._marks = marks
        self._publisher = publisher
        self._positions = positions
        self._connection = connection

    async def cancel(self, tenant: str, request_id: str, reason: str) -> bool:
        """Cancel the request. Return False when it is unknown to this tenant or has already ended.

        Raises `redis.exceptions.RedisError` and `nats.errors.Error` when Redis or NATS fails.
        """
        status = await self._state_store.status(tenant, request_id)
        if status is None or status in TERMINAL_STATUSES:
            return False
        await self.cancel_unchecked(tenant, request_id, reason, status)
        return True

    async def cancel_unchecked(self, tenant: str, request_id: str, reason: str, status: RequestStatus) -> None:
        """Cancel a request the caller found in the non-terminal `status`."""
        if await self._marks.claim_for_cancel(tenant, request_id, reason):
            await self._end_before_generation(tenant, request_id, reason)
            log.info("request_cancelled", request_id=request_id, tenant=tenant, reason=reason, status=status.value)
            return
        await self._marks.mark(tenant, request_id, reason)
        connection = self._connection()
        await connection.publish(cancel_subject(tenant, request_id), CancelNotice(tenant, request_id, reason).encode())
        await connection.flush(timeout=NOTICE_FLUSH_TIMEOUT_S)
        log.info("request_cancel_requested", request_id=request_id, tenant=tenant, reason=reason, status=status.value)

    async def _end_before_generation(self, tenant: str, request_id: str, reason: str) -> None:
        fields = await self._state_store.read(tenant, request_id) or {}
        backend = fields.get(RecordField.BACKEND.value)
        if backend:
            await self._positions.mark_admitted(backend, tenant, request_id)
        payload = CancelledPayload(stage=STAGE, reason=reason)
        traceparent = fields.get(RecordField.TRACEPARENT.value)
        trace = {TRACEPARENT: traceparent} if traceparent else None
        await self._publisher.publish(
            new_envelope(EventType.CANCELLED, request_id=request_id, tenant=tenant, payload=payload, trace=trace)
        )
