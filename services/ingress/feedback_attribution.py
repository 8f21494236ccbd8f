"""Attribution of feedback: the rated request must be the caller's and accepted within the attribution window.

The durable record is the `request.accepted` row in ClickHouse's `events`
table, read through the telemetry service's store API. Telemetry stores
events in batches, so a request accepted a moment ago may not be there yet.
Only then does the check read the ingress's own status record in Redis,
and only for a request accepted within `STORE_LAG_ALLOWANCE_S`, so Redis,
which keeps status records for `SLUICE_REQUEST_STATE_TTL_S` (a day by
default), never decides about an old request.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import structlog

from shared.events import utc_now
from shared.store_client import StoreClient, StoreError, StoreUnavailable

from services.ingress.errors import ApiError, ServiceUnavailableError
from services.ingress.state_store import RecordField, RequestStateStore

log = structlog.get_logger(__name__)

# Telemetry stores a partial batch after 1 s, and after a failed insert it
# retries with delays doubling from 1 s to 60 s. Five minutes covers the
# batch wait and several failed inserts. A request accepted longer ago that
# is still missing from ClickHouse means the store is behind, and the
# caller gets 503 rather than a verdict from Redis.
STORE_LAG_ALLOWANCE_S = 300
# A lookup by tenant and request id reads a few granules. The store client's
# default of 30 s suits reports; an HTTP caller should not wait that long.
LOOKUP_TIMEOUT_S = 5.0
# Sent as Retry-After with a 503. Telemetry's first retry of a failed insert
# comes after 1 s, and a restarted telemetry replica replies within seconds.
STORE_RETRY_AFTER_S = 5

# `ts` is the accepted event's time; there is one accepted event per request id.
_ACCEPTED_AT_SQL = """
SELECT ts
FROM events
WHERE tenant = {tenant:String} AND request_id = {request_id:String} AND type = 'request.accepted'
ORDER BY ts
LIMIT 1
"""


class RatedRequestNotFoundError(ApiError):
    """The caller's tenant has no accepted request with this id; another tenant's request reads the same."""

    status_code = 404

    def __init__(self, request_id: str) -> None:
        super().__init__(
            "request_not_found",
            f"request {request_id!r} not found for this API key's tenant; send the request_id that "
            "POST /v1/requests returned (for OpenAI-compatible responses, the id after 'chatcmpl-' or 'cmpl-')",
            field="request_id",
        )


class AttributionWindowClosedError(ApiError):
    """The request was accepted longer ago than the attribution window.

    409 rather than 422: the body is valid and names an existing request, and
    it is the request's state that rules the feedback out, as with a cancel
    of a request that has ended.
    """

    status_code = 409

    def __init__(self, request_id: str, accepted_at: datetime, window_s: int) -> None:
        super().__init__(
            "attribution_window_closed",
            f"request {request_id!r} was accepted at {accepted_at.isoformat()}, more than the attribution "
            f"window of {window_s} s ({window_s / 86400:g} days, SLUICE_FEEDBACK_ATTRIBUTION_WINDOW_S) ago; "
            "feedback is accepted only within that window",
            field="request_id",
        )


def _store_unavailable(message: str) -> ServiceUnavailableError:
    return ServiceUnavailableError("store_unavailable", message, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


class AttributionChecker:
    """Decides whether a tenant may give feedback on a request now.

    `store` returns a store client on the connected NATS client. `clock`
    returns the current time in UTC; tests pass their own.
    """

    def __init__(
        self,
        *,
        store: Callable[[], StoreClient],
        state_store: RequestStateStore,
        window_s: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._state_store = state_store
        self._window = timedelta(seconds=window_s)
        self._window_s = window_s
        self._clock = clock

    async def check(self, tenant: str, request_id: str) -> None:
        """Return when `tenant` accepted `request_id` within the window.

        Raises `RatedRequestNotFoundError` (404), `AttributionWindowClosedError`
        (409), `ServiceUnavailableError` (503 with Retry-After) when the store
        does not reply or lags behind, and `redis.exceptions.RedisError`.
        """
        accepted_at = await self._accepted_at_in_store(tenant, request_id)
        if accepted_at is None:
            await self._check_recent_in_redis(tenant, request_id)
            return
        if self._clock() - accepted_at > self._window:
            raise AttributionWindowClosedError(request_id, accepted_at, self._window_s)

    async def _accepted_at_in_store(self, tenant: str, request_id: str) -> datetime | None:
        parameters = {"tenant": tenant, "request_id": request_id}
        try:
            page = await self._store().query(_ACCEPTED_AT_SQL, parameters, page_size=1, timeout_s=LOOKUP_TIMEOUT_S)
        except StoreUnavailable as error:
            log.warning("feedback_store_unavailable", tenant=tenant, request_id=request_id, error=str(error))
            message = f"the telemetry store did not respond, so the rated request could not be checked: {error}"
            raise _store_unavailable(message) from error
        except StoreError as error:
            log.error("feedback_store_lookup_failed", tenant=tenant, request_id=request_id, error=str(error))
            raise ApiError("feedback_check_failed", f"the lookup of the rated request failed: {error}") from error
        if not page.rows:
            return None
        return _utc(page.rows[0][0])

    async def _check_recent_in_redis(self, tenant: str, request_id: str) -> None:
        """Accept a request that ClickHouse lacks only while telemetry may still be storing it.

        The status record is the tenant's own (its key names the tenant), so
        another tenant's request is not found here either.
        """
        fields = await self._state_store.read(tenant, request_id)
        accepted_at_text = (fields or {}).get(RecordField.ACCEPTED_AT.value)
        if accepted_at_text is None:
            raise RatedRequestNotFoundError(request_id)
        age_s = (self._clock() - _utc(accepted_at_text)).total_seconds()
        if age_s > STORE_LAG_ALLOWANCE_S:
            log.warning("feedback_store_behind", tenant=tenant, request_id=request_id, accepted_age_s=round(age_s, 1))
            raise _store_unavailable(
                f"request {request_id!r} was accepted {age_s:.0f} s ago but is not in the telemetry store yet; "
                "the store is behind, retry later"
            )
        log.info("feedback_attributed_from_redis", tenant=tenant, request_id=request_id, accepted_age_s=round(age_s, 3))


def _utc(text: str) -> datetime:
    """Parse an ISO 8601 time as the store API and the status record write it; a time without an offset is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
