"""The released output of each request, kept in Redis so any ingress replica can stream it.

Each request has one Redis stream. A chunk with sequence number N is stored
under the entry id `0-(N+1)`, so a redelivered chunk is rejected by Redis
instead of stored twice, and a client resuming at offset N reads every entry
after `0-N`. The final message is appended once, guarded by a flag key, and
closes the log: a chunk that arrives later is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis

# Appends the final entry only if the log is still open; returns 1 when it did.
_APPEND_FINAL_SCRIPT = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# Appends one chunk unless the log is closed or contains it already. Returns
# 1 when stored, 0 when the log was closed, 2 when the chunk was there.
_APPEND_CHUNK_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then
  return 2
end
redis.call('XADD', KEYS[1], ARGV[1], 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def release_key(tenant: str, request_id: str) -> str:
    return f"sluice:release:{tenant}:{request_id}"


def _closed_key(tenant: str, request_id: str) -> str:
    return f"sluice:release-closed:{tenant}:{request_id}"


def _final_keys(tenant: str, request_id: str) -> list[str]:
    return [release_key(tenant, request_id), _closed_key(tenant, request_id)]


def _entry_id(seq: int) -> str:
    return f"0-{seq + 1}"


@dataclass(frozen=True)
class ReleasedMessage:
    """One entry of the log: `{"type": "chunk", "seq", "text"}` or `{"type": "final", ...}`."""

    entry_id: str
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.data.get("type") == "final"


class ReleaseLog:
    """Appends and reads released chunks; every key expires after `ttl_s` seconds."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._append_chunk = client.register_script(_APPEND_CHUNK_SCRIPT)
        self._append_final = client.register_script(_APPEND_FINAL_SCRIPT)

    async def append_chunk(self, tenant: str, request_id: str, seq: int, text: str) -> bool:
        """Store chunk `seq`; return False if it was stored before or the log is closed."""
        data = json.dumps({"type": "chunk", "seq": seq, "text": text})
        keys = [release_key(tenant, request_id), _closed_key(tenant, request_id)]
        outcome = await self._append_chunk(keys=keys, args=[_entry_id(seq), data, self._ttl_s])
        return outcome == 1

    async def append_final(self, tenant: str, request_id: str, final: dict[str, Any]) -> bool:
        """Close the log with `final` (which gets `"type": "final"`); return False if it was already closed."""
        return bool(await self._append_final(keys=_final_keys(tenant, request_id), args=self._final_args(final)))

    async def queue_append_final(
        self, pipe: redis.client.Pipeline, tenant: str, request_id: str, final: dict[str, Any]
    ) -> None:
        """Queue `append_final` on `pipe`; it runs, in queue order, when the caller executes the pipeline."""
        await self._append_final(keys=_final_keys(tenant, request_id), args=self._final_args(final), client=pipe)

    def _final_args(self, final: dict[str, Any]) -> list[str | int]:
        return [json.dumps({**final, "type": "final"}), self._ttl_s]

    async def count_chunks(self, tenant: str, request_id: str) -> int:
        """Return how many entries the log holds, the final one included."""
        return int(await self._redis.xlen(release_key(tenant, request_id)))

    async def read(
        self, tenant: str, request_id: str, *, after_entry_id: str, block_ms: int | None
    ) -> list[ReleasedMessage]:
        """Return the entries after `after_entry_id`, waiting up to `block_ms` for one when none is there yet.

        Start a reader at `offset_to_entry_id(N)` to receive chunk N onward.
        """
        key = release_key(tenant, request_id)
        reply = await self._redis.xread({key: after_entry_id}, block=block_ms, count=256)
        messages: list[ReleasedMessage] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                raw = fields[b"data"] if b"data" in fields else fields["data"]
                entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                messages.append(ReleasedMessage(entry, json.loads(raw)))
        return messages


def offset_to_entry_id(offset: int) -> str:
    """Return the entry id to read after so that the first entry returned is chunk `offset`."""
    return f"0-{offset}"
