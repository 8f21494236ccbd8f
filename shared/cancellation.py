"""Cancelling a request: a mark in Redis that lasts, and a notice on core NATS that arrives at once.

The ingress sets both. The notice reaches every inference replica within
milliseconds, and the one generating the request stops it. The mark covers
a request that no replica is generating yet: inference checks it before it
starts, so a request cancelled while it waits in a queue never reaches a
model. A notice that no replica hears (none was connected) is harmless for
the same reason, except for a generation already running, which then runs to
its end.
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
        """Return why the request was cancelled, or None when it was not."""
        value = await self._client.get(_mark_key(tenant, request_id))
        return value.decode() if isinstance(value, bytes) else value
