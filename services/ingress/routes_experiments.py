"""`GET /v1/reports/experiment/{key}`: the analysis of one A/B experiment, read from the telemetry service's store."""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Query
from nats.aio.client import Client as NatsClient

from services.ingress.errors import ApiError, InvalidRequestError, ServiceUnavailableError
from services.ingress.routes_reports import as_utc, report_tenant
from shared.experiment_analysis.arm_data import read_arms
from shared.experiment_analysis.metrics_config import MetricConfig, load_metrics
from shared.experiment_analysis.report import ExperimentReport, build_report
from shared.experiments import ExperimentsFile
from shared.prices import PriceTable, load_price_table
from shared.store_client import StoreClient, StoreError, StoreUnavailable

log = structlog.get_logger(__name__)


class ExperimentNotFoundError(ApiError):
    """The experiment key is not in the experiments file in force."""

    status_code = 404


def experiments_router(
    tenant_dependency: Callable[..., Awaitable[str]],
    nats_client: Callable[[], NatsClient],
    experiments: Callable[[], ExperimentsFile],
    metrics: list[MetricConfig] | None = None,
    prices: PriceTable | None = None,
) -> APIRouter:
    """Build the router. `experiments` returns the experiments in force, which name each experiment's control and weights.

    `metrics` and `prices` default to shared/config/metrics.yaml and
    prices.yaml, read now, so a broken file stops the ingress at startup.
    """
    router = APIRouter(prefix="/v1/reports/experiment", tags=["reports"])
    metric_list = metrics or load_metrics()
    price_table = prices or load_price_table()
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.get("/{key}", response_model=ExperimentReport)
    async def read_experiment_report(
        key: str,
        tenant: Tenant,
        since: Annotated[datetime | None, Query(description="Start of the range, ISO 8601; UTC if no offset.")] = None,
        until: Annotated[datetime | None, Query(description="End of the range, ISO 8601; UTC if no offset.")] = None,
        requested_tenant: Annotated[
            str | None, Query(alias="tenant", description="Admin keys only: the tenant to report on. Default: the key's tenant.")
        ] = None,
    ) -> ExperimentReport:
        """Return units, exposures and every metric per arm of experiment `key`, compared with its control arm."""
        experiment = next((item for item in experiments().experiments if item.key == key), None)
        if experiment is None:
            known = ", ".join(item.key for item in experiments().experiments) or "none"
            raise ExperimentNotFoundError(
                "experiment_not_found", f"no experiment {key!r} in the experiments in force. Known experiments: {known}"
            )
        since, until = as_utc(since), as_utc(until)
        if since is not None and until is not None and since >= until:
            raise InvalidRequestError(
                "invalid_time_range", f"since ({since.isoformat()}) must be before until ({until.isoformat()})", field="since"
            )
        report_for = report_tenant(tenant, requested_tenant)
        store = StoreClient(nats_client())
        try:
            arms = await read_arms(
                store, tenant=report_for, experiment=key, metrics=metric_list, prices=price_table, since=since, until=until
            )
        except StoreUnavailable as error:
            log.warning("experiment_report_unavailable", experiment_key=key, tenant=report_for, error=str(error))
            raise ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}") from error
        except StoreError as error:
            log.error("experiment_report_failed", experiment_key=key, tenant=report_for, error=str(error))
            raise ApiError("report_failed", f"the experiment report failed: {error}") from error
        return build_report(experiment, arms, metric_list, tenant=report_for, since=since, until=until)

    return router
