"""Cancelling a request: who ends it, a mark in Redis that lasts, and a notice on core NATS that arrives at once.

Exactly one side ends a cancelled request. A claim key decides which:
inference claims a request (`admitted`) before it starts generating, and
the ingress claims it (`cancelled`) when it cancels. The side that sets the
key first wins, because the key is only ever written with SET NX.

- The ingress won: the request had not reached a model. The ingress
  publishes `request.cancelled` itself, so the client sees the end at once
  even while the request waits in a queue, and inference later drops the
  message without generating.
- Inference won: the ingress sets the cancel mark and publishes the notice.
  The notice reaches every inference replica within milliseconds, and the
  one generating the request stops it. The mark covers a generation that is
  redelivered after a crash: inference reads it before it starts again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as redis

from shared.subjects import CANCEL_SUBJECT_PREFIX

# The error code and finish reason that a cancelled request's events carry.
CANCELLED = "cancelled"

# The cancel reasons that the events record.
REASON_CLIENT_REQUEST = "client_request"
REASON_CLIENT_DISCONNECTED = "client_disconnected"


def cancel_subject(tenant: str, request_id: str) -> str:
    """Return the core NATS subject of the request's cancel notice, for example `sluice.control.cancel.acme.<id>`."""
    return f"{CANCEL_SUBJECT_PREFIX}.{tenant}.{request_id}"


def _mark_key(tenant: str, request_id: str) -> str:
    return f"sluice:cancel:{tenant}:{request_id}"


def _claim_key(tenant: str, request_id: str) -> str:
    return f"sluice:claim:{tenant}:{request_id}"


_ADMITTED = "admitted"
_CANCELLED_PREFIX = "cancelled:"


@dataclass(frozen=True)
class CancelNotice:
    """The body of a cancel notice."""

    tenant: str
    request_id: str
    reason: str

    def encode(self) -> bytes:
        return json.dumps({"tenant": self.tenant, "request_id": self.request_id, "reason": self.reason}).encode()

    @classmethod
    def decode(cls, data: bytes) -> CancelNotice:
        """Parse a notice. Raises `ValueError` (also for invalid JSON) when a field is missing or not a string."""
        body = json.loads(data)
        fields = {name: body.get(name) if isinstance(body, dict) else None for name in ("tenant", "request_id", "reason")}
        if not all(isinstance(value, str) and value for value in fields.values()):
            raise ValueError(f"invalid cancel notice {body!r}: expected string fields tenant, request_id and reason")
        return cls(**fields)


class CancelMarks:
    """The cancel marks in Redis, one per cancelled request, kept as long as the request's state."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    async def mark(self, tenant: str, request_id: str, reason: str) -> None:
        """Mark the request as cancelled. A second mark keeps the first reason."""
        await self._client.set(_mark_key(tenant, request_id), reason, nx=True, ex=self._ttl_s)

    async def reason(self, tenant: str, request_id: str) -> str | None:
        """Return why the request was cancelled, from its mark or from the ingress's claim, or None when it was not."""
        mark, claim = await self._client.mget(_mark_key(tenant, request_id), _claim_key(tenant, request_id))
        if mark is not None:
            return _text(mark)
        claimed = _text(claim)
        return claimed.removeprefix(_CANCELLED_PREFIX) if claimed and claimed.startswith(_CANCELLED_PREFIX) else None

    async def claim_for_cancel(self, tenant: str, request_id: str, reason: str) -> bool:
        """Claim the request for the ingress to end as cancelled. Return False when inference or a cancel claimed it first."""
        return bool(await self._client.set(_claim_key(tenant, request_id), _CANCELLED_PREFIX + reason, nx=True, ex=self._ttl_s))

    async def claim_for_generation(self, tenant: str, request_id: str) -> str | None:
        """Claim the request for inference. Return None when it may generate, else the reason it was cancelled.

        A redelivered request finds its own earlier claim and may generate again.
        """
        key = _claim_key(tenant, request_id)
        if await self._client.set(key, _ADMITTED, nx=True, ex=self._ttl_s):
            return None
        # The key is only ever written with NX, so the value read now is the one that won.
        value = _text(await self._client.get(key)) or _ADMITTED
        return value.removeprefix(_CANCELLED_PREFIX) if value.startswith(_CANCELLED_PREFIX) else None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
