"""Wiring of the drift service: the store client, the result publisher, the metrics endpoint and the schedule."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker

from services.drift.config import DriftSettings
from services.drift.metrics import DriftMetrics
from services.drift.publishing import ResultPublisher
from services.drift.runner import DriftRunner
from services.drift.source import SignalSource
from shared.bus import EventPublisher, make_broker
from shared.metrics import metrics_endpoints
from shared.service import build_app
from shared.settings import Settings
from shared.store_client import StoreClient

log = structlog.get_logger(__name__)

SERVICE_NAME = "drift"


class DriftService:
    """Starts the evaluation schedule once connected, and stops it while the connection is still up."""

    def __init__(self, settings: Settings, tuning: DriftSettings, broker: NatsBroker) -> None:
        self._tuning = tuning
        self._broker = broker
        self.metrics = DriftMetrics()
        self._metrics_endpoints = metrics_endpoints(
            self.metrics.registry, settings.host, tuning.metrics_port, "SLUICE_DRIFT_METRICS_PORT"
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve the metrics and start the schedule. Raises `OSError` when the metrics port cannot be bound."""
        connection = await self._broker.connect()
        for endpoint in self._metrics_endpoints:
            await endpoint.start(connection.jetstream())
        source = SignalSource(
            StoreClient(connection),
            max_samples_per_read=self._tuning.max_samples_per_read,
            embedding_samples_per_window=self._tuning.embedding_samples_per_window,
        )
        publisher = ResultPublisher(EventPublisher(self._broker), connection)
        runner = DriftRunner(source, publisher, self.metrics, self._tuning)
        self._task = asyncio.create_task(runner.run(), name="drift-schedule")
        self._task.add_done_callback(_log_crash)
        log.info(
            "drift_schedule_started",
            schedule_interval_s=self._tuning.schedule_interval_s,
            reference_min_samples=self._tuning.reference_min_samples,
            window_min_samples=self._tuning.window_min_samples,
        )

    async def stop(self) -> None:
        """Cancel the schedule, waiting for an evaluation in progress to stop, then stop serving metrics."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            log.info("drift_schedule_stopped")
        for endpoint in self._metrics_endpoints:
            await endpoint.stop()


def _log_crash(task: asyncio.Task[None]) -> None:
    # `run` returns only by cancellation, so any exception here stopped the schedule.
    if not task.cancelled() and task.exception() is not None:
        log.error("drift_schedule_crashed", exc_info=task.exception())


def make_app(settings: Settings, tuning: DriftSettings | None = None) -> FastStream:
    """Build the drift app; `tuning` defaults to `DriftSettings()` read from the environment."""
    tuning = tuning or DriftSettings()
    broker = make_broker(settings.resolved_nats_url)
    service = DriftService(settings, tuning, broker)
    app = build_app(SERVICE_NAME, broker, settings, on_startup=service.start)
    # `on_shutdown` hooks run before the broker closes the connection.
    app.on_shutdown(service.stop)
    return app
