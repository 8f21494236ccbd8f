"""The drift service's Prometheus gauges, served over HTTP at `/metrics`.

    sluice_drift_statistic{tenant,variant,signal,statistic}  gauge: the value of each statistic in the latest compared window
    sluice_drift_alert_active{tenant,variant,signal}         gauge: 1 while an alert is active, else 0

Both carry a `tenant` label because each tenant's traffic is compared with
its own reference. The registry is the service's own, so several services in
one process (as in tests) do not collide in prometheus-client's global
registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from services.drift.detector import DriftReport

METRIC_PREFIX = "sluice_drift"


class DriftMetrics:
    """The statistic and alert gauges, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.statistic = Gauge(
            f"{METRIC_PREFIX}_statistic",
            "Value of a drift statistic in the latest compared window of a signal of a model variant.",
            ["tenant", "variant", "signal", "statistic"],
            registry=self.registry,
        )
        self.alert_active = Gauge(
            f"{METRIC_PREFIX}_alert_active",
            "1 while a drift alert is active for a signal of a model variant, else 0.",
            ["tenant", "variant", "signal"],
            registry=self.registry,
        )

    def record(self, tenant: str, report: DriftReport, firing: dict[tuple[str, str], bool]) -> None:
        """Set the gauges from one tenant's evaluation. `firing` maps each compared (variant, signal) to its alert state."""
        for result in report.results:
            for statistic in result.statistics:
                self.statistic.labels(tenant, result.variant, str(result.signal), statistic.name).set(statistic.value)
        for (variant, signal), active in firing.items():
            self.alert_active.labels(tenant, variant, signal).set(1 if active else 0)
