"""The assignment service's Prometheus metrics, in a registry of their own.

    sluice_assignment_assignments_total    counter by experiment, variant: requests assigned and published

`experiment` is `none` for a request that no experiment matched (a variant
chosen by the OpenAI `model` name, or the default variant).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

METRIC_PREFIX = "sluice_assignment"
# The experiment label of a request assigned outside any experiment.
NO_EXPERIMENT = "none"


class AssignmentMetrics:
    """The assignment counter of one assignment service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus-client appends `_total` to counter names.
        self.assignments = Counter(
            f"{METRIC_PREFIX}_assignments",
            "Requests assigned to a variant and published as request.assigned, by experiment (none outside one) and variant.",
            ["experiment", "variant"],
            registry=self.registry,
        )

    def record(self, experiment_key: str | None, variant_key: str) -> None:
        self.assignments.labels(experiment=experiment_key or NO_EXPERIMENT, variant=variant_key).inc()
