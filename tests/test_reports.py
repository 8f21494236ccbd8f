"""The summary report classifies requests and measures latency from stored events."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import nats
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from shared.bus import EventPublisher, make_broker
from shared.events import (
    CancelledPayload,
    AcceptedPayload,
    ChatMessage,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    ExpiredPayload,
    FailedPayload,
    FirstTokenPayload,
    ModeratedPayload,
    RequestSpec,
    ScreenedPayload,
    Usage,
    Verdict,
    derive_event_id,
)
from shared.reports import summary_report
from shared.settings import Settings
from shared.store_client import StoreClient

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

STORE_WAIT_S = 10.0
REQUEST = RequestSpec(messages=[ChatMessage(role="user", content="hello")])


@pytest.fixture
async def nats_client(telemetry_app: Settings) -> AsyncIterator[NatsClient]:
    client = await nats.connect(telemetry_app.resolved_nats_url)
    yield client
    await client.close()


@pytest.fixture
async def broker(telemetry_app: Settings) -> AsyncIterator[NatsBroker]:
    broker = make_broker(telemetry_app.resolved_nats_url)
    await broker.connect()
    yield broker
    await broker.stop()


class Timeline:
    """Builds the events of one tenant's requests, each at a given millisecond after `start`."""

    def __init__(self, tenant: str, start: datetime) -> None:
        self.tenant = tenant
        self.start = start
        self.events: list[Envelope] = []

    def add(self, request_id: str, event_type: EventType, payload: BaseModel, at_ms: float) -> None:
        self.events.append(
            Envelope(
                event_id=derive_event_id(self.tenant, request_id, event_type),
                type=event_type,
                request_id=request_id,
                tenant=self.tenant,
                ts=self.start + timedelta(milliseconds=at_ms),
                payload=payload.model_dump(mode="json"),
            )
        )

    def accepted(self, request_id: str, at_ms: float = 0) -> None:
        self.add(request_id, EventType.ACCEPTED, AcceptedPayload(request=REQUEST, prompt_chars=5), at_ms)

    def screened(self, request_id: str, at_ms: float, blocked_by: str | None = None) -> None:
        verdict = Verdict.BLOCKED if blocked_by else Verdict.PASSED
        payload = ScreenedPayload(request=REQUEST, verdict=verdict, scanners=[], blocked_by=blocked_by)
        self.add(request_id, EventType.SCREENED, payload, at_ms)

    def generated(self, request_id: str, first_token_ms: float, completed_ms: float) -> None:
        first_token = FirstTokenPayload(variant_key="a", backend="local", attempt=0, backend_ttft_ms=5)
        self.add(request_id, EventType.FIRST_TOKEN, first_token, first_token_ms)
        completed = CompletedPayload(
            variant_key="a", backend="local", attempt=0, text="hi", finish_reason="stop", usage=Usage(), generation_ms=1
        )
        self.add(request_id, EventType.COMPLETED, completed, completed_ms)

    def delivered(self, request_id: str, at_ms: float, blocked_by: str | None = None) -> None:
        verdict = Verdict.BLOCKED if blocked_by else Verdict.PASSED
        moderated = ModeratedPayload(verdict=verdict, scanners=[], blocked_by=blocked_by)
        self.add(request_id, EventType.MODERATED, moderated, at_ms - 1)
        finish_reason = "moderation" if blocked_by else "stop"
        delivered = DeliveredPayload(text="hi", finish_reason=finish_reason, chunks=1, usage=Usage())
        self.add(request_id, EventType.DELIVERED, delivered, at_ms)

    def completed_request(
        self, request_id: str, first_token_ms: float, delivered_ms: float, accepted_ms: float = 0
    ) -> None:
        self.accepted(request_id, accepted_ms)
        self.screened(request_id, accepted_ms + 10)
        self.generated(request_id, accepted_ms + first_token_ms, accepted_ms + delivered_ms - 50)
        self.delivered(request_id, accepted_ms + delivered_ms)


