"""Prompt embedding drift through the real stack: telemetry embeds prompts into chDB, and the drift source reads them over NATS."""

from __future__ import annotations

import asyncio
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
from services.drift.embeddings import CENTROID_COSINE_DISTANCE, DOMAIN_CLASSIFIER_ROC_AUC
from services.drift.metrics import DriftMetrics
from services.drift.publishing import ALERTS_SUBJECT, ResultPublisher
from services.drift.runner import DriftRunner
from services.drift.source import EMBEDDING_PAGE_SIZE, SignalSource
from services.telemetry.prompt_embeddings import embed_prompts
from shared.bus import EventPublisher, make_broker
from shared.drift_signals import Signal
from shared.events import AcceptedPayload, AssignedPayload, ChatMessage, Envelope, EventType, RequestSpec, VariantSpec, new_envelope
from shared.settings import Settings
from shared.store_client import StoreClient
from tests.drift.store_events import publish_all, wait_for_alerts, wait_for_reports
from tests.support.jetstream import QUIET_S

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PHASE = timedelta(hours=1)
VARIANT = "control"
# NATS's default max_payload, which every store API reply must fit.
NATS_MAX_PAYLOAD_BYTES = 1024 * 1024
# More than one page of the store API, so the sample read must page.
PAGED_SAMPLE_LIMIT = EMBEDDING_PAGE_SIZE + 20
# Telemetry embeds every prompt (about 4 ms of CPU for these short ones), so the test keeps them few.
PAGED_REQUESTS = PAGED_SAMPLE_LIMIT + 30
# Distinct prompts per traffic kind in the runner test: the shortest ones, because telemetry embeds each request.
PROMPTS_PER_KIND = 80
# The reference contains every everyday prompt twice and each window every prompt once. The sample of
# 50 rows is smaller than both, so the classifier sees samples while the centroids cover every request.
RUNNER_SETTINGS = DriftSettings(
    reference_min_samples=2 * PROMPTS_PER_KIND, window_min_samples=PROMPTS_PER_KIND, embedding_samples_per_window=50
)


def prompt_events(tenant: str, texts: list[str], phase: int, rng: np.random.Generator) -> list[Envelope]:
    """Build the accepted and assigned events of one request per text, one second apart, in hour `phase` after T0.

    Request ids come from `rng`, so the hash-ordered sample is the same on every run.
    """
    events = []
    for index, text in enumerate(texts):
        request_id = uuid.UUID(bytes=rng.bytes(16), version=4).hex
        at = T0 + phase * PHASE + timedelta(seconds=index + 1)
        spec = RequestSpec(messages=[ChatMessage(role="user", content=text)])
        payloads = [
            (EventType.ACCEPTED, AcceptedPayload(request=spec, prompt_chars=len(text))),
            (
                EventType.ASSIGNED,
                AssignedPayload(
                    request=spec,
                    experiment_key="drift-test",
                    variant=VariantSpec(key=VARIANT, backend="embedded"),
                    hash_attribute="request_id",
                ),
            ),
        ]
        events.extend(
            new_envelope(event_type, request_id=request_id, tenant=tenant, payload=payload).model_copy(
                update={"ts": at + timedelta(milliseconds=100 * step)}
            )
            for step, (event_type, payload) in enumerate(payloads)
        )
    return events


