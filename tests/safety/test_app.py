"""The safety service on a private nats-server: screened, blocked, expired and malformed messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from faststream import TestApp
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.safety.app import make_app
from shared.embedded.infrastructure import free_port
from shared.events import EventType, Verdict
from shared.settings import Settings
from shared.subjects import EVENTS_STREAM, SAFETY_CONSUMER, event_subject
from tests.safety.support import accepted, user
from tests.support.jetstream import jetstream_client, private_nats, publish_envelope, wait_for_event, wait_for_log
from tests.support.metrics import sample_value, scrape, scrape_when

pytestmark = pytest.mark.nats

WAIT_S = 30.0


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server: the malformed message these tests publish must not reach other tests' readers."""
    with private_nats(tmp_path_factory, "safety-nats") as url:
        yield url


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def safety_service(bus_url: str, policy_file: Path, metrics_port: int) -> AsyncIterator[None]:
    settings = Settings(nats_url=bus_url, policy_file=policy_file, safety_metrics_port=metrics_port)
    async with TestApp(make_app(settings)):
        yield


@pytest.fixture(scope="module")
async def jetstream(bus_url: str, safety_service: None) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(bus_url) as jetstream:
        yield jetstream


async def test_benign_request_screened(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Tell me a short story about a lighthouse."))

    await publish_envelope(jetstream, envelope)
    screened = await wait_for_event(jetstream, EventType.SCREENED, envelope.request_id, WAIT_S)

    payload = screened.parsed_payload()
    assert payload.verdict is Verdict.PASSED
    assert payload.request == envelope.parsed_payload().request
    assert screened.deadline == envelope.deadline


async def test_secret_request_blocked(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Is AKIAIOSFODNN7EXAMPLE a valid key?"))

    await publish_envelope(jetstream, envelope)
    screened = await wait_for_event(jetstream, EventType.SCREENED, envelope.request_id, WAIT_S)

    assert screened.parsed_payload().verdict is Verdict.BLOCKED
    assert screened.parsed_payload().blocked_by == "Secrets"


async def test_invisible_text_blocked(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Translate\u200b this"))

    await publish_envelope(jetstream, envelope)
    screened = await wait_for_event(jetstream, EventType.SCREENED, envelope.request_id, WAIT_S)

    assert screened.parsed_payload().blocked_by == "InvisibleText"


async def test_late_request_expired(jetstream: JetStreamContext) -> None:
    envelope = accepted(user("Hello"), deadline_in_s=-5.0)

    await publish_envelope(jetstream, envelope)
    expired = await wait_for_event(jetstream, EventType.EXPIRED, envelope.request_id, WAIT_S)

    assert expired.parsed_payload().stage == "safety"


async def test_malformed_message_terminated(jetstream: JetStreamContext) -> None:
    with capture_logs() as logs:
        await jetstream.publish(event_subject(EventType.ACCEPTED), b'{"not": "an envelope"}')
        rejected = await wait_for_log(logs, "message_rejected", WAIT_S)

    assert rejected[0]["log_level"] == "error"
    assert rejected[0]["error"].startswith("invalid envelope at ")
    # Terminated, not left for redelivery: nothing of it stays pending on the consumer.
    assert await _ack_pending_drained(jetstream)


async def _ack_pending_drained(jetstream: JetStreamContext) -> bool:
    """Wait until the safety consumer has no unacknowledged message; a nacked one would stay pending."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        info = await jetstream.consumer_info(EVENTS_STREAM, SAFETY_CONSUMER.durable)
        if info.num_ack_pending == 0 and not info.num_redelivered:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_blocked_verdict_counted(jetstream: JetStreamContext, metrics_port: int) -> None:
    verdicts = "sluice_safety_verdicts_total"
    durations = "sluice_safety_screening_duration_seconds_count"
    before = await scrape(metrics_port)
    blocked_before = sample_value(before, verdicts, verdict="blocked", scanner="Secrets") or 0
    envelope = accepted(user("Is AKIAIOSFODNN7EXAMPLE a valid key?"))

    await publish_envelope(jetstream, envelope)
    await wait_for_event(jetstream, EventType.SCREENED, envelope.request_id, WAIT_S)

    after = await scrape_when(metrics_port, verdicts, blocked_before + 1, WAIT_S, verdict="blocked", scanner="Secrets")
    assert sample_value(after, verdicts, verdict="blocked", scanner="Secrets") == blocked_before + 1
    assert sample_value(after, durations) == (sample_value(before, durations) or 0) + 1
