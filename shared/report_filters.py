"""The filters that every canned analytics report takes: tenant, time range, variant and time bucket.

`ReportFilters` also builds the SQL conditions and parameters that apply the
filters to `request_signals`. The conditions are fixed text with `{name:Type}`
placeholders, so every value is bound on the server.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, field_validator

# Bucket names and their length in seconds.
BUCKET_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "1d": 86400}
# An hour gives 24 rows per model and variant for a day's range, which a
# terminal table still shows whole, and still separates a deploy's before and after.
DEFAULT_BUCKET = "1h"
# A day of minutes or two months of hours. More buckets make tables and
# charts that no one can read, and a result that takes many store pages.
MAX_BUCKETS = 1440

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class ReportFilterError(ValueError):
    """A filter value is invalid; `field` names the filter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ReportFilters(BaseModel):
    """The rows a report reads: one tenant's, with `since` <= ts < `until`, optionally of one variant.

    `None` leaves that end of the range open. A datetime without an offset
    is read as UTC. The reports call `check_filters` before they query.
    """

    tenant: str
    since: datetime | None = None
    until: datetime | None = None
    variant: str | None = None
    bucket: str = DEFAULT_BUCKET

    @field_validator("since", "until")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    @property
    def bucket_s(self) -> int:
        return BUCKET_SECONDS[self.bucket]

    def time_condition(self) -> str:
        """Return ` AND ...` conditions on `ts` for the range, or '' for an open range."""
        condition = ""
        if self.since is not None:
            condition += " AND ts >= {since:DateTime64(6, 'UTC')}"
        if self.until is not None:
            condition += " AND ts < {until:DateTime64(6, 'UTC')}"
        return condition

    def parameters(self) -> dict[str, Any]:
        """Return the values of every placeholder that the conditions and the bucket use."""
        parameters: dict[str, Any] = {"tenant": self.tenant, "bucket_s": self.bucket_s, "variant": self.variant or ""}
        if self.since is not None:
            parameters["since"] = self.since.strftime(_TIMESTAMP_FORMAT)
        if self.until is not None:
            parameters["until"] = self.until.strftime(_TIMESTAMP_FORMAT)
        return parameters

    def bucket_seconds_in_range(self, bucket_start: datetime) -> float:
        """Return the seconds of the bucket that lie inside [since, until), so rates at the range's edges are not diluted."""
        start = bucket_start if self.since is None else max(bucket_start, self.since)
        bucket_end = bucket_start + timedelta(seconds=self.bucket_s)
        end = bucket_end if self.until is None else min(bucket_end, self.until)
        return max((end - start).total_seconds(), 0.0)


def check_filters(filters: ReportFilters) -> None:
    """Raise `ReportFilterError` for an unknown bucket, an empty variant, a reversed range, or a range of more than MAX_BUCKETS buckets."""
    if filters.bucket not in BUCKET_SECONDS:
        known = ", ".join(BUCKET_SECONDS)
        raise ReportFilterError("bucket", f"unknown bucket {filters.bucket!r}; use one of {known}")
    if filters.variant == "":
        raise ReportFilterError("variant", "variant is empty; leave it out to report every variant")
    if filters.since is None or filters.until is None:
        return
    if filters.since >= filters.until:
        raise ReportFilterError(
            "since", f"since ({filters.since.isoformat()}) must be before until ({filters.until.isoformat()})"
        )
    buckets = (filters.until - filters.since).total_seconds() / filters.bucket_s
    if buckets > MAX_BUCKETS:
        raise ReportFilterError(
            "bucket",
            f"the range spans {buckets:,.0f} buckets of {filters.bucket}, more than {MAX_BUCKETS:,}; "
            "choose a larger bucket or a shorter range",
        )