def nearest_distances(rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Return the Euclidean distance from each row to its nearest candidate."""
    rows = rows.astype(np.float64)
    candidates = candidates.astype(np.float64)
    squared = (rows**2).sum(axis=1)[:, None] + (candidates**2).sum(axis=1)[None, :] - 2.0 * rows @ candidates.T
    return np.sqrt(np.maximum(squared.min(axis=1), 0.0))


@pytest.fixture
async def nats_client(embedding_telemetry_app: Settings) -> AsyncIterator[NatsClient]:
    client = await nats.connect(embedding_telemetry_app.resolved_nats_url)
    yield client
    await client.close()


@pytest.fixture
async def store_replies(embedding_telemetry_app: Settings) -> AsyncIterator[list[tuple[list[str], int]]]:
    """Record the columns and size in bytes of every store API page sent on the bus while the test runs.

    nats-py sends every request's reply to a subject under _INBOX, and a
    connection of its own receives a copy of each.
    """
    client = await nats.connect(embedding_telemetry_app.resolved_nats_url)
    replies: list[tuple[list[str], int]] = []

    async def record(msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            return
        if isinstance(body, dict) and "columns" in body:
            replies.append((body["columns"], len(msg.data)))

    await client.subscribe("_INBOX.>", cb=record)
    yield replies
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


async def test_source_reads_centroid_and_paged_sample(
    embedding_telemetry_app: Settings, nats_client: NatsClient, store_replies: list[tuple[list[str], int]]
) -> None:
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    texts = [f"Question {index}: how many legs do {index} spiders have?" for index in range(PAGED_REQUESTS)]
    await publish_all(embedding_telemetry_app.resolved_nats_url, prompt_events(tenant, texts, 0, np.random.default_rng(1)))
    source = SignalSource(StoreClient(nats_client), max_samples_per_read=5_000, embedding_samples_per_window=PAGED_SAMPLE_LIMIT)
    embeddings = np.asarray(embed_prompts(texts), dtype=np.float32)

    store_replies.clear()
    summary = await source.sample(tenant, VARIANT, Signal.PROMPT_EMBEDDING, T0, T0 + PHASE)
    await asyncio.sleep(QUIET_S)

    assert isinstance(summary, EmbeddingSummary)
    assert summary.count == PAGED_REQUESTS
    assert summary.sample_rows.shape == (PAGED_SAMPLE_LIMIT, 384)
    assert np.all(np.diff(summary.sample_keys.astype(np.float64)) > 0)
    assert np.allclose(summary.centroid, embeddings.astype(np.float64).mean(axis=0), atol=1e-6)
    assert nearest_distances(summary.sample_rows, embeddings).max() < 1e-4
    sample_pages = [size for columns, size in store_replies if columns == ["sample_key", "embedding"]]
    assert len(sample_pages) == 2, store_replies
    assert max(sample_pages) < NATS_MAX_PAYLOAD_BYTES, sample_pages


async def test_source_sample_is_the_same_on_every_read(embedding_telemetry_app: Settings, nats_client: NatsClient) -> None:
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    texts = [f"Name {index} rivers that flow north." for index in range(40)]
    await publish_all(embedding_telemetry_app.resolved_nats_url, prompt_events(tenant, texts, 0, np.random.default_rng(2)))
    source = SignalSource(StoreClient(nats_client), max_samples_per_read=5_000, embedding_samples_per_window=10)

    whole = await source.sample(tenant, VARIANT, Signal.PROMPT_EMBEDDING, T0, T0 + PHASE)
    halfway = T0 + timedelta(seconds=20.5)
    first = await source.sample(tenant, VARIANT, Signal.PROMPT_EMBEDDING, T0, halfway)
    second = await source.sample(tenant, VARIANT, Signal.PROMPT_EMBEDDING, halfway, T0 + PHASE)

    assert isinstance(whole, EmbeddingSummary)
    assert isinstance(first, EmbeddingSummary)
    assert isinstance(second, EmbeddingSummary)
    assert (first.count, second.count) == (20, 20)
    merged = first.merged(second)
    assert np.array_equal(merged.sample_keys, whole.sample_keys)
    assert np.array_equal(merged.sample_rows, whole.sample_rows)


async def test_runner_alerts_on_prompt_shift_only(
    embedding_telemetry_app: Settings,
    nats_client: NatsClient,
    alerts: list[dict],
    prompt_texts: dict[str, list[str]],
) -> None:
    everyday = sorted(set(prompt_texts["everyday"]), key=len)[:PROMPTS_PER_KIND]
    injection = sorted(set(prompt_texts["injection"]), key=len)[:PROMPTS_PER_KIND]
    tenant = f"drift-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    phases = [everyday + everyday, everyday, everyday, injection, injection]
    events = [event for phase, texts in enumerate(phases) for event in prompt_events(tenant, texts, phase, rng)]
    await publish_all(embedding_telemetry_app.resolved_nats_url, events)

    broker = make_broker(embedding_telemetry_app.resolved_nats_url)
    await broker.connect()
    source = SignalSource(
        StoreClient(nats_client),
        max_samples_per_read=RUNNER_SETTINGS.max_samples_per_read,
        embedding_samples_per_window=RUNNER_SETTINGS.embedding_samples_per_window,
    )
    publisher = ResultPublisher(EventPublisher(broker), nats_client)
    # The default signals, as the service runs: prompt_chars is compared too, and the other signals get no events.
    runner = DriftRunner(source, publisher, DriftMetrics(), RUNNER_SETTINGS)
    try:
        reports = [await runner.evaluate(T0 + hours * PHASE) for hours in range(1, len(phases) + 1)]
    finally:
        await broker.stop()
    published = await wait_for_alerts(alerts, tenant)

    freezing, *compared = (report[tenant] for report in reports)
    assert freezing.results == ()
    embedding_results = [
        next(result for result in report.results if result.signal is Signal.PROMPT_EMBEDDING) for report in compared
    ]
    assert [result.outcome for result in embedding_results] == [Outcome.QUIET, Outcome.QUIET, Outcome.FIRED, Outcome.FIRED]
    statistics = {statistic.name: statistic for statistic in embedding_results[-1].statistics}
    assert list(statistics) == [DOMAIN_CLASSIFIER_ROC_AUC, CENTROID_COSINE_DISTANCE]
    assert statistics[DOMAIN_CLASSIFIER_ROC_AUC].value > 0.55
    assert statistics[CENTROID_COSINE_DISTANCE].value > 0.0
    assert [alert for report in compared[:3] for alert in report.alerts] == []
    embedding_alerts = [alert for alert in compared[3].alerts if alert.signal is Signal.PROMPT_EMBEDDING]
    assert [alert.status for alert in embedding_alerts] == [AlertStatus.FIRING]

    published = [alert for alert in published if alert["signal"] == "prompt_embedding"]
    assert len(published) == 1
    assert published[0]["statistic"] == DOMAIN_CLASSIFIER_ROC_AUC
    assert published[0]["threshold"] == 0.55
    assert published[0]["reference"]["sample_count"] == 2 * PROMPTS_PER_KIND
    assert published[0]["current"]["sample_count"] == PROMPTS_PER_KIND

    rows = await wait_for_reports(StoreClient(nats_client), tenant, 2 * len(compared))
    embedding_rows = [row for row in rows if row["signal"] == "prompt_embedding"]
    assert [(row["outcome"], row["alert_active"]) for row in embedding_rows] == [
        ("quiet", False),
        ("quiet", False),
        ("fired", False),
        ("fired", True),
    ]
    assert {row["current_samples"] for row in embedding_rows} == {PROMPTS_PER_KIND}
    assert {row["reference_samples"] for row in embedding_rows} == {2 * PROMPTS_PER_KIND}
