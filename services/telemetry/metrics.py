"""The telemetry writer's own Prometheus metrics, served over HTTP at `/metrics`.

Each `TelemetryMetrics` has a registry of its own, so several services in one
process (as in tests) do not collide in prometheus-client's global registry.

    sluice_telemetry_events_written_total     counter: events inserted; events/s is its rate()
    sluice_telemetry_batch_size_events        histogram: messages per batch handed to the writer
    sluice_telemetry_insert_duration_seconds  histogram: each insert attempt, failed ones included
    sluice_telemetry_insert_retries_total     counter: failed inserts, each batch left for redelivery
    sluice_telemetry_consumer_lag_events      gauge: messages the consumer has not delivered yet
    sluice_telemetry_assignment_lookups_total counter: queries for assignments the writer does not remember
    sluice_telemetry_assignments_not_found_total  counter: signal rows whose assignment the lookup did not find
"""

from __future__ import annotations

import asyncio

import structlog
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.consuming import BUS_ERRORS
from shared.subjects import ConsumerSpec

log = structlog.get_logger(__name__)

METRIC_PREFIX = "sluice_telemetry"

# From a single event up to the largest batch the consumer can hand out,
# `TELEMETRY_CONSUMER.max_ack_pending` (20,000). The default batch_size is 10,000.
BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000)
# An insert of 10,000 events into chDB took about 0.05 s of CPU (see
# `_INSERT_SETTINGS` in store.py). The upper buckets catch a slow or
# restarting ClickHouse.
INSERT_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TelemetryMetrics:
    """The writer's counters, histograms and lag gauge, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # prometheus-client appends `_total` to counter names.
        self.events_written = Counter(
            f"{METRIC_PREFIX}_events_written",
            "Events inserted into ClickHouse; copies of stored events are not counted.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            f"{METRIC_PREFIX}_batch_size_events",
            "Messages per batch handed to the writer, invalid ones included.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.insert_duration = Histogram(
            f"{METRIC_PREFIX}_insert_duration_seconds",
            "Duration of each insert attempt, with the lookups of redelivered event ids and of assignments not "
            "remembered; failed attempts included.",
            buckets=INSERT_DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.insert_retries = Counter(
            f"{METRIC_PREFIX}_insert_retries",
            "Failed inserts; JetStream redelivers each failed batch after the retry delay.",
            registry=self.registry,
        )
        self.assignment_lookups = Counter(
            f"{METRIC_PREFIX}_assignment_lookups",
            "Queries of request_signals for the assignments of requests whose request.assigned this process "
            "does not remember; at most one per batch.",
            registry=self.registry,
        )
        self.assignments_not_found = Counter(
            f"{METRIC_PREFIX}_assignments_not_found",
            "Signal rows that follow assignment whose request's assignment neither this process nor "
            "request_signals had; such rows are stored without it, and a retried batch counts again.",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            f"{METRIC_PREFIX}_consumer_lag_events",
            "Messages of the EVENTS stream that the telemetry consumer has not delivered yet (num_pending).",
            registry=self.registry,
        )


class ConsumerLagPoller:
    """Sets the lag gauge to the consumer's `num_pending` every `interval_s` seconds until stopped.

    While the consumer info request fails, the gauge keeps its last value, and
    one warning is logged per outage.
    """

    def __init__(self, spec: ConsumerSpec, gauge: Gauge, interval_s: float) -> None:
        self._spec = spec
        self._gauge = gauge
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._failed_refreshes = 0

    def start(self, jetstream: JetStreamContext) -> None:
        self._task = asyncio.create_task(self._run(jetstream), name=f"lag-{self._spec.durable}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def refresh(self, jetstream: JetStreamContext) -> None:
        """Read the consumer's state once and set the gauge. A failed request is logged, not raised."""
        try:
            info = await jetstream.consumer_info(self._spec.stream, self._spec.durable)
        except BUS_ERRORS as error:
            self._log_failure(error)
            return
        self._gauge.set(info.num_pending or 0)
        if self._failed_refreshes:
            log.info("consumer_lag_refresh_recovered", consumer=self._spec.durable, failed=self._failed_refreshes)
            self._failed_refreshes = 0

    async def _run(self, jetstream: JetStreamContext) -> None:
        while True:
            await self.refresh(jetstream)
            await asyncio.sleep(self._interval_s)

    def _log_failure(self, error: Exception) -> None:
        if self._failed_refreshes == 0:
            log.warning(
                "consumer_lag_refresh_failed",
                consumer=self._spec.durable,
                error=repr(error),
                retry_in_s=self._interval_s,
            )
        self._failed_refreshes += 1
