"""The sticky bucketing store: each user's experiment assignments in Redis.

One Redis hash per tenant and unit, `sluice:sticky-bucket:<tenant>:user_id||<user_id>`,
contains GrowthBook's assignment document for that unit: the key ends in the
document's `attributeName||attributeValue` (GrowthBook's `get_key`), and the
hash fields are its `assignments`, `{experiment key}__{bucket version}` to
variant key. Fields are written with HSETNX, so when replicas with different
weights assign the same new unit at once, the first stored variant stays.
The key is per tenant, because two tenants' users may share a user_id.

The store does not raise `RedisError`. On a Redis failure it logs a warning (the request
id is bound in the log context), counts the failure in
`sluice_assignment_redis_errors_total`, and the caller assigns by hash,
so a Redis outage costs stickiness, never a request.
"""

from __future__ import annotations

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

from services.assignment.assigner import StickyAssignment
from services.assignment.metrics import AssignmentMetrics

log = structlog.get_logger(__name__)

KEY_PREFIX = "sluice:sticky-bucket:"


def sticky_key(tenant: str, attribute: str, unit: str) -> str:
    """Return the Redis key of a unit's assignment document. Tenant names contain no ':', so the key is unambiguous."""
    return f"{KEY_PREFIX}{tenant}:{attribute}||{unit}"


class StickyBucketStore:
    """Loads and saves assignment documents; each load or save renews the document's TTL of `ttl_s` seconds.

    `client` must decode responses to `str`.
    """

    def __init__(self, client: redis.Redis, ttl_s: int, metrics: AssignmentMetrics) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._metrics = metrics

    async def load(self, tenant: str, attribute: str, unit: str) -> dict[str, str] | None:
        """Return the unit's assignments (empty when none are stored), or None when Redis failed."""
        key = sticky_key(tenant, attribute, unit)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(key)
                pipe.expire(key, self._ttl_s)
                assignments, _renewed = await pipe.execute()
        except RedisError as error:
            self._report(error, "sticky_load")
            return None
        return dict(assignments)

    async def save(self, tenant: str, attribute: str, unit: str, update: StickyAssignment) -> None:
        """Store `update` unless the unit already has a variant for that experiment and bucket version."""
        key = sticky_key(tenant, attribute, unit)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hsetnx(key, update.field, update.variant_key)
                pipe.expire(key, self._ttl_s)
                await pipe.execute()
        except RedisError as error:
            self._report(error, "sticky_save")

    def _report(self, error: RedisError, operation: str) -> None:
        log.warning("sticky_bucket_unavailable", operation=operation, fallback="hash", error=repr(error))
        self._metrics.redis_errors.labels(operation=operation).inc()
