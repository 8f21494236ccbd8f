"""Queue positions: which of a tenant's requests still wait in an endpoint pool's queue, in arrival order.

One Redis sorted set per pool and tenant, `sluice:queue:<backend>:<tenant>`,
mirrors that tenant's JetStream sub-queue in the pool. The ingress projector
adds a request when it projects `request.assigned`, scored by the message's
stream sequence, so members sort in arrival order. When the inference
service admits the request, it rescores the member to minus the admission
time in milliseconds: a tombstone. The projector adds with NX, so when it
projects `request.assigned` after the admission (the two consume the same
message independently), the tombstone keeps the request out of the queue.
Waiting members have scores above 0 and tombstones at or below 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as redis
from pydantic import ValidationError

from shared.events import AssignedPayload, Envelope, EventType, FirstTokenPayload

# A tombstone only has to outlive the race between the projector and the
# admission of the same message, which lasts milliseconds to seconds. An
# hour leaves room for a projector that lags behind after an outage.
TOMBSTONE_MAX_AGE_S = 3600.0


def queue_key(backend: str, tenant: str) -> str:
    return f"sluice:queue:{backend}:{tenant}"


class QueuePositions:
    """Reads and updates the per-pool, per-tenant queue sets. Every write renews the set's TTL of `ttl_s` seconds.

    `clock` returns wall-clock seconds. It only dates tombstones, so clocks
    that differ between hosts by less than `TOMBSTONE_MAX_AGE_S` do no harm.
    Raises `redis.exceptions.RedisError` when Redis fails.
    """

    def __init__(self, client: redis.Redis, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._clock = clock

    def queue_event(self, pipe: redis.client.Pipeline, envelope: Envelope, stream_sequence: int) -> None:
        """Queue on `pipe` what an event changes: `request.assigned` adds the request, `generation.first_token` admits it.

        `stream_sequence` is the event's sequence in the EVENTS stream. The
        first token admits the request too, so a request whose admission
        failed to reach Redis still leaves the queue. An event whose payload
        does not fit its type changes nothing here.
        """
        if envelope.type not in (EventType.ASSIGNED, EventType.FIRST_TOKEN):
            return
        try:
            payload = envelope.parsed_payload()
        except ValidationError:
            return
        if isinstance(payload, AssignedPayload):
            key = queue_key(payload.variant.backend, envelope.tenant)
            pipe.zadd(key, {envelope.request_id: stream_sequence}, nx=True)
            pipe.expire(key, self._ttl_s)
        elif isinstance(payload, FirstTokenPayload):
            self._queue_admitted(pipe, payload.backend, envelope.tenant, envelope.request_id)

    async def mark_admitted(self, backend: str, tenant: str, request_id: str) -> None:
        """Take the request out of its pool's queue, for good, and trim tombstones older than `TOMBSTONE_MAX_AGE_S`."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self._queue_admitted(pipe, backend, tenant, request_id)
            await pipe.execute()

    def _queue_admitted(self, pipe: redis.client.Pipeline, backend: str, tenant: str, request_id: str) -> None:
        key = queue_key(backend, tenant)
        now_ms = self._clock() * 1000.0
        pipe.zadd(key, {request_id: -now_ms})
        # Tombstones of admissions before the cutoff have scores from -cutoff to 0.
        cutoff_ms = now_ms - TOMBSTONE_MAX_AGE_S * 1000.0
        pipe.zremrangebyscore(key, -cutoff_ms, 0)
        pipe.expire(key, self._ttl_s)

    async def waiting_ahead(self, backend: str, tenant: str, request_id: str) -> int | None:
        """Return how many of the tenant's requests wait ahead of this one in the pool's queue.

        Returns None when the request does not wait there: it was admitted,
        or its `request.assigned` has not been projected yet.
        """
        key = queue_key(backend, tenant)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zscore(key, request_id)
            pipe.zrank(key, request_id)
            pipe.zcount(key, "-inf", 0)
            score, rank, tombstones = await pipe.execute()
        if score is None or score <= 0:
            return None
        return int(rank) - int(tombstones)
