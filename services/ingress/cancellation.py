"""Cancelling a request from the ingress: `DELETE /v1/requests/{id}` and OpenAI streaming clients that disconnect.

The canceller sets the request's cancel mark in Redis and publishes the
cancel notice on core NATS (shared/cancellation.py). The request then ends
with `request.cancelled`, which the inference service publishes and the
projector records as the status `cancelled`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient

from shared.cancellation import CancelMarks, CancelNotice, cancel_subject

from services.ingress.state_store import TERMINAL_STATUSES, RequestStateStore, RequestStatus

log = structlog.get_logger(__name__)

# The notice is flushed to nats-server before `cancel` returns, waiting at most this long.
NOTICE_FLUSH_TIMEOUT_S = 1.0


class RequestCanceller:
    """The ingress side of cancellation: stops a request that has not ended yet."""

    def __init__(self, state_store: RequestStateStore, marks: CancelMarks, connection: Callable[[], NatsClient]) -> None:
        self._state_store = state_store
        self._marks = marks
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
        await self._marks.mark(tenant, request_id, reason)
        connection = self._connection()
        await connection.publish(cancel_subject(tenant, request_id), CancelNotice(tenant, request_id, reason).encode())
        await connection.flush(timeout=NOTICE_FLUSH_TIMEOUT_S)
        log.info("request_cancel_requested", request_id=request_id, tenant=tenant, reason=reason, status=status.value)
