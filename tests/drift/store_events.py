"""Publishing test events to the real bus, and waiting for what the telemetry and drift services make of them."""

from __future__ import annotations

import asyncio
import time

import nats

from shared.events import Envelope
from shared.store_client import StoreClient
from shared.subjects import TELEMETRY_CONSUMER
from tests.support.jetstream import QUIET_S, publish_envelope, wait_until_settled

# Telemetry stores a few thousand events in seconds, and this limit leaves room on a loaded machine.
STORE_WAIT_S = 60.0
PUBLISH_CONCURRENCY = 64


async def publish_all(nats_url: str, events: list[Envelope]) -> int:
    """Publish `events` to JetStream and return the highest stream sequence."""
    client = await nats.connect(nats_url)
    try:
        jetstream = client.jetstream()
        semaphore = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def publish(envelope: Envelope) -> None:
            async with semaphore:
                await publish_envelope(jetstream, envelope)

        await asyncio.gather(*(publish(envelope) for envelope in events))
        info = await jetstream.stream_info(TELEMETRY_CONSUMER.stream)
        await wait_until_settled(jetstream, TELEMETRY_CONSUMER, info.state.last_seq, STORE_WAIT_S)
        return info.state.last_seq
    finally:
        await client.close()


async def wait_for_alerts(received: list[dict], tenant: str) -> list[dict]:
    """Wait until an alert of `tenant` arrives, or QUIET_S seconds after the first one, and return the tenant's alerts.

    Alerts travel on core NATS, so the subscription's callback may run after the publish returned.
    """
    deadline = time.monotonic() + STORE_WAIT_S
    while not any(alert["tenant"] == tenant for alert in received) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Any further alert of the same evaluation would arrive within this pause.
    await asyncio.sleep(QUIET_S)
    return [alert for alert in received if alert["tenant"] == tenant]


async def wait_for_reports(store: StoreClient, tenant: str, count: int) -> list[dict]:
    """Poll `drift_reports` until it contains `count` rows of `tenant`, and return them ordered by time, variant and signal."""
    sql = """
        SELECT variant, signal, outcome, alert_active, statistic, value,
               reference_samples, current_samples, current_start, current_end, evaluation_id
        FROM drift_reports FINAL
        WHERE tenant = {tenant:String}
        ORDER BY evaluated_at, variant, signal
    """
    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        page = await store.query_all_pages(sql, {"tenant": tenant})
        rows = [dict(zip(page.columns, row)) for row in page.rows]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)
