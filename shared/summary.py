"""The traffic summary that `sluice demo` measures and `sluice report` reads from ClickHouse."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator


# Sub-microsecond digits are noise from interpolation, not measurement.
_MS_DECIMALS = 3


class LatencyPercentiles(BaseModel):
    """Milliseconds, rounded to the microsecond; `None` when no request contributed a sample."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    samples: int = 0

    @field_validator("p50_ms", "p95_ms")
    @classmethod
    def _round(cls, value: float | None) -> float | None:
        return None if value is None else round(value, _MS_DECIMALS)


class TrafficSummary(BaseModel):
    """Request outcomes and latency over a set of requests.

    TTFT runs from acceptance to the first token. Total latency runs from
    acceptance to the end of the request: delivery of the output, or the
    screening verdict for a prompt blocked at input. `sluice report` takes
    both from event times (request.accepted, generation.first_token,
    output.delivered, request.screened); `sluice demo` measures them at the
    client. Percentiles interpolate linearly between samples, as
    numpy.percentile does by default. `blocked_by` counts blocked requests
    per scanner, prompt and output screening together; `failed_by` counts
    failed requests per error code. In a report each
    request counts in exactly one of completed, blocked, failed, expired,
    cancelled and in_progress. TTFT samples include cancelled requests that
    had a first token.
    """

    requests: int = 0
    completed: int = 0
    blocked_by: dict[str, int] = Field(default_factory=dict)
    failed: int = 0
    failed_by: dict[str, int] = Field(default_factory=dict)
    expired: int = 0
    cancelled: int = 0
    in_progress: int = 0
    ttft: LatencyPercentiles = Field(default_factory=LatencyPercentiles)
    total_latency: LatencyPercentiles = Field(default_factory=LatencyPercentiles)

    @property
    def blocked(self) -> int:
        return sum(self.blocked_by.values())
