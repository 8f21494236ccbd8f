"""The drift runner against a real nats-server and chDB: events in, drift_reports rows, alerts and gauges out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import nats
import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from services.drift.alarms import AlertStatus
from services.drift.config import DriftSettings
from services.drift.detector import Outcome
from services.drift.metrics import DriftMetrics
from services.drift.numeric import PSI
from services.drift.publishing import ALERTS_SUBJECT, ResultPublisher
from services.drift.runner import DriftRunner
from services.drift.source import SOURCED_SIGNALS, SignalSource
from shared.bus import EventPublisher, make_broker
from shared.drift_reports import drift_history, latest_drift_states
from shared.drift_signals import Signal
from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    ChatMessage,
    DeliveredPayload,
    Envelope,
    EventType,
    ModeratedPayload,
    RequestSpec,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    new_envelope,
)
from shared.settings import Settings
from shared.store_client import StoreClient
from shared.subjects import TELEMETRY_CONSUMER
from tests.support.jetstream import QUIET_S, publish_envelope, wait_until_settled

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PHASE = timedelta(hours=1)
VARIANTS = ("a", "b")
SETTINGS = DriftSettings(reference_min_samples=300, window_min_samples=150, domain_classifier_max_rows=300)
SPEC = RequestSpec(messages=[ChatMessage(role="user", content="Speak of the sea.")])
# Telemetry stores a few thousand events in seconds, and this limit leaves room on a loaded machine.
STORE_WAIT_S = 60.0
PUBLISH_CONCURRENCY = 64


def request_events(tenant: str, variant: str, at: datetime, rng: np.random.Generator, output_median_chars: float) -> list[Envelope]:
    """Build the accepted, screened, assigned, moderated and delivered events of one request, stamped from `at` on."""
    request_id = uuid.uuid4().hex
    output_chars = max(1, int(rng.lognormal(np.log(output_median_chars), 0.5)))
    blocked = bool(rng.random() < 0.02)
    payloads = [
        (EventType.ACCEPTED, AcceptedPayload(request=SPEC, prompt_chars=int(rng.integers(20, 400)))),
        (EventType.SCREENED, ScreenedPayload(request=SPEC, verdict=Verdict.PASSED, scanners=[scan(rng.beta(0.5, 10.0))])),
        (
            EventType.ASSIGNED,
            AssignedPayload(
                request=SPEC,
                experiment_key="drift-test",
                variant=VariantSpec(key=variant, backend="embedded"),
                hash_attribute="request_id",
            ),
        ),
        (
            EventType.MODERATED,
            ModeratedPayload(
                verdict=Verdict.BLOCKED if blocked else Verdict.PASSED,
                scanners=[scan(rng.beta(0.5, 20.0))],
                refusal=bool(rng.random() < 0.05),
            ),
        ),
        (EventType.DELIVERED, DeliveredPayload(text="x" * output_chars, finish_reason="length", chunks=3, usage=Usage())),
    ]
    return [
        new_envelope(event_type, request_id=request_id, tenant=tenant, payload=payload).model_copy(
            update={"ts": at + timedelta(milliseconds=100 * step)}
        )
        for step, (event_type, payload) in enumerate(payloads)
    ]


def scan(risk_score: float) -> ScannerResult:
    return ScannerResult(scanner="Toxicity", valid=True, risk_score=float(risk_score), duration_ms=1.0)


def phase_events(tenant: str, phase: int, count: int, rng: np.random.Generator, shifted_variant: str | None) -> list[Envelope]:
    """Build `count` requests per variant, one second apart, in hour `phase` after T0; `shifted_variant` gets short outputs.

    The first request comes a second after the hour starts, because an evaluation up to the hour reads that instant too.
    """
    events = []
    for variant in VARIANTS:
        median = 60.0 if variant == shifted_variant else 600.0
        for index in range(count):
            at = T0 + phase * PHASE + timedelta(seconds=index + 1)
            events.extend(request_events(tenant, variant, at, rng, median))
    return events


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


@pytest.fixture
async def nats_client(telemetry_app: Settings) -> AsyncIterator[NatsClient]:
    client = await nats.connect(telemetry_app.resolved_nats_url)
    yield client
    await client.close()


@pytest.fixture
async def alerts(nats_client: NatsClient) -> AsyncIterator[list[dict]]:
    """Collect every message on `alerts.drift` while the test runs."""
    received: list[dict] = []

    async def collect(msg: Msg) -> None:
        received.append(json.loads(msg.data))

    subscription = await nats_client.subscribe(ALERTS_SUBJECT, cb=collect)
    yield received
    await subscription.unsubscribe()


@pytest.fixture
async def runner_parts(telemetry_app: Settings, nats_client: NatsClient) -> AsyncIterator[tuple[DriftRunner, DriftMetrics]]:
    broker = make_broker(telemetry_app.resolved_nats_url)
    await broker.connect()
    metrics = DriftMetrics()
    source = SignalSource(StoreClient(nats_client), max_samples_per_read=SETTINGS.max_samples_per_read)
    runner = DriftRunner(source, ResultPublisher(EventPublisher(broker), nats_client), metrics, SETTINGS)
    yield runner, metrics
    await broker.stop()


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


async def test_runner_reports_and_alerts_shifted_output(
    telemetry_app: Settings,
    nats_client: NatsClient,
    alerts: list[dict],
    runner_parts: tuple[DriftRunner, DriftMetrics],
) -> None:
    runner, metrics = runner_parts
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(11)
    events = phase_events(tenant, 0, SETTINGS.reference_min_samples, rng, shifted_variant=None)
    for phase in (1, 2):
        events += phase_events(tenant, phase, SETTINGS.window_min_samples, rng, shifted_variant="b")
    await publish_all(telemetry_app.resolved_nats_url, events)

    freezing = await runner.evaluate(T0 + PHASE)
    first = await runner.evaluate(T0 + 2 * PHASE)
    second = await runner.evaluate(T0 + 3 * PHASE)
    published = await wait_for_alerts(alerts, tenant)

    assert freezing[tenant].results == ()
    assert first[tenant].alerts == ()
    first_output = {result.variant: result for result in first[tenant].results if result.signal is Signal.OUTPUT_CHARS}
    assert first_output["b"].outcome is Outcome.FIRED
    assert first_output["a"].outcome is Outcome.QUIET
    assert [(alert.variant, alert.signal, alert.status) for alert in second[tenant].alerts] == [
        ("b", Signal.OUTPUT_CHARS, AlertStatus.FIRING)
    ]

    assert len(published) == 1
    assert published[0]["variant"] == "b"
    assert published[0]["signal"] == "output_chars"
    assert published[0]["status"] == "firing"
    assert published[0]["statistic"] == PSI
    assert published[0]["reference"]["sample_count"] == SETTINGS.reference_min_samples
    assert published[0]["current"]["sample_count"] == SETTINGS.window_min_samples
    assert published[0]["current"]["end"] == (T0 + 3 * PHASE).isoformat()

    for result in second[tenant].results:
        for statistic in result.statistics:
            labels = {"tenant": tenant, "variant": result.variant, "signal": str(result.signal), "statistic": statistic.name}
            assert metrics.registry.get_sample_value("sluice_drift_statistic", labels) == statistic.value
    alert_labels = {"tenant": tenant, "signal": "output_chars"}
    assert metrics.registry.get_sample_value("sluice_drift_alert_active", {**alert_labels, "variant": "b"}) == 1.0
    assert metrics.registry.get_sample_value("sluice_drift_alert_active", {**alert_labels, "variant": "a"}) == 0.0

    compared = 2 * len(VARIANTS) * len(SOURCED_SIGNALS)
    rows = await wait_for_reports(StoreClient(nats_client), tenant, compared)
    assert len(rows) == compared
    assert {row["signal"] for row in rows} == {str(signal) for signal in SOURCED_SIGNALS}
    assert {row["variant"] for row in rows} == set(VARIANTS)
    assert {row["reference_samples"] for row in rows} == {SETTINGS.reference_min_samples}
    assert {row["current_samples"] for row in rows} == {SETTINGS.window_min_samples}
    assert {row["current_end"] for row in rows} == {(T0 + 2 * PHASE).isoformat(), (T0 + 3 * PHASE).isoformat()}
    active = {(row["variant"], row["signal"]) for row in rows if row["alert_active"]}
    assert active == {("b", "output_chars")}


async def test_drift_report_reads_latest_and_history(
    telemetry_app: Settings,
    nats_client: NatsClient,
    runner_parts: tuple[DriftRunner, DriftMetrics],
) -> None:
    runner, _metrics = runner_parts
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(12)
    events = phase_events(tenant, 0, SETTINGS.reference_min_samples, rng, shifted_variant=None)
    for phase in (1, 2):
        events += phase_events(tenant, phase, SETTINGS.window_min_samples, rng, shifted_variant="b")
    await publish_all(telemetry_app.resolved_nats_url, events)
    for hours in (1, 2, 3):
        await runner.evaluate(T0 + hours * PHASE)
    store = StoreClient(nats_client)
    await wait_for_reports(store, tenant, 2 * len(VARIANTS) * len(SOURCED_SIGNALS))

    states = await latest_drift_states(store, tenant)
    history = await drift_history(store, tenant, "output_chars")

    assert [(state.variant, state.signal) for state in states] == [
        (variant, str(signal)) for variant in VARIANTS for signal in sorted(SOURCED_SIGNALS, key=str)
    ]
    latest_output = {state.variant: state for state in states if state.signal == "output_chars"}
    assert latest_output["b"].alert_active
    assert not latest_output["a"].alert_active
    assert latest_output["b"].current_end == T0 + 3 * PHASE
    assert latest_output["b"].statistic == PSI
    assert [(point.variant, point.alert_active) for point in history] == [
        ("a", False),
        ("b", False),
        ("a", False),
        ("b", True),
    ]
    assert history[0].evaluated_at <= history[-1].evaluated_at
