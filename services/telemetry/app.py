"""Wiring of the telemetry service: the EVENTS pull loop, the store API subscriber and the store's lifetime."""

from __future__ import annotations

import asyncio

import structlog
from faststream import FastStream
from faststream.message import StreamMessage
from faststream.nats import NatsBroker

from services.telemetry.consumer import EventBatchWriter, RetryDelay
from services.telemetry.metrics import ConsumerLagPoller, TelemetryMetrics
from services.telemetry.migrations import load_migrations
from services.telemetry.puller import BatchPuller
from services.telemetry.query_api import REPLY_HEADROOM_BYTES, StoreQueryHandler
from services.telemetry.settings import TelemetrySettings
from services.telemetry.store import EventStore
from services.telemetry.text_storage import TextStorage
from shared.bus import make_broker
from shared.config_store import POLICY_KEY, WatchedConfig, policy_parser
from shared.metrics import metrics_endpoints
from shared.scanning.pii import PiiDetector
from shared.service import build_app
from shared.settings import Settings
from shared.store_client import StoreUnavailable
from shared.subjects import STORE_QUERY_SUBJECT, STORE_QUEUE_GROUP, TELEMETRY_CONSUMER

log = structlog.get_logger(__name__)

SERVICE_NAME = "telemetry"


class TelemetryService:
    """Opens the store and starts the EVENTS pull loop at start, replies to store API requests, and stops in reverse.

    The store API handler must not run before `start` returned; FastStream
    guarantees it by starting subscribers after the startup hooks.
    """

    def __init__(self, settings: Settings, tuning: TelemetrySettings, broker: NatsBroker) -> None:
        self._dsn = settings.resolved_clickhouse_dsn
        # The policy's storage modes, watched like every other service's policy.
        detector = PiiDetector()
        self._text_storage = WatchedConfig(
            POLICY_KEY, settings.policy_file, policy_parser(lambda policy: TextStorage(policy, detector))
        )
        self._tuning = tuning
        self._broker = broker
        self._metrics = TelemetryMetrics()
        self._metrics_endpoints = metrics_endpoints(
            self._metrics.registry, settings.host, tuning.metrics_port, "SLUICE_TELEMETRY_METRICS_PORT"
        )
        self._lag_poller = ConsumerLagPoller(
            TELEMETRY_CONSUMER, self._metrics.consumer_lag, tuning.lag_refresh_interval_s
        )
        self._store: EventStore | None = None
        self._queries: StoreQueryHandler | None = None
        self._puller: BatchPuller | None = None

    async def start(self) -> None:
        """Open ClickHouse, apply pending migrations, build the handlers and start pulling events.

        Raises `StoreUnavailable` when ClickHouse cannot be opened or migrated,
        and `OSError` when the metrics port cannot be bound.
        """
        connection = await self._broker.connect()
        # Before the store opens, so that a port in use stops the service before it opens anything.
        for endpoint in self._metrics_endpoints:
            await endpoint.start(connection.jetstream())
        store = await asyncio.to_thread(
            EventStore.open, self._dsn, query_max_execution_time_s=self._tuning.query_max_execution_time_s
        )
        self._store = store
        try:
            applied = await store.migrate(load_migrations())
        except StoreUnavailable as error:
            log.error("store_migration_failed", error=str(error))
            await self.close_store()
            raise
        log.info("store_opened", migrations_applied=applied)
        # Before the first batch, so no event is stored before the policy is known.
        await self._text_storage.start(connection.jetstream())
        self._queries = StoreQueryHandler(
            store,
            connection.max_payload - REPLY_HEADROOM_BYTES,
            analytics_max_result_rows=self._tuning.analytics_max_result_rows,
        )
        self._puller = self._build_puller(store)
        await self._puller.start(connection)
        self._lag_poller.start(connection.jetstream())

    async def stop_pulling(self) -> None:
        """Stop the pull loop while the connection is still up, so the batch in hand is acked or nacked.

        The lag poller and the metrics endpoint stop after it.
        """
        if self._puller is not None:
            await self._puller.stop()
            self._puller = None
        await self._text_storage.stop()
        await self._lag_poller.stop()
        for endpoint in self._metrics_endpoints:
            await endpoint.stop()

    async def close_store(self) -> None:
        """Close the store after the broker stopped; waits for a running ClickHouse call."""
        if self._store is not None:
            self._store.close()
            self._store = None
            log.info("store_closed")

    async def reply(self, data: bytes) -> bytes:
        if self._queries is None:
            raise RuntimeError("the store API received a request before the telemetry service started")
        return await self._queries.reply(data)

    def _build_puller(self, store: EventStore) -> BatchPuller:
        retry_delay = RetryDelay(self._tuning.retry_delay_initial_s, self._tuning.retry_delay_max_s)
        writer = EventBatchWriter(
            store, retry_delay, lambda: self._text_storage.current, self._metrics, embed_prompts=self._tuning.embed_prompts
        )
        return BatchPuller(
            TELEMETRY_CONSUMER,
            writer.store_batch,
            batch_size=self._tuning.batch_size,
            batch_max_bytes=self._tuning.batch_max_bytes,
            fetch_timeout_s=self._tuning.fetch_timeout_s,
        )


def make_app(settings: Settings, tuning: TelemetrySettings | None = None) -> FastStream:
    """Build the telemetry app; `tuning` defaults to `TelemetrySettings()` read from the environment."""
    tuning = tuning or TelemetrySettings()
    broker = make_broker(settings.resolved_nats_url)
    service = TelemetryService(settings, tuning, broker)

    @broker.subscriber(STORE_QUERY_SUBJECT, queue=STORE_QUEUE_GROUP, decoder=_raw_body)
    async def answer_store_query(body: bytes) -> bytes:
        return await service.reply(body)

    app = build_app(SERVICE_NAME, broker, settings, on_startup=service.start, on_shutdown=service.close_store)
    # `on_shutdown` hooks run before the broker closes the connection.
    app.on_shutdown(service.stop_pulling)
    return app


def _raw_body(message: StreamMessage) -> object:
    # The handler parses the body itself, so a malformed request gets an
    # invalid_query reply instead of failing in FastStream's JSON decoding.
    return message.body
