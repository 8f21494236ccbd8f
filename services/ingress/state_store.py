"""The request status record: one Redis hash per request, whose status only moves forward.

Key: `sluice:request:<tenant>:<request_id>`. Every field is a string, as Redis
stores it. The status changes in a Lua script that compares ranks
(screening < queued < generating < any terminal status), so two projector
replicas that apply events out of order cannot move a request back.

When the status turns terminal, the same script appends one entry to the
request's terminal notice, a Redis stream at
`sluice:request-ended:<tenant>:<request_id>`. A reader that must not act
before the record is terminal (the WebSocket's final message) blocks on that
stream instead of polling the record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import redis.asyncio as redis


class RequestStatus(str, enum.Enum):
    SCREENING = "screening"
    QUEUED = "queued"
    GENERATING = "generating"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {
        RequestStatus.BLOCKED,
        RequestStatus.COMPLETED,
        RequestStatus.FAILED,
        RequestStatus.EXPIRED,
        RequestStatus.CANCELLED,
    }
)

# Terminal statuses share the top rank, so the first one recorded stays.
_TERMINAL_RANK = 4
STATUS_RANKS: dict[RequestStatus, int] = {
    RequestStatus.SCREENING: 1,
    RequestStatus.QUEUED: 2,
    RequestStatus.GENERATING: 3,
    RequestStatus.BLOCKED: _TERMINAL_RANK,
    RequestStatus.COMPLETED: _TERMINAL_RANK,
    RequestStatus.FAILED: _TERMINAL_RANK,
    RequestStatus.EXPIRED: _TERMINAL_RANK,
    RequestStatus.CANCELLED: _TERMINAL_RANK,
}


class RecordField(str, enum.Enum):
    """The hash fields of a status record."""

    STATUS = "status"
    STATUS_RANK = "status_rank"
    ACCEPTED_AT = "accepted_at"
    SCREENED_AT = "screened_at"
    ASSIGNED_AT = "assigned_at"
    FIRST_TOKEN_AT = "first_token_at"
    COMPLETED_AT = "completed_at"
    DELIVERED_AT = "delivered_at"
    # When the request reached a terminal status; `total_ms` ends here.
    ENDED_AT = "ended_at"
    # JSON lists of scanner results.
    INPUT_VERDICTS = "input_verdicts"
    OUTPUT_VERDICTS = "output_verdicts"
    BLOCKED_BY = "blocked_by"
    REASON = "reason"
    EXPERIMENT_KEY = "experiment_key"
    VARIANT_KEY = "variant_key"
    # The endpoint pool that serves the request, from `request.assigned`.
    BACKEND = "backend"
    TEXT = "text"
    FINISH_REASON = "finish_reason"
    PROMPT_TOKENS = "prompt_tokens"
    COMPLETION_TOKENS = "completion_tokens"
    ERROR_CODE = "error_code"
    ERROR_MESSAGE = "error_message"
    # The W3C traceparent of `request.accepted`, so that an event the ingress
    # itself publishes later for the request (a cancellation) joins its trace.
    TRACEPARENT = "traceparent"


# KEYS[1] is the record, KEYS[2] the terminal notice. ARGV[1] is the TTL in
# seconds, ARGV[2] the new status ('' to leave it), ARGV[3] its rank, ARGV[4]
# '1' when that status is terminal, ARGV[5..] field/value pairs that are
# always written. Returns the status after the update.
_APPLY_SCRIPT = """
if #ARGV > 4 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 5))
end
local current_rank = tonumber(redis.call('HGET', KEYS[1], 'status_rank')) or 0
if ARGV[2] ~= '' and tonumber(ARGV[3]) > current_rank then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'status_rank', ARGV[3])
  if ARGV[4] == '1' then
    redis.call('XADD', KEYS[2], '*', 'status', ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGET', KEYS[1], 'status')
"""


def record_key(tenant: str, request_id: str) -> str:
    return f"sluice:request:{tenant}:{request_id}"


def terminal_notice_key(tenant: str, request_id: str) -> str:
    return f"sluice:request-ended:{tenant}:{request_id}"


@dataclass(frozen=True)
class StateUpdate:
    """The change one event makes: a new status (None leaves it) and fields to write."""

    status: RequestStatus | None = None
    fields: dict[RecordField, str] = field(default_factory=dict)


class RequestStateStore:
    """Reads and updates status records; every write renews the record's TTL of `ttl_s` seconds.

    Raises `redis.exceptions.RedisError` when Redis fails.
    """

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._apply_script = client.register_script(_APPLY_SCRIPT)

    async def apply(self, tenant: str, request_id: str, update: StateUpdate) -> RequestStatus | None:
        """Write `update` to the record, creating it if needed, and return the record's status afterwards."""
        current = await self._apply_script(keys=_apply_keys(tenant, request_id), args=self._apply_args(update))
        return RequestStatus(_text(current)) if current else None

    async def queue_apply(self, pipe: redis.client.Pipeline, tenant: str, request_id: str, update: StateUpdate) -> None:
        """Queue `apply` on `pipe`; it runs, in queue order, when the caller executes the pipeline."""
        await self._apply_script(keys=_apply_keys(tenant, request_id), args=self._apply_args(update), client=pipe)

    def _apply_args(self, update: StateUpdate) -> list[str | int]:
        status = update.status.value if update.status else ""
        rank = STATUS_RANKS[update.status] if update.status else 0
        terminal = "1" if update.status in TERMINAL_STATUSES else "0"
        pairs = [item for name, value in update.fields.items() for item in (name.value, value)]
        return [self._ttl_s, status, rank, terminal, *pairs]

    async def wait_until_terminal(self, tenant: str, request_id: str, block_ms: int) -> bool:
        """Return True once the record's status is terminal, or False when it was not within `block_ms`.

        Returns at once when it is terminal already.
        """
        reply = await self._redis.xread({terminal_notice_key(tenant, request_id): "0-0"}, count=1, block=block_ms)
        return bool(reply)

    async def read(self, tenant: str, request_id: str) -> dict[str, str] | None:
        """Return the record's fields, or None when this tenant has no record with a status for the id.

        A record without a status exists only when an event arrived after the
        record had expired; it is treated as absent.
        """
        raw = await self._redis.hgetall(record_key(tenant, request_id))
        fields = {_text(name): _text(value) for name, value in raw.items()}
        return fields if RecordField.STATUS.value in fields else None

    async def status(self, tenant: str, request_id: str) -> RequestStatus | None:
        """Return the record's status, or None when there is no record with a status."""
        value = await self._redis.hget(record_key(tenant, request_id), RecordField.STATUS.value)
        return RequestStatus(_text(value)) if value else None

    async def exists(self, tenant: str, request_id: str) -> bool:
        """Return whether `read` would find the record."""
        return bool(await self._redis.hexists(record_key(tenant, request_id), RecordField.STATUS.value))

    async def delete(self, tenant: str, request_id: str) -> None:
        await self._redis.delete(*_apply_keys(tenant, request_id))


def _apply_keys(tenant: str, request_id: str) -> list[str]:
    return [record_key(tenant, request_id), terminal_notice_key(tenant, request_id)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