def _mixed_traffic(tenant: str, start: datetime) -> Timeline:
    timeline = Timeline(tenant, start)
    timeline.completed_request("done-1", first_token_ms=100, delivered_ms=500)
    timeline.completed_request("done-2", first_token_ms=200, delivered_ms=1000)
    timeline.completed_request("done-3", first_token_ms=300, delivered_ms=1500)
    timeline.accepted("prompt-blocked")
    timeline.screened("prompt-blocked", 50, blocked_by="BanSubstrings")
    timeline.accepted("output-blocked")
    timeline.screened("output-blocked", 10)
    timeline.generated("output-blocked", 150, 600)
    timeline.delivered("output-blocked", 700, blocked_by="Regex")
    timeline.accepted("failed")
    timeline.screened("failed", 10)
    failure = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    timeline.add("failed", EventType.FAILED, failure, 90)
    timeline.accepted("expired")
    timeline.add("expired", EventType.EXPIRED, ExpiredPayload(stage="safety", deadline=start), 20)
    timeline.accepted("cancelled")
    timeline.screened("cancelled", 10)
    timeline.add("cancelled", EventType.CANCELLED, CancelledPayload(stage="ingress", reason="client_request"), 30)
    timeline.accepted("running")
    timeline.screened("running", 10)
    return timeline


async def _publish_and_wait(broker: NatsBroker, store: StoreClient, timelines: list[Timeline]) -> None:
    publisher = EventPublisher(broker)
    for timeline in timelines:
        for envelope in timeline.events:
            await publisher.publish(envelope)
    for timeline in timelines:
        await _wait_stored(store, timeline.tenant, len(timeline.events))


async def _wait_stored(store: StoreClient, tenant: str, expected: int) -> None:
    deadline = time.monotonic() + STORE_WAIT_S
    sql = "SELECT count() FROM events FINAL WHERE tenant = {tenant:String}"
    while (await store.query(sql, {"tenant": tenant})).rows != [[expected]]:
        assert time.monotonic() < deadline, f"telemetry did not store {expected} events of {tenant} in {STORE_WAIT_S} s"
        await asyncio.sleep(0.05)


def _tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def _start() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)


async def test_summary_counts_each_outcome(broker: NatsBroker, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)
    traffic = _mixed_traffic(_tenant(), _start())
    other_tenant = _mixed_traffic(_tenant(), _start())
    await _publish_and_wait(broker, store, [traffic, other_tenant])

    summary = await summary_report(store, traffic.tenant)

    assert summary.requests == 9
    assert summary.completed == 3
    assert summary.blocked_by == {"BanSubstrings": 1, "Regex": 1}
    assert summary.failed == 1
    assert summary.failed_by == {"backend_error": 1}
    assert summary.expired == 1
    assert summary.cancelled == 1
    assert summary.in_progress == 1


async def test_summary_latency_percentiles(broker: NatsBroker, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)
    traffic = _mixed_traffic(_tenant(), _start())
    await _publish_and_wait(broker, store, [traffic])

    summary = await summary_report(store, traffic.tenant)

    # TTFT samples 100, 150, 200, 300 ms; total samples 50, 500, 700, 1000, 1500 ms.
    assert summary.ttft.samples == 4
    assert summary.ttft.p50_ms == pytest.approx(175.0)
    assert summary.ttft.p95_ms == pytest.approx(285.0)
    assert summary.total_latency.samples == 5
    assert summary.total_latency.p50_ms == pytest.approx(700.0)
    assert summary.total_latency.p95_ms == pytest.approx(1400.0)


async def test_summary_window_bounds_acceptance(broker: NatsBroker, nats_client: NatsClient) -> None:
    store = StoreClient(nats_client)
    start = _start()
    timeline = Timeline(_tenant(), start)
    timeline.completed_request("before", first_token_ms=100, delivered_ms=500, accepted_ms=0)
    timeline.completed_request("inside", first_token_ms=100, delivered_ms=500, accepted_ms=60_000)
    timeline.completed_request("after", first_token_ms=100, delivered_ms=500, accepted_ms=120_000)
    await _publish_and_wait(broker, store, [timeline])

    summary = await summary_report(
        store, timeline.tenant, since=start + timedelta(seconds=30), until=start + timedelta(seconds=120)
    )

    assert summary.requests == 1
    assert summary.completed == 1


async def test_unknown_tenant_summary_empty(nats_client: NatsClient) -> None:
    summary = await summary_report(StoreClient(nats_client), _tenant())

    assert summary.requests == 0
    assert summary.blocked_by == {}
    assert summary.ttft.p50_ms is None
    assert summary.ttft.samples == 0
    assert summary.total_latency.p95_ms is None
