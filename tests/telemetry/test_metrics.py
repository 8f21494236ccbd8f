"""The telemetry service serves its writer metrics at `/metrics`, and the lag gauge follows the consumer's backlog.

Each test runs a nats-server of its own, so the consumer's backlog and the
counters contain only the events that the test published.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import clickhouse_connect
import httpx
import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client import Gauge
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from services.telemetry.app import make_app
from services.telemetry.metrics import ConsumerLagPoller, TelemetryMetrics
from services.telemetry.migrations import load_migrations
from services.telemetry.settings import TelemetrySettings
from shared.bus import consumer_config
from shared.embedded.infrastructure import free_port
from shared.settings import Settings
from shared.subjects import ConsumerSpec
from tests.ingress import event_builders as events
from tests.support.jetstream import jetstream_client, private_nats, publish_envelope

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

HOST = "127.0.0.1"
# Several fetch timeouts, lag refreshes and retry delays of the tuning below,
# also on a loaded two-core machine. The checks poll, so a pass returns sooner.
WAIT_S = 30.0
POLL_INTERVAL_S = 0.1


@pytest.fixture
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_nats(tmp_path_factory, "telemetry-metrics") as url:
        yield url


@pytest.fixture
async def jetstream(nats_url: str) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(nats_url) as context:
        yield context


@pytest.fixture
async def metrics_url(nats_url: str, clickhouse_dsn: str, tmp_path: Path) -> AsyncIterator[str]:
    """Run the telemetry service in this process with its metrics endpoint on a free port; yield the endpoint's URL."""
    port = free_port(HOST)
    settings = Settings(nats_url=nats_url, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path, host=HOST)
    tuning = TelemetrySettings(
        fetch_timeout_s=0.1,
        retry_delay_initial_s=0.1,
        retry_delay_max_s=0.5,
        metrics_port=port,
        lag_refresh_interval_s=0.1,
    )
    async with make_app(settings, tuning):
        yield f"http://{HOST}:{port}/metrics"


async def _scrape(url: str) -> dict[str, float]:
    """Return the endpoint's samples without labels by name, such as `sluice_telemetry_batch_size_events_sum`."""
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    response.raise_for_status()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
    return samples


async def _scrape_until(url: str, check: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """Scrape until `check` returns True and return those samples, or the last scrape after `WAIT_S`."""
    deadline = time.monotonic() + WAIT_S
    samples = await _scrape(url)
    while not check(samples) and time.monotonic() < deadline:
        await asyncio.sleep(POLL_INTERVAL_S)
        samples = await _scrape(url)
    return samples


async def _publish_requests(jetstream: JetStreamContext, tenant: str, count: int) -> int:
    """Publish the seven events of `count` completed requests; return how many events were published."""
    published = 0
    for _ in range(count):
        for envelope in events.completed_sequence(events.accepted(tenant=tenant)):
            await publish_envelope(jetstream, envelope)
            published += 1
    return published


def _written(expected: int) -> Callable[[dict[str, float]], bool]:
    return lambda samples: samples.get("sluice_telemetry_events_written_total") == expected


async def test_metrics_after_events_written(metrics_url: str, jetstream: JetStreamContext) -> None:
    published = await _publish_requests(jetstream, "metrics", 3)

    samples = await _scrape_until(metrics_url, _written(published))
    # The lag gauge may still hold the backlog of a refresh before the batch was fetched.
    samples = await _scrape_until(metrics_url, lambda now: now["sluice_telemetry_consumer_lag_events"] == 0)

    assert samples["sluice_telemetry_events_written_total"] == published
    assert samples["sluice_telemetry_batch_size_events_sum"] == published
    assert samples["sluice_telemetry_batch_size_events_count"] >= 1
    batches = samples["sluice_telemetry_batch_size_events_count"]
    assert samples["sluice_telemetry_insert_duration_seconds_count"] == batches
    assert samples["sluice_telemetry_insert_duration_seconds_sum"] > 0
    assert samples["sluice_telemetry_insert_retries_total"] == 0
    assert samples["sluice_telemetry_consumer_lag_events"] == 0


async def test_metrics_count_failed_inserts(
    metrics_url: str, jetstream: JetStreamContext, clickhouse_dsn: str
) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    try:
        client.command("DROP TABLE events")
        published = await _publish_requests(jetstream, "metrics-retries", 1)
        failing = await _scrape_until(metrics_url, lambda now: now["sluice_telemetry_insert_retries_total"] >= 1)
        for migration in load_migrations():
            for statement in migration.statements:
                client.command(statement)
        recovered = await _scrape_until(metrics_url, _written(published))
    finally:
        client.close()

    assert failing["sluice_telemetry_insert_retries_total"] >= 1
    assert failing["sluice_telemetry_events_written_total"] == 0
    assert recovered["sluice_telemetry_events_written_total"] == published
    # The failed attempts and at least one that succeeded.
    attempts = recovered["sluice_telemetry_insert_duration_seconds_count"]
    assert attempts > recovered["sluice_telemetry_insert_retries_total"]


async def test_metrics_port_in_use_fails_start(nats_url: str, clickhouse_dsn: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(nats_url=nats_url, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path, host=HOST)
        app = make_app(settings, TelemetrySettings(metrics_port=port))

        with pytest.raises(OSError, match="SLUICE_TELEMETRY_METRICS_PORT"):
            async with app:
                pass


async def test_lag_poller_reads_num_pending(jetstream: JetStreamContext) -> None:
    name = f"LAG_{uuid.uuid4().hex[:8].upper()}"
    spec = ConsumerSpec(stream=name, durable="telemetry", filter_subject=f"test.{name}.>")
    await jetstream.add_stream(name=name, subjects=[spec.filter_subject])
    await jetstream.add_consumer(name, consumer_config(spec))
    for index in range(5):
        await jetstream.publish(f"test.{name}.event", f"event {index}".encode())
    gauge = TelemetryMetrics().consumer_lag
    poller = ConsumerLagPoller(spec, gauge, interval_s=60.0)

    await poller.refresh(jetstream)

    assert _gauge_value(gauge) == 5


async def test_lag_poller_keeps_value_when_consumer_missing(jetstream: JetStreamContext) -> None:
    spec = ConsumerSpec(stream="MISSING", durable="telemetry", filter_subject="test.missing.>")
    gauge = TelemetryMetrics().consumer_lag
    gauge.set(7)
    poller = ConsumerLagPoller(spec, gauge, interval_s=60.0)

    with capture_logs() as logs:
        await poller.refresh(jetstream)
        await poller.refresh(jetstream)

    assert _gauge_value(gauge) == 7
    assert [entry["event"] for entry in logs] == ["consumer_lag_refresh_failed"]


def _gauge_value(gauge: Gauge) -> float:
    [metric] = gauge.collect()
    [sample] = metric.samples
    return sample.value
