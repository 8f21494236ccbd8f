"""`GET /v1/reports/summary` and `/v1/reports/drift`: the caller's traffic summary and drift state, read from the telemetry service's store."""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query
from nats.aio.client import Client as NatsClient

from services.ingress.errors import ApiError, InvalidRequestError, ServiceUnavailableError
from shared.drift_reports import DriftHistory, DriftStates, drift_history, latest_drift_states
from shared.drift_signals import Signal
from shared.reports import summary_report
from shared.store_client import StoreClient, StoreError, StoreUnavailable
from shared.summary import TrafficSummary

log = structlog.get_logger(__name__)


def _as_utc(value: datetime | None) -> datetime | None:
    """Read a datetime without an offset as UTC, as the CLI documents."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def reports_router(tenant_dependency: Callable[..., Awaitable[str]], nats_client: Callable[[], NatsClient]) -> APIRouter:
    """Build the router; `nats_client` returns the connected NATS client once the app has started."""
    router = APIRouter(prefix="/v1/reports", tags=["reports"])
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.get("/summary", response_model=TrafficSummary)
    async def read_summary(
        tenant: Tenant,
        since: Annotated[datetime | None, Query(description="Start of the range, ISO 8601; UTC if no offset.")] = None,
        until: Annotated[datetime | None, Query(description="End of the range, ISO 8601; UTC if no offset.")] = None,
    ) -> TrafficSummary:
        """Return request outcomes and latency percentiles of the caller's tenant over [since, until)."""
        since, until = _as_utc(since), _as_utc(until)
        if since is not None and until is not None and since >= until:
            raise InvalidRequestError(
                "invalid_time_range", f"since ({since.isoformat()}) must be before until ({until.isoformat()})", field="since"
            )
        try:
            return await summary_report(StoreClient(nats_client()), tenant, since, until)
        except StoreUnavailable as error:
            log.warning("summary_report_unavailable", tenant=tenant, error=str(error))
            raise ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}") from error
        except StoreError as error:
            log.error("summary_report_failed", tenant=tenant, error=str(error))
            raise ApiError("report_failed", f"the summary report failed: {error}") from error

    @router.get("/drift", response_model=DriftStates)
    async def read_drift(tenant: Tenant) -> DriftStates:
        """Return the latest drift comparison of every signal and model variant of the caller's tenant."""
        try:
            return DriftStates(states=await latest_drift_states(StoreClient(nats_client()), tenant))
        except StoreError as error:
            raise _drift_report_error(tenant, error) from error

    @router.get("/drift/history", response_model=DriftHistory)
    async def read_drift_history(
        tenant: Tenant,
        signal: Annotated[str, Query(description="The signal to read, such as output_chars.")],
    ) -> DriftHistory:
        """Return the alarm statistic of one signal at each evaluation, per model variant, oldest first."""
        if signal not in {member.value for member in Signal}:
            known = ", ".join(sorted(Signal))
            raise InvalidRequestError("unknown_signal", f"unknown signal {signal!r}. Known signals: {known}", field="signal")
        try:
            points = await drift_history(StoreClient(nats_client()), tenant, signal)
        except StoreError as error:
            raise _drift_report_error(tenant, error) from error
        return DriftHistory(signal=signal, points=points)

    return router


def _drift_report_error(tenant: str, error: StoreError) -> ApiError:
    if isinstance(error, StoreUnavailable):
        log.warning("drift_report_unavailable", tenant=tenant, error=str(error))
        return ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}")
    log.error("drift_report_failed", tenant=tenant, error=str(error))
    return ApiError("report_failed", f"the drift report failed: {error}")
