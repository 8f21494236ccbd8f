"""Reading drift results back from the `drift_reports` table through the store API.

The ingress serves them at `/v1/reports/drift`, which `sluice report drift`
reads. The module lives in shared/ because the ingress must not import the
drift service, and it imports no statistics packages, so the ingress can
serve the report without loading them.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from shared.store_client import MAX_PAGE_SIZE, StoreClient

# A plot of one signal over more points than this would be unreadable, so
# the history keeps the latest ones. 10,000 points are about 17 days of
# evaluations every 5 minutes for 2 variants.
MAX_HISTORY_POINTS = MAX_PAGE_SIZE

# The latest comparison of each (variant, signal) of the tenant. FINAL
# collapses copies of a row that telemetry inserted twice.
_LATEST_SQL = """
SELECT
    variant,
    signal,
    max(at) AS evaluated_at,
    argMax(outcome, at) AS outcome,
    argMax(alert_active, at) AS alert_active,
    argMax(statistic, at) AS statistic,
    argMax(value, at) AS value,
    argMax(threshold, at) AS threshold,
    argMax(reference_samples, at) AS reference_samples,
    argMax(current_start, at) AS current_start,
    argMax(current_end, at) AS current_end,
    argMax(current_samples, at) AS current_samples
FROM (
    -- Renamed, so that the `evaluated_at` alias above does not replace the column in argMax.
    SELECT *, evaluated_at AS at
    FROM drift_reports FINAL
    WHERE tenant = {tenant:String}
)
GROUP BY variant, signal
ORDER BY variant, signal
"""

# The latest points of one signal, oldest first.
_HISTORY_SQL = """
SELECT evaluated_at, variant, statistic, value, threshold, alert_active
FROM (
    SELECT evaluated_at, variant, statistic, value, threshold, alert_active
    FROM drift_reports FINAL
    WHERE tenant = {tenant:String} AND signal = {signal:String}
    ORDER BY evaluated_at DESC, variant
    LIMIT {max_points:UInt32}
)
ORDER BY evaluated_at, variant
"""


class DriftState(BaseModel):
    """The latest comparison of one signal of one variant: its alarm statistic, alert state and current window."""

    variant: str
    signal: str
    evaluated_at: datetime
    outcome: str
    alert_active: bool
    statistic: str
    value: float | None
    threshold: float | None
    reference_samples: int
    current_start: datetime
    current_end: datetime
    current_samples: int


class DriftPoint(BaseModel):
    """The alarm statistic of one signal of one variant at one evaluation."""

    evaluated_at: datetime
    variant: str
    statistic: str
    value: float | None
    threshold: float | None
    alert_active: bool


async def latest_drift_states(store: StoreClient, tenant: str) -> list[DriftState]:
    """Return the latest comparison of every (variant, signal) of `tenant`. Raises the store client's `StoreError` subclasses."""
    page = await store.query_all_pages(_LATEST_SQL, {"tenant": tenant})
    return [DriftState.model_validate(dict(zip(page.columns, row))) for row in page.rows]


async def drift_history(store: StoreClient, tenant: str, signal: str) -> list[DriftPoint]:
    """Return the latest `MAX_HISTORY_POINTS` points of `signal` for `tenant`, oldest first. Raises the store client's `StoreError` subclasses."""
    parameters = {"tenant": tenant, "signal": signal, "max_points": MAX_HISTORY_POINTS}
    page = await store.query_all_pages(_HISTORY_SQL, parameters, page_size=MAX_PAGE_SIZE)
    return [DriftPoint.model_validate(dict(zip(page.columns, row))) for row in page.rows]


class DriftStates(BaseModel):
    """The body of `GET /v1/reports/drift`."""

    states: list[DriftState]


class DriftHistory(BaseModel):
    """The body of `GET /v1/reports/drift/history`."""

    signal: str
    points: list[DriftPoint]
