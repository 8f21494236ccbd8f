"""Overload of one endpoint limited to 2 in flight: every request completes, in order within a tenant, fairly across tenants.

The endpoint is a slow TGI-protocol server written for this test: it streams
each reply at a fixed pace and counts the requests it serves at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from shared.embedded.infrastructure import free_port
from shared.events import Envelope, EventType, GenerationParams, VariantSpec
from shared.subjects import event_filter
from tests.inference.harness import assigned_envelope, running_inference
from tests.inference.scripted_tgi import USAGE, chunk
from tests.support.jetstream import publish_envelope, published_events

pytestmark = [pytest.mark.nats, pytest.mark.redis]

HOST = "127.0.0.1"
BACKEND = "slow"
MAX_IN_FLIGHT = 2
BURST_TENANT = "burst"
LATE_TENANT = "late"
BURST_SIZE = 50
LATE_SIZE = 3
# 4 pieces 50 ms apart: about 0.2 s a request, so the burst alone takes about 5 s at 2 in flight.
PIECES = 4
PIECE_DELAY_S = 0.05
WAIT_S = 120.0


class SlowServer:
    """Serves `POST /v1/chat/completions` at a fixed pace. Records each request's prompt in arrival order, and the peak concurrency."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, HOST, port).start()
        self.url = f"http://{HOST}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.prompts.append(body["messages"][-1]["content"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [chunk(f"piece{index} ") for index in range(PIECES - 1)] + [chunk("end", "length"), chunk(None, usage=USAGE)]
        for event in events:
            await asyncio.sleep(PIECE_DELAY_S)
            await response.write(b"data:" + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response


@pytest.fixture
async def slow_server() -> AsyncIterator[SlowServer]:
    server = SlowServer()
    await server.start()
    yield server
    await server.stop()


def _write_backends(directory: Path, slow_url: str) -> Path:
    """Write a backends file with the slow endpoint, limited to 2 in flight, and the `embedded` backend the experiments name."""
    path = directory / "backends.yaml"
    path.write_text(
        "backends:\n"
        f"  {BACKEND}: {{kind: tgi, url: '{slow_url}', max_in_flight_per_endpoint: {MAX_IN_FLIGHT}}}\n"
        f"  embedded: {{kind: tgi, url: 'http://{HOST}:{free_port()}'}}\n",
        encoding="utf-8",
    )
    return path


def _assigned(tenant: str, index: int) -> Envelope:
    variant = VariantSpec(key="control", backend=BACKEND, params=GenerationParams(max_new_tokens=PIECES))
    return assigned_envelope(variant, prompt=f"{tenant}-{index:02d}", tenant=tenant, deadline_in_s=WAIT_S)


def _prompt_of(envelope: Envelope) -> str:
    return envelope.parsed_payload().request.messages[-1].content


async def _wait_until(condition: Callable[[], bool], wait_s: float, failure: str) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure} within {wait_s} s")
        await asyncio.sleep(0.05)


async def _completed_ids(jetstream: JetStreamContext, request_ids: set[str], wait_s: float) -> set[str]:
    """Poll the stream until every request in `request_ids` has `generation.completed`, or the wait runs out."""
    deadline = time.monotonic() + wait_s
    while True:
        completed = {event.request_id for event in await published_events(jetstream, event_filter(EventType.COMPLETED))}
        if request_ids <= completed or time.monotonic() > deadline:
            return completed & request_ids
        await asyncio.sleep(0.5)


async def test_overload_completes_in_order_and_fair(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, tmp_path: Path, slow_server: SlowServer
) -> None:
    burst = [_assigned(BURST_TENANT, index) for index in range(BURST_SIZE)]
    late = [_assigned(LATE_TENANT, index) for index in range(LATE_SIZE)]
    backends_file = _write_backends(tmp_path, slow_server.url)

    # The burst is stored before the service starts, so the start-up rescan
    # finds it. The late tenant arrives while the burst runs, so its doorbell finds it.
    for envelope in burst:
        await publish_envelope(jetstream, envelope)
    with capture_logs() as logs:
        async with running_inference(bus_url, redis_url, backends_file):
            await _wait_until(lambda: len(slow_server.prompts) >= 4, WAIT_S, "the burst did not start")
            for envelope in late:
                await publish_envelope(jetstream, envelope)
            all_ids = {envelope.request_id for envelope in burst + late}
            completed = await _completed_ids(jetstream, all_ids, WAIT_S)

    admitted = [entry for entry in logs if entry["event"] == "request_admitted" and entry["backend"] == BACKEND]
    admitted_tenants = [entry["tenant"] for entry in admitted]
    burst_admitted = [entry["request_id"] for entry in admitted if entry["tenant"] == BURST_TENANT]
    late_indexes = [index for index, tenant in enumerate(admitted_tenants) if tenant == LATE_TENANT]
    last_burst_index = max(index for index, tenant in enumerate(admitted_tenants) if tenant == BURST_TENANT)
    burst_between_late = admitted_tenants[late_indexes[0] : late_indexes[-1]].count(BURST_TENANT)
    server_order = {prompt: index for index, prompt in enumerate(slow_server.prompts)}
    burst_server_indexes = [server_order[_prompt_of(envelope)] for envelope in burst]

    assert completed == all_ids
    assert slow_server.max_in_flight == MAX_IN_FLIGHT
    assert burst_admitted == [envelope.request_id for envelope in burst]
    assert len(late_indexes) == LATE_SIZE
    assert late_indexes[-1] < last_burst_index
    # Equal weights alternate the two tenants while both wait.
    assert burst_between_late <= LATE_SIZE
    # Two requests admitted together may reach the server in either order, but never one admitted two turns later.
    for index in range(BURST_SIZE - 2):
        assert burst_server_indexes[index] < burst_server_indexes[index + 2], f"burst request {index}"
