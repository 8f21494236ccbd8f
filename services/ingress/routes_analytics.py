"""`POST /v1/analytics/query`: read-only SQL over the caller's tenant's events, run by the telemetry store.

A tenant's key is confined to its own tenant's rows. An admin key (`sluice
keys create --admin`) reads every tenant's rows, under the same checks. The telemetry service checks and rewrites the SQL
(`services/telemetry/analytics_sql.py`) and caps its run time and rows.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel, ConfigDict, Field

from services.ingress.auth import current_api_key
from services.ingress.errors import ApiError, ServiceUnavailableError
from shared.store_client import MAX_PAGE_SIZE, StoreClient, StoreError, StoreQueryError, StoreUnavailable

log = structlog.get_logger(__name__)

# The longest SQL text the route accepts. Hand-written analytics queries
# are a few hundred characters, and the limit keeps parsing cheap.
MAX_SQL_CHARS = 20_000


class AnalyticsQueryBody(BaseModel):
    """The body of `POST /v1/analytics/query`."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS, description="One SELECT (or WITH ... SELECT) statement.")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Values bound on the server to the SQL's {name:Type} placeholders."
    )


class AnalyticsQueryResult(BaseModel):
    """The columns and every row of the result, each row a list in column order."""

    columns: list[str]
    rows: list[list[Any]]


class InvalidQueryError(ApiError):
    """The store rejected the SQL: not allowed, invalid, over the row cap or past the time limit."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__("invalid_query", message, field="sql")


def analytics_router(
    tenant_dependency: Callable[..., Awaitable[str]], nats_client: Callable[[], NatsClient]
) -> APIRouter:
    """Build the router; `nats_client` returns the connected NATS client once the app has started."""
    router = APIRouter(prefix="/v1/analytics", tags=["analytics"])
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.post("/query", response_model=AnalyticsQueryResult)
    async def run_query(tenant: Tenant, body: AnalyticsQueryBody) -> AnalyticsQueryResult:
        """Run read-only SQL over the caller's tenant's rows, or every tenant's for an admin key; 400 names what the store rejected."""
        key = current_api_key()
        admin = key is not None and key.admin
        store = StoreClient(nats_client())
        try:
            # Pages as large as the store allows, so that a result within
            # the store's row cap takes one or two round trips.
            result = await store.query_all_pages(
                body.sql,
                body.parameters,
                page_size=MAX_PAGE_SIZE,
                confine_to_tenant=None if admin else tenant,
                user_sql=True,
            )
        except StoreQueryError as error:
            raise InvalidQueryError(str(error)) from error
        except StoreUnavailable as error:
            log.warning("analytics_query_unavailable", tenant=tenant, error=str(error))
            raise ServiceUnavailableError("store_unavailable", f"the telemetry store did not respond: {error}") from error
        except StoreError as error:
            log.error("analytics_query_failed", tenant=tenant, error=str(error))
            raise ApiError("analytics_query_failed", f"the analytics query failed: {error}") from error
        log.info("analytics_query_served", tenant=tenant, admin=admin, rows=len(result.rows))
        return AnalyticsQueryResult(columns=result.columns, rows=result.rows)

    return router
