"""The assignment service's Prometheus metrics, in a registry of their own.

    sluice_assignment_assignments_total    counter by experiment, variant: requests assigned and published
    sluice_assignment_exposures_total      counter by experiment, source: experiment.exposed events published
    sluice_assignment_redis_errors_total   counter by operation: Redis calls that failed, after which the
                                           service assigned by hash or published the exposure anyway

`experiment` is `none` for a request that no experiment matched (a variant
chosen by the OpenAI `model` name, or the default variant). `source` is how
the variant was chosen: hash, sticky or forced. An exposure that a
redelivered message publishes again counts again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

METRIC_PREFIX = "sluice_assignment"
# The experiment label of a request assigned outside any experiment.
NO_EXPERIMENT = "none"


class AssignmentMetrics:
    """The counters of one assignment service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus-client appends `_total` to counter names.
        self.assignments = Counter(
            f"{METRIC_PREFIX}_assignments",
            "Requests assigned to a variant and published as request.assigned, by experiment (none outside one) and variant.",
            ["experiment", "variant"],
            registry=self.registry,
        )
        self.exposures = Counter(
            f"{METRIC_PREFIX}_exposures",
            "experiment.exposed events published, by experiment and how the variant was chosen (hash, sticky, forced).",
            ["experiment", "source"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            f"{METRIC_PREFIX}_redis_errors",
            "Failed Redis calls (sticky_load, sticky_save, exposure_check, exposure_mark); "
            "each fell back to the hash or to publishing the exposure.",
            ["operation"],
            registry=self.registry,
        )

    def record(self, experiment_key: str | None, variant_key: str) -> None:
        self.assignments.labels(experiment=experiment_key or NO_EXPERIMENT, variant=variant_key).inc()
