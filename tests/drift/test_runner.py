"""The drift runner against a real nats-server and chDB: events in, drift_reports rows, alerts and gauges out."""

from __future__ import annotations

import json
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
from services.drift.embedding_summary import EmbeddingSummary
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
    FeedbackKind,
    FeedbackPayload,
    ModeratedPayload,
    RequestSpec,
    ScannerResult,
    ScreenedPayload,
    Usage,
    VariantSpec,
    Verdict,
    derive_event_id,
    new_envelope,
)
from shared.settings import Settings
from shared.store_client import StoreClient
from tests.drift.store_events import publish_all, wait_for_alerts, wait_for_reports

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PHASE = timedelta(hours=1)
VARIANTS = ("a", "b")
SETTINGS = DriftSettings(reference_min_samples=300, window_min_samples=150, embedding_samples_per_window=300)
# The `telemetry_app` fixture stores no prompt embeddings, so the embedding signal never fills a reference.
COMPARED_SIGNALS = tuple(signal for signal in SOURCED_SIGNALS if signal is not Signal.PROMPT_EMBEDDING)
SPEC = RequestSpec(messages=[ChatMessage(role="user", content="Speak of the sea.")])


def request_events(
    tenant: str,
    variant: str,
    at: datetime,
    rng: np.random.Generator,
    output_median_chars: float,
    conversion_rate: float = 0.2,
) -> list[Envelope]:
    """Build the accepted, screened, assigned, moderated and delivered events of one request, stamped from `at` on, and its feedback."""
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
    envelopes = [
        new_envelope(event_type, request_id=request_id, tenant=tenant, payload=payload).model_copy(
            update={"ts": at + timedelta(milliseconds=100 * step)}
        )
        for step, (event_type, payload) in enumerate(payloads)
    ]
    return envelopes + feedback_events(envelopes[-1], rng, conversion_rate)


def feedback_events(delivered: Envelope, rng: np.random.Generator, conversion_rate: float) -> list[Envelope]:
    """Build a thumbs (70% up) and a conversion feedback on the delivered request, half a second after delivery."""
    thumbs = FeedbackPayload(kind=FeedbackKind.THUMBS, value=float(rng.random() < 0.7), idempotency_key="thumbs", channel="http")
    conversion = FeedbackPayload(
        kind=FeedbackKind.CONVERSION,
        value=float(rng.random() < conversion_rate),
        idempotency_key="conversion",
        channel="http",
    )
    return [
        Envelope(
            event_id=derive_event_id(delivered.tenant, delivered.request_id, EventType.FEEDBACK, seq=seq),
            type=EventType.FEEDBACK,
            request_id=delivered.request_id,
            tenant=delivered.tenant,
            ts=delivered.ts + timedelta(seconds=0.5),
            payload=payload.model_dump(mode="json"),
        )
        for seq, payload in enumerate((thumbs, conversion))
    ]


def scan(risk_score: float) -> ScannerResult:
    return ScannerResult(scanner="Toxicity", valid=True, risk_score=float(risk_score), duration_ms=1.0)


def phase_events(
    tenant: str,
    phase: int,
    count: int,
    rng: np.random.Generator,
    shifted_variant: str | None,
    converting_less_variant: str | None = None,
) -> list[Envelope]:
    """Build `count` requests per variant, one second apart, in hour `phase` after T0.

    `shifted_variant` gets short outputs, and `converting_less_variant`
    converts 5% of its requests instead of 20%. The first request comes a
    second after the hour starts, because an evaluation up to the hour reads
    that instant too.
    """
    events = []
    for variant in VARIANTS:
        median = 60.0 if variant == shifted_variant else 600.0
        conversion_rate = 0.05 if variant == converting_less_variant else 0.2
        for index in range(count):
            at = T0 + phase * PHASE + timedelta(seconds=index + 1)
            events.extend(request_events(tenant, variant, at, rng, median, conversion_rate))
    return events


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
    source = SignalSource(
        StoreClient(nats_client),
        max_samples_per_read=SETTINGS.max_samples_per_read,
        embedding_samples_per_window=SETTINGS.embedding_samples_per_window,
    )
    runner = DriftRunner(source, ResultPublisher(EventPublisher(broker), nats_client), metrics, SETTINGS)
    yield runner, metrics
    await broker.stop()


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

    compared = 2 * len(VARIANTS) * len(COMPARED_SIGNALS)
    rows = await wait_for_reports(StoreClient(nats_client), tenant, compared)
    assert len(rows) == compared
    assert {row["signal"] for row in rows} == {str(signal) for signal in COMPARED_SIGNALS}
    assert {row["variant"] for row in rows} == set(VARIANTS)
    assert {row["reference_samples"] for row in rows} == {SETTINGS.reference_min_samples}
    assert {row["current_samples"] for row in rows} == {SETTINGS.window_min_samples}
    assert {row["current_end"] for row in rows} == {(T0 + 2 * PHASE).isoformat(), (T0 + 3 * PHASE).isoformat()}
    active = {(row["variant"], row["signal"]) for row in rows if row["alert_active"]}
    assert active == {("b", "output_chars")}


async def test_conversion_drop_alerts_conversion_rate(
    telemetry_app: Settings,
    alerts: list[dict],
    runner_parts: tuple[DriftRunner, DriftMetrics],
) -> None:
    runner, _metrics = runner_parts
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(14)
    events = phase_events(tenant, 0, SETTINGS.reference_min_samples, rng, shifted_variant=None)
    for phase in (1, 2):
        events += phase_events(tenant, phase, SETTINGS.window_min_samples, rng, None, converting_less_variant="b")
    await publish_all(telemetry_app.resolved_nats_url, events)

    await runner.evaluate(T0 + PHASE)
    first = await runner.evaluate(T0 + 2 * PHASE)
    second = await runner.evaluate(T0 + 3 * PHASE)
    published = await wait_for_alerts(alerts, tenant)

    fired = {(result.variant, result.signal) for result in first[tenant].results if result.outcome is Outcome.FIRED}
    assert fired == {("b", Signal.CONVERSION_RATE)}
    assert [(alert.variant, alert.signal) for alert in second[tenant].alerts] == [("b", Signal.CONVERSION_RATE)]
    assert [(alert["variant"], alert["signal"]) for alert in published] == [("b", "conversion_rate")]


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
    await wait_for_reports(store, tenant, 2 * len(VARIANTS) * len(COMPARED_SIGNALS))

    states = await latest_drift_states(store, tenant)
    history = await drift_history(store, tenant, "output_chars")

    assert [(state.variant, state.signal) for state in states] == [
        (variant, str(signal)) for variant in VARIANTS for signal in sorted(COMPARED_SIGNALS, key=str)
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


async def test_source_skips_requests_without_embeddings(telemetry_app: Settings, nats_client: NatsClient) -> None:
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    await publish_all(telemetry_app.resolved_nats_url, phase_events(tenant, 0, 20, np.random.default_rng(13), None))
    source = SignalSource(StoreClient(nats_client), max_samples_per_read=5_000, embedding_samples_per_window=10)

    lengths = await source.reference(tenant, "a", Signal.PROMPT_CHARS, sample_count=20, end=T0 + PHASE)
    embeddings = await source.reference(tenant, "a", Signal.PROMPT_EMBEDDING, sample_count=1, end=T0 + PHASE)
    summary = await source.sample(tenant, "a", Signal.PROMPT_EMBEDDING, T0, T0 + PHASE)

    assert lengths is not None
    assert embeddings is None
    assert isinstance(summary, EmbeddingSummary)
    assert summary.count == 0
    assert len(summary.sample_rows) == 0
