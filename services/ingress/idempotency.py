"""Idempotency keys: the same `Idempotency-Key` and body return the same request id instead of a second request.

Key: `sluice:idempotency:<tenant>:<key>`, holding JSON
`{"request_id", "body_sha256", "accepted"}`. `accepted` turns true once the
request was published, which distinguishes a repeat that arrives while the
first is still being accepted from a repeat of a finished one. Feedback keys
live apart, under `sluice:feedback-idempotency:<tenant>:<key>`, and their
`request_id` holds the feedback id.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import redis.asyncio as redis

# Returns the stored value when the key exists. Otherwise it stores ARGV[1]
# with a TTL of ARGV[2] seconds and returns false. Redis runs a script
# atomically, so two concurrent first requests cannot both reserve the key.
_RESERVE_SCRIPT = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


# A reservation whose request is not yet published expires after this long,
# so an ingress that crashed or lost Redis between reserving the key and
# confirming it blocks the key only briefly. Publishing waits about half a
# second for JetStream's ack, far below this.
PENDING_RESERVATION_TTL_S = 30


REQUEST_KEY_PREFIX = "sluice:idempotency"
# A separate prefix, so a client may use the same key for a request and for feedback on it.
FEEDBACK_KEY_PREFIX = "sluice:feedback-idempotency"


def idempotency_key(tenant: str, key: str, prefix: str = REQUEST_KEY_PREFIX) -> str:
    return f"{prefix}:{tenant}:{key}"


@dataclass(frozen=True)
class IdempotencyRecord:
    # The id that a repeat returns: the request's id, or the feedback id for a feedback key.
    request_id: str
    body_sha256: str
    accepted: bool = False


class IdempotencyStore:
    """Reserves, confirms and releases idempotency keys.

    A confirmed key lives `ttl_s` seconds from its confirmation, and an
    unconfirmed reservation `PENDING_RESERVATION_TTL_S` seconds. Keys are
    stored under `key_prefix`. Raises `redis.exceptions.RedisError` when
    Redis fails.
    """

    def __init__(self, client: redis.Redis, ttl_s: int, key_prefix: str = REQUEST_KEY_PREFIX) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._key_prefix = key_prefix
        self._reserve_script = client.register_script(_RESERVE_SCRIPT)

    async def reserve(self, tenant: str, key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Store `record` under `key` unless the key is taken; return None when stored, else the record already there."""
        keys = [idempotency_key(tenant, key, self._key_prefix)]
        existing = await self._reserve_script(keys=keys, args=[json.dumps(asdict(record)), PENDING_RESERVATION_TTL_S])
        return IdempotencyRecord(**json.loads(existing)) if existing else None

    async def mark_accepted(self, tenant: str, key: str, record: IdempotencyRecord) -> None:
        """Record that the request was published; from now on the key lives `ttl_s` seconds."""
        accepted = IdempotencyRecord(record.request_id, record.body_sha256, accepted=True)
        redis_key = idempotency_key(tenant, key, self._key_prefix)
        await self._redis.set(redis_key, json.dumps(asdict(accepted)), xx=True, ex=self._ttl_s)

    async def release(self, tenant: str, key: str) -> None:
        """Forget the key, so a retry after a failed acceptance starts afresh."""
        await self._redis.delete(idempotency_key(tenant, key, self._key_prefix))
