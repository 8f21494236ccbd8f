"""GET /v1/reports/summary against a running ingress, with and without a telemetry service."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faststream.nats import NatsBroker

from shared.bus import EventPublisher, make_broker
from shared.events import Verdict
from shared.settings import REPO_ROOT

from tests.ingress import event_builders as events
from tests.ingress.support import ApiKeys, bearer, wait_until
from tests.support.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# Telemetry imports chDB and opens ClickHouse before it serves queries, then
# stores events about once a second. The limit only stops a broken run from hanging.
TELEMETRY_WAIT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@pytest.fixture
def telemetry(ingress_nats_url: str, tmp_path: Path) -> Iterator[Path]:
    """Run `python -m services.telemetry` on the private nats-server with its own chDB folder; yield its log file."""
    log_path = tmp_path / "telemetry.log"
    environment = {
        **os.environ,
        "SLUICE_NATS_URL": ingress_nats_url,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = spawn_service("services.telemetry", environment, log_path)
    try:
        yield log_path
    finally:
        process.terminate()
        process.wait(STOP_TIMEOUT_S)


@pytest.fixture
async def publisher(ingress_nats_url: str, ingress: str) -> AsyncIterator[EventPublisher]:
    broker: NatsBroker = make_broker(ingress_nats_url)
    await broker.connect()
    yield EventPublisher(broker)
    await broker.stop()


async def test_summary_needs_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/reports/summary")

    assert response.status_code == 401


async def test_summary_without_telemetry_returns_503(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    # The private nats-server of these tests runs no telemetry service here, so no one responds to the store query.
    response = await http.get("/v1/reports/summary", headers=bearer(api_keys.acme))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"


async def test_summary_rejects_reversed_range(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    params = {"since": "2026-12-02T00:00:00", "until": "2026-12-01T00:00:00"}

    response = await http.get("/v1/reports/summary", params=params, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "since"


async def test_summary_rejects_invalid_datetime(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get("/v1/reports/summary", params={"since": "yesterday"}, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "since"


@pytest.mark.clickhouse
async def test_summary_counts_callers_requests(
    http: httpx.AsyncClient, api_keys: ApiKeys, publisher: EventPublisher, telemetry: Path
) -> None:
    completed = events.accepted(tenant="reporting")
    blocked = events.accepted(tenant="reporting")
    other_tenant = events.accepted(tenant="acme")
    sequence = [*events.completed_sequence(completed), blocked, events.screened(blocked, Verdict.BLOCKED), other_tenant]
    for envelope in sequence:
        await publisher.publish(envelope)

    async def summary_with_both() -> dict[str, Any] | None:
        response = await http.get("/v1/reports/summary", headers=bearer(api_keys.reporting))
        body = response.json() if response.status_code == 200 else None
        return body if body and body["requests"] == 2 else None

    summary = await wait_until(summary_with_both, timeout_s=TELEMETRY_WAIT_TIMEOUT_S)
    assert summary is not None, telemetry.read_text()[-2000:]
    assert summary["completed"] == 1
    assert summary["blocked_by"] == {"PromptInjection": 1}
    assert summary["ttft"]["samples"] == 1
