"""Moderation's writes: the release log in Redis and events on NATS.

This is the one place where Redis and NATS errors become `DeliveryFailed`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats.errors
from redis.exceptions import RedisError

from shared.bus import EventPublisher
from shared.events import Envelope
from shared.release_log import ReleaseLog


class DeliveryFailed(Exception):
    """A write to Redis or NATS failed; the message that caused it should be redelivered later.

    The original error is the cause.
    """


@asynccontextmanager
async def _translate_errors(operation: str) -> AsyncIterator[None]:
    try:
        yield
    # nats.errors.TimeoutError is also an OSError; OSError covers sockets that broke mid-write.
    except (RedisError, nats.errors.Error, OSError) as error:
        raise DeliveryFailed(f"{operation} failed: {error!r}") from error


class OutputSink:
    """Appends released chunks and final entries to the release log and publishes events.

    Every write is idempotent: the release log rejects a chunk seq or a final
    entry it contains already, and JetStream drops an event id it saw within
    its duplicate window.
    """

    def __init__(self, release_log: ReleaseLog, publisher: EventPublisher) -> None:
        self._release_log = release_log
        self._publisher = publisher

    async def release_chunk(self, tenant: str, request_id: str, seq: int, text: str) -> bool:
        """Append chunk `seq`; return False when the log contained it already or is closed."""
        async with _translate_errors("appending a chunk to the release log"):
            return await self._release_log.append_chunk(tenant, request_id, seq, text)

    async def close(self, tenant: str, request_id: str, final: dict[str, Any]) -> bool:
        """Append the final entry; return False when the log was closed already."""
        async with _translate_errors("appending the final entry to the release log"):
            return await self._release_log.append_final(tenant, request_id, final)

    async def count_released(self, tenant: str, request_id: str) -> int:
        """Return how many entries the request's release log contains, the final one included."""
        async with _translate_errors("reading the release log"):
            return await self._release_log.count_chunks(tenant, request_id)

    async def publish(self, envelope: Envelope) -> None:
        async with _translate_errors(f"publishing {envelope.type.value}"):
            await self._publisher.publish(envelope)
