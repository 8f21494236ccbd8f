"""The safety service's Prometheus metrics, in a registry of their own.

    sluice_safety_screening_duration_seconds    histogram: one request's screening, sanitizing included
    sluice_safety_verdicts_total                counter by verdict, scanner: screened requests

`verdict` is `passed`, `blocked` or `failed` (a scanner raised), and
`scanner` is the scanner that blocked the request, or `none`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.events import Envelope, EventType
from shared.metrics import DURATION_BUCKETS_S

METRIC_PREFIX = "sluice_safety"
# The scanner label of a request that no scanner blocked.
NO_SCANNER = "none"
FAILED_VERDICT = "failed"


class SafetyMetrics:
    """The screening histogram and verdict counter of one safety service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.screening_duration = Histogram(
            f"{METRIC_PREFIX}_screening_duration_seconds",
            "Duration of screening one request with the input scanner chain, sanitizing included.",
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        # prometheus-client appends `_total` to counter names.
        self.verdicts = Counter(
            f"{METRIC_PREFIX}_verdicts",
            "Screened requests by verdict (passed, blocked, failed) and the scanner that blocked them (none when none did).",
            ["verdict", "scanner"],
            registry=self.registry,
        )

    def record(self, follow_up: Envelope, duration_s: float) -> None:
        """Count the verdict that `follow_up` carries and observe `duration_s`. An expired request counts in neither."""
        if follow_up.type is EventType.SCREENED:
            scanner = follow_up.payload.get("blocked_by") or NO_SCANNER
            self.verdicts.labels(verdict=follow_up.payload["verdict"], scanner=scanner).inc()
        elif follow_up.type is EventType.FAILED:
            self.verdicts.labels(verdict=FAILED_VERDICT, scanner=NO_SCANNER).inc()
        else:
            return
        self.screening_duration.observe(duration_s)
