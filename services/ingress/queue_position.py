"""The `queue_position` of `GET /v1/requests/{id}`, from the status record and the pool's queue set."""

from __future__ import annotations

from shared.queue_positions import QueuePositions

from services.ingress.state_store import RecordField, RequestStatus


async def read_queue_position(
    positions: QueuePositions, tenant: str, request_id: str, fields: dict[str, str]
) -> int | None:
    """Return how many of the tenant's requests wait ahead of this one in its endpoint pool's queue.

    Returns 0 once the inference service took the request (it is being
    started or generating), and None before `request.assigned` was projected
    and after the request ended. Raises `redis.exceptions.RedisError`.
    """
    status = fields[RecordField.STATUS.value]
    if status == RequestStatus.GENERATING.value:
        return 0
    backend = fields.get(RecordField.BACKEND.value)
    if status != RequestStatus.QUEUED.value or not backend:
        return None
    ahead = await positions.waiting_ahead(backend, tenant, request_id)
    # Assigned but no longer waiting: the inference service admitted it.
    return 0 if ahead is None else ahead
