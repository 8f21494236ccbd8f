"""Failover across a pool of real model server processes, with the generator publishing to a real nats-server.

The generator runs without the service around it, so each test reads the
pool's breakers directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.inference.circuit_breaker import BreakerState
from services.inference.endpoint_pool import EndpointPool
from services.inference.generation import STREAM_BROKEN, Generator
from services.inference.tgi import TgiBackend
from shared.bus import EventPublisher, make_broker
from shared.embedded.infrastructure import free_port
from shared.events import Envelope, EventType, GenerationParams, VariantSpec
from shared.experiments import DEFAULT_BREAKER_FAILURE_THRESHOLD, BackendConfig
from tests.inference.harness import assigned_envelope, read_chunk_messages
from tests.inference.model_servers import ModelServerProcess, running_model_server
from tests.support.jetstream import published_events, wait_for_event

pytestmark = [pytest.mark.nats]

WAIT_S = 120.0
BACKEND = "pool"
HOST = "127.0.0.1"
REQUESTS = 10
# The model's context is 1,024 tokens, and the prompt takes a few dozen of
# them. 900 tokens take several seconds on a CPU, so the stream is still
# running when the test kills its server.
LONG_GENERATION_TOKENS = 900


def _assigned(max_new_tokens: int) -> Envelope:
    variant = VariantSpec(key="control", backend=BACKEND, params=GenerationParams(temperature=0.8, max_new_tokens=max_new_tokens))
    return assigned_envelope(variant, deadline_in_s=WAIT_S, user_id="alice", experiment_key="failover", hash_value=0.5)


def _pool(*urls: str, **options: float) -> EndpointPool:
    return EndpointPool(BACKEND, BackendConfig(kind="tgi", endpoints=list(urls), **options), TgiBackend)


async def _run(generator: Generator, envelope: Envelope) -> None:
    await generator.run(envelope, envelope.parsed_payload(), attempt=1)


async def _events_by_type(jetstream: JetStreamContext, request_ids: set[str]) -> dict[EventType, set[str]]:
    """Return, per event type, the ids of the given requests that have such an event."""
    found: dict[EventType, set[str]] = {}
    for envelope in await published_events(jetstream):
        if envelope.request_id in request_ids:
            found.setdefault(envelope.type, set()).add(envelope.request_id)
    return found


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    """A model server that stays up for every test of this module."""
    with running_model_server(tmp_path_factory.mktemp("live-server"), "live-server", {}) as server:
        yield server


@pytest.fixture
def doomed_server(tmp_path: Path) -> Iterator[ModelServerProcess]:
    """A model server that the test kills."""
    with running_model_server(tmp_path, "doomed-server", {}) as server:
        yield server


@pytest.fixture
async def generator_publisher(bus_url: str, jetstream: JetStreamContext) -> AsyncIterator[EventPublisher]:
    """A publisher on a connected broker. The `jetstream` fixture has created the streams it publishes to."""
    broker = make_broker(bus_url)
    await broker.connect()
    yield EventPublisher(broker)
    await broker.stop()


async def test_dead_endpoint_requests_complete(
    jetstream: JetStreamContext,
    generator_publisher: EventPublisher,
    live_server: ModelServerProcess,
    doomed_server: ModelServerProcess,
) -> None:
    doomed_server.kill()
    # The dead endpoint comes first, so it wins every tie and keeps being tried until its breaker opens.
    pool = _pool(doomed_server.url, live_server.url)
    generator = Generator({BACKEND: pool}, generator_publisher)
    requests = [_assigned(max_new_tokens=8) for _ in range(REQUESTS)]
    served_before = live_server.chat_requests()

    await asyncio.wait_for(asyncio.gather(*(_run(generator, envelope) for envelope in requests)), WAIT_S)
    events = await _events_by_type(jetstream, {envelope.request_id for envelope in requests})

    assert events.get(EventType.COMPLETED) == {envelope.request_id for envelope in requests}
    assert EventType.FAILED not in events
    assert pool.breaker_states() == {doomed_server.url: BreakerState.OPEN, live_server.url: BreakerState.CLOSED}
    assert pool.endpoints[0].breaker.consecutive_failures >= DEFAULT_BREAKER_FAILURE_THRESHOLD
    # Each request was generated once, on the live endpoint.
    assert live_server.chat_requests() - served_before == REQUESTS
    await pool.close()


async def test_retry_moves_to_other_endpoint(
    jetstream: JetStreamContext, generator_publisher: EventPublisher, live_server: ModelServerProcess
) -> None:
    # The breaker never opens here, so only the retry rule keeps the second
    # try off the dead endpoint, which wins every tie.
    dead_url = f"http://{HOST}:{free_port()}"
    pool = _pool(dead_url, live_server.url, breaker_failure_threshold=100)
    generator = Generator({BACKEND: pool}, generator_publisher)
    assigned = _assigned(max_new_tokens=8)
    served_before = live_server.chat_requests()

    with capture_logs() as logs:
        await asyncio.wait_for(_run(generator, assigned), WAIT_S)
    events = await _events_by_type(jetstream, {assigned.request_id})

    retries = [entry for entry in logs if entry["event"] == "backend_retry"]
    assert EventType.COMPLETED in events
    assert [entry["endpoint"] for entry in retries] == [dead_url]
    assert live_server.chat_requests() - served_before == 1
    assert pool.breaker_states() == {dead_url: BreakerState.CLOSED, live_server.url: BreakerState.CLOSED}
    await pool.close()


async def test_killed_mid_stream_not_retried(
    jetstream: JetStreamContext,
    generator_publisher: EventPublisher,
    live_server: ModelServerProcess,
    doomed_server: ModelServerProcess,
) -> None:
    # Both endpoints have nothing in flight, so the request goes to the first: the doomed one.
    pool = _pool(doomed_server.url, live_server.url)
    generator = Generator({BACKEND: pool}, generator_publisher)
    assigned = _assigned(max_new_tokens=LONG_GENERATION_TOKENS)
    served_before = live_server.chat_requests()

    running = asyncio.create_task(_run(generator, assigned))
    await wait_for_event(jetstream, EventType.FIRST_TOKEN, assigned.request_id, WAIT_S)
    doomed_server.kill()
    await asyncio.wait_for(running, WAIT_S)
    failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, assigned.request_id, WAIT_S)
    events = await _events_by_type(jetstream, {assigned.request_id})

    assert failed.parsed_payload().error_code == STREAM_BROKEN
    assert EventType.COMPLETED not in events
    assert chunks[0].type is EventType.CHUNK
    assert chunks[-1].type is EventType.END
    assert chunks[-1].parsed_payload().error_code == STREAM_BROKEN
    assert chunks[-1].parsed_payload().finish_reason == "error"
    assert live_server.chat_requests() == served_before
    assert pool.endpoints[0].breaker.consecutive_failures == 1
    await pool.close()


async def test_all_breakers_open_fails_fast(jetstream: JetStreamContext, generator_publisher: EventPublisher) -> None:
    unreachable = [f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}"]
    pool = _pool(*unreachable, breaker_failure_threshold=1, connect_timeout_s=1.0)
    generator = Generator({BACKEND: pool}, generator_publisher)
    first, second = _assigned(max_new_tokens=8), _assigned(max_new_tokens=8)

    await asyncio.wait_for(_run(generator, first), WAIT_S)
    with capture_logs() as logs:
        await asyncio.wait_for(_run(generator, second), WAIT_S)
    first_failed = await wait_for_event(jetstream, EventType.FAILED, first.request_id, WAIT_S)
    second_failed = await wait_for_event(jetstream, EventType.FAILED, second.request_id, WAIT_S)
    chunks = await read_chunk_messages(jetstream, second.request_id, WAIT_S)

    # The first request tried each endpoint once, and its third try found both breakers open.
    assert first_failed.parsed_payload().error_code == "no_endpoint_available"
    assert second_failed.parsed_payload().error_code == "no_endpoint_available"
    assert unreachable[0] in second_failed.parsed_payload().message
    assert [chunk.type for chunk in chunks] == [EventType.END]
    assert chunks[0].parsed_payload().error_code == "no_endpoint_available"
    assert [entry for entry in logs if entry["event"] == "backend_retry"] == []
    assert pool.breaker_states() == {url: BreakerState.OPEN for url in unreachable}
    await pool.close()
