"""The ingress's `GET /metrics`: request durations by route template, accepted requests by tenant, open streams.

The ingress runs once per test package, so each test compares values before
and after its own requests.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis.asyncio as redis
import websockets

from services.ingress.state_store import RequestStateStore, RequestStatus, StateUpdate
from tests.ingress.support import ApiKeys, bearer, wait_until
from tests.support.metrics import sample_value

pytestmark = [pytest.mark.nats, pytest.mark.redis]

PROMPT_BODY = {"prompt": "Speak of kings"}
TTL_S = 600
STREAMS_GAUGE = "sluice_ingress_websocket_streams_in_flight"


async def _metrics(http: httpx.AsyncClient) -> str:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return response.text


def _accepted(exposition: str, tenant: str) -> float:
    return sample_value(exposition, "sluice_ingress_requests_accepted_total", tenant=tenant) or 0.0


def _durations(exposition: str, method: str, route: str, status: str) -> float:
    name = "sluice_ingress_request_duration_seconds_count"
    return sample_value(exposition, name, method=method, route=route, status=status) or 0.0


async def test_metrics_needs_no_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


async def test_accepted_request_counted_by_tenant(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    before = await _metrics(http)

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=bearer(api_keys.globex))

    after = await _metrics(http)
    assert response.status_code == 202
    assert _accepted(after, "globex") == _accepted(before, "globex") + 1
    assert _durations(after, "POST", "/v1/requests", "202") == _durations(before, "POST", "/v1/requests", "202") + 1


async def test_repeated_idempotency_key_not_counted(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    headers = {**bearer(api_keys.globex), "Idempotency-Key": str(uuid.uuid4())}
    await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)
    before = await _metrics(http)

    response = await http.post("/v1/requests", json=PROMPT_BODY, headers=headers)

    assert response.status_code == 202
    assert _accepted(await _metrics(http), "globex") == _accepted(before, "globex")


async def test_route_label_is_template(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    request_id = uuid.uuid4().hex
    before = await _metrics(http)

    response = await http.get(f"/v1/requests/{request_id}", headers=bearer(api_keys.acme))

    after = await _metrics(http)
    assert response.status_code == 404
    route = "/v1/requests/{request_id}"
    assert _durations(after, "GET", route, "404") == _durations(before, "GET", route, "404") + 1
    assert request_id not in after


async def test_unknown_path_labelled_unmatched(http: httpx.AsyncClient) -> None:
    before = await _metrics(http)

    response = await http.get(f"/no-such-path/{uuid.uuid4().hex}")

    after = await _metrics(http)
    assert response.status_code == 404
    assert _durations(after, "GET", "unmatched", "404") == _durations(before, "GET", "unmatched", "404") + 1


async def test_stream_gauge_counts_open_stream(
    http: httpx.AsyncClient, ingress: str, api_keys: ApiKeys, redis_client: redis.Redis
) -> None:
    request_id = uuid.uuid4().hex
    await RequestStateStore(redis_client, TTL_S).apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))
    url = f"{ingress.replace('http://', 'ws://')}/v1/requests/{request_id}/stream"

    async def streams_open() -> float | None:
        return sample_value(await _metrics(http), STREAMS_GAUGE)

    async def streams_closed() -> bool:
        return await streams_open() == 0

    async with websockets.connect(url, additional_headers=bearer(api_keys.acme)):
        assert await wait_until(streams_open) == 1

    # The server notices the close on its next read, so the gauge drops shortly after.
    assert await wait_until(streams_closed) is True
