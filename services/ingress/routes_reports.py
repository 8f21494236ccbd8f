"""`GET /v1/reports/...`: the caller's traffic summary, drift state and canned analytics reports, read from the telemetry service's store."""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query
from nats.aio.client import Client as NatsClient

from services.ingress.auth import current_api_key
from services.ingress.errors import ApiError, InvalidRequestError, ServiceUnavailableError
from shared.analytics_reports import (
    CostReport,
    ErrorsReport,
    FeedbackReport,
    LatencyReport,
    SafetyReport,
    ThroughputReport,
    cost_report,
    errors_report,
    feedback_report,
    latency_report,
    safety_report,
    throughput_report,
)
from shared.drift_reports import DriftHistory, DriftStates, drift_history, latest_drift_states
from shared.drift_signals import Signal
from shared.prices import PriceTable, load_price_table
from shared.report_filters import DEFAULT_BUCKET, ReportFilterError, ReportFilters, check_filters
from shared.reports import summary_report
from shared.store_client import StoreClient, StoreError, StoreUnavailable
from shared.summary import TrafficSummary

log = structlog.get_logger(__name__)

AnalyticsReport = LatencyReport | ThroughputReport | CostReport | SafetyReport | ErrorsReport | FeedbackReport
# The reports other than cost, which also takes the price table.
_UNPRICED_REPORTS = {
    "latency": latency_report,
    "throughput": throughput_report,
    "safety": safety_report,
    "errors": errors_report,
    "feedback": feedback_report,
}
ANALYTICS_REPORTS = ("latency", "throughput", "cost", "safety", "errors", "feedback")


class InvalidReportRequestError(ApiError):
    """A report name or filter is invalid; `field` names the query parameter."""

    status_code = 400


class ForbiddenTenantError(ApiError):
    """A tenant's key requested another tenant's report, which only admin keys may read."""

    status_code = 403


def as_utc(value: datetime | None) -> datetime | None:
    """Read a datetime without an offset as UTC, as the CLI documents."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def reports_router(
    tenant_dependency: Callable[..., Awaitable[str]],
    nats_client: Callable[[], NatsClient],
    prices: PriceTable | None = None,
) -> APIRouter:
    """Build the router; `nats_client` returns the connected NATS client once the app has started.

    `prices` prices the cost report; None reads shared/config/prices.yaml now,
    so a broken price file stops the ingress at startup.
    """
    router = APIRouter(prefix="/v1/reports", tags=["reports"])
    price_table = prices or load_price_table()
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.get("/summary", response_model=TrafficSummary)
    async def read_summary(
        tenant: Tenant,
        since: Annotated[datetime | None, Query(description="Start of the range, ISO 8601; UTC if no offset.")] = None,
        until: Annotated[datetime | None, Query(description="End of the range, ISO 8601; UTC if no offset.")] = None,
    ) -> TrafficSummary:
        """Return request outcomes and latency percentiles of the caller's tenant over [since, until)."""
        since, until = as_utc(since), as_utc(until)
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

    # Declared after /summary and /drift, which FastAPI matches first.
    @router.get("/{name}", response_model=AnalyticsReport)
    async def read_analytics_report(
        name: str,
        tenant: Tenant,
        since: Annotated[datetime | None, Query(description="Start of the range, ISO 8601; UTC if no offset.")] = None,
        until: Annotated[datetime | None, Query(description="End of the range, ISO 8601; UTC if no offset.")] = None,
        variant: Annotated[str | None, Query(description="Only this model variant's rows.")] = None,
        bucket: Annotated[str, Query(description="Time bucket: 1m, 5m, 15m, 1h or 1d.")] = DEFAULT_BUCKET,
        requested_tenant: Annotated[
            str | None, Query(alias="tenant", description="Admin keys only: the tenant to report on. Default: the key's tenant.")
        ] = None,
    ) -> AnalyticsReport:
        """Return one canned report (latency, throughput, cost, safety, errors or feedback) of the caller's tenant over [since, until)."""
        if name not in ANALYTICS_REPORTS:
            known = ", ".join(["summary", "drift", *ANALYTICS_REPORTS])
            raise InvalidReportRequestError("unknown_report", f"unknown report {name!r}. Known reports: {known}", field="name")
        filters = _report_filters(report_tenant(tenant, requested_tenant), since, until, variant, bucket)
        store = StoreClient(nats_client())
        try:
            if name == "cost":
                return await cost_report(store, filters, price_table)
            return await _UNPRICED_REPORTS[name](store, filters)
        except StoreError as error:
            raise _analytics_report_error(name, filters.tenant, error) from error

    return router


def report_tenant(caller_tenant: str, requested_tenant: str | None) -> str:
    """Return the tenant to report on: the key's own, or for an admin key the requested one.

    A tenant's key that names another tenant gets 403 rather than its own
    report, so a caller never mistakes one tenant's numbers for another's.
    """
    if requested_tenant is None or requested_tenant == caller_tenant:
        return caller_tenant
    key = current_api_key()
    if key is None or not key.admin:
        raise ForbiddenTenantError(
            "forbidden_tenant",
            f"this API key reports on tenant {caller_tenant!r} only; an admin key is required for tenant={requested_tenant!r}",
            field="tenant",
        )
    return requested_tenant


def _report_filters(
    tenant: str, since: datetime | None, until: datetime | None, variant: str | None, bucket: str
) -> ReportFilters:
    filters = ReportFilters(tenant=tenant, since=since, until=until, variant=variant, bucket=bucket)
    try:
        check_filters(filters)
    except ReportFilterError as error:
        raise InvalidReportRequestError("invalid_report_filter", str(error), field=error.field) from error
    return filters


def _analytics_report_error(name: str, tenant: str, error: StoreError) -> ApiError:
    if isinstance(error, StoreUnavailable):
        log.warning("analytics_report_unavailable", report=name, tenant=tenant, error=str(error))
        return ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}")
    log.error("analytics_report_failed", report=name, tenant=tenant, error=str(error))
    return ApiError("report_failed", f"the {name} report failed: {error}")


def _drift_report_error(tenant: str, error: StoreError) -> ApiError:
    if isinstance(error, StoreUnavailable):
        log.warning("drift_report_unavailable", tenant=tenant, error=str(error))
        return ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}")
    log.error("drift_report_failed", tenant=tenant, error=str(error))
    return ApiError("report_failed", f"the drift report failed: {error}")
