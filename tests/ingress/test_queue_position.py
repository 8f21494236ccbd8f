"""`queue_position` in `GET /v1/requests/{id}`, from events the running ingress projects."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from shared.bus import EventPublisher, make_broker
from shared.events import Envelope

from tests.ingress import event_builders as events
from tests.ingress.support import ApiKeys, bearer, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.redis]


@pytest.fixture(scope="module")
async def publisher(ingress_nats_url: str, ingress: str) -> AsyncIterator[EventPublisher]:
    broker: NatsBroker = make_broker(ingress_nats_url)
    await broker.connect()
    yield EventPublisher(broker)
    await broker.stop()


@pytest.fixture
def backend() -> str:
    """A pool name of its own, so no other test's requests wait in the same queue."""
    return f"pool-{uuid.uuid4().hex[:8]}"


async def _publish(publisher: EventPublisher, envelopes: list[Envelope]) -> None:
    for envelope in envelopes:
        await publisher.publish(envelope)


async def _body_when(http: httpx.AsyncClient, key: str, request_id: str, status: str, position: int | None) -> dict[str, Any]:
    """Poll the status until it shows `status` and `position`; return the last body read."""
    last: dict[str, Any] = {}

    async def read() -> bool:
        nonlocal last
        response = await http.get(f"/v1/requests/{request_id}", headers=bearer(key))
        last = response.json() if response.status_code == 200 else {}
        return last.get("status") == status and last.get("queue_position") == position

    await wait_until(read)
    return last


async def test_queued_requests_count_those_ahead(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, backend: str
) -> None:
    starts = [events.accepted() for _ in range(3)]
    for start in starts:
        await _publish(publisher, [start, events.screened(start), events.assigned(start, backend)])

    bodies = [await _body_when(http, api_keys.acme, start.request_id, "queued", index) for index, start in enumerate(starts)]

    assert [body["queue_position"] for body in bodies] == [0, 1, 2]


async def test_position_null_before_assignment(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys
) -> None:
    start = events.accepted()
    await _publish(publisher, [start, events.screened(start)])

    body = await _body_when(http, api_keys.acme, start.request_id, "queued", None)

    assert body["status"] == "queued"
    assert body["queue_position"] is None


async def test_first_token_moves_queue_up(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, backend: str
) -> None:
    starts = [events.accepted() for _ in range(3)]
    for start in starts:
        await _publish(publisher, [start, events.screened(start), events.assigned(start, backend)])
    await _body_when(http, api_keys.acme, starts[2].request_id, "queued", 2)

    await _publish(publisher, [events.first_token(starts[0], backend)])

    generating = await _body_when(http, api_keys.acme, starts[0].request_id, "generating", 0)
    second = await _body_when(http, api_keys.acme, starts[1].request_id, "queued", 0)
    third = await _body_when(http, api_keys.acme, starts[2].request_id, "queued", 1)
    assert generating["queue_position"] == 0
    assert second["queue_position"] == 0
    assert third["queue_position"] == 1


async def test_position_null_after_end(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, backend: str
) -> None:
    start = events.accepted()
    sequence = [start, events.screened(start), events.assigned(start, backend), events.first_token(start, backend)]
    await _publish(publisher, sequence + [events.completed(start), events.moderated(start), events.delivered(start)])

    body = await _body_when(http, api_keys.acme, start.request_id, "completed", None)

    assert body["status"] == "completed"
    assert body["queue_position"] is None


async def test_other_tenant_queue_separate(
    publisher: EventPublisher, http: httpx.AsyncClient, api_keys: ApiKeys, backend: str
) -> None:
    acme = events.accepted()
    globex = events.accepted(tenant="globex")
    await _publish(publisher, [acme, events.screened(acme), events.assigned(acme, backend)])
    await _publish(publisher, [globex, events.screened(globex), events.assigned(globex, backend)])

    body = await _body_when(http, api_keys.globex, globex.request_id, "queued", 0)

    assert body["queue_position"] == 0
