"""GET /v1/reports/feedback and `sluice report feedback` against a running ingress and a store API on real chDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app as cli_app
from services.telemetry.store import EventStore
from shared.events import AssignedPayload, Envelope, EventType, FeedbackKind, FeedbackPayload, VariantSpec

from services.ingress.feedback import feedback_event_id
from tests.ingress.feedback_store import MAX_EXECUTION_TIME_S, serving_feedback_store, store_events
from tests.ingress.support import ApiKeys, bearer
from tests.telemetry.signal_events import accepted, at

pytestmark = [pytest.mark.nats, pytest.mark.redis, pytest.mark.clickhouse]

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
RANGE = {"since": "2026-03-01T12:00:00", "until": "2026-03-01T13:00:00"}


def _requested(tenant: str, request_id: str, variant: str | None) -> list[Envelope]:
    """Return the accepted event and, with a variant, the assigned event of one request."""
    first = at(accepted(request_id, tenant=tenant), START)
    if variant is None:
        return [first]
    payload = AssignedPayload(
        request=first.parsed_payload().request,
        experiment_key="exp-1",
        variant=VariantSpec(key=variant, backend="tgi", model=f"model-{variant}"),
        hash_attribute="request_id",
    )
    return [first, at(first.follow_up(EventType.ASSIGNED, payload), START)]


def _feedback(tenant: str, request_id: str, key: str, kind: FeedbackKind, value: float, minute: int = 10) -> Envelope:
    payload = FeedbackPayload(kind=kind, value=value, idempotency_key=key, channel="http")
    return Envelope(
        event_id=feedback_event_id(tenant, request_id, key),
        type=EventType.FEEDBACK,
        request_id=request_id,
        tenant=tenant,
        ts=START + timedelta(minutes=minute),
        payload=payload.model_dump(mode="json"),
    )


def _traffic() -> list[Envelope]:
    """Feedback of acme on a control, a treatment and an unassigned request, and feedback that the report must leave out."""
    rating, thumbs, conversion, value = FeedbackKind.RATING, FeedbackKind.THUMBS, FeedbackKind.CONVERSION, FeedbackKind.VALUE
    events = _requested("acme", "r-control", "control") + _requested("acme", "r-treatment", "treatment")
    events += _requested("acme", "r-blocked", None) + _requested("globex", "r-globex", "control")
    events += [
        _feedback("acme", "r-control", "k1", rating, 4),
        _feedback("acme", "r-control", "k2", rating, 2),
        _feedback("acme", "r-control", "k3", thumbs, 1),
        _feedback("acme", "r-treatment", "k1", rating, 5),
        _feedback("acme", "r-treatment", "k2", thumbs, 0),
        _feedback("acme", "r-treatment", "k3", thumbs, 1),
        _feedback("acme", "r-treatment", "k4", conversion, 1),
        _feedback("acme", "r-treatment", "k5", value, 10.5),
        _feedback("acme", "r-blocked", "k1", thumbs, 0),
        # Outside the range, and another tenant's.
        _feedback("acme", "r-control", "k4", rating, 1, minute=70),
        _feedback("globex", "r-globex", "k1", rating, 1),
    ]
    return events


@pytest.fixture
async def store_api(ingress_nats_url: str, clickhouse_dsn: str, ingress: str) -> AsyncIterator[None]:
    async with serving_feedback_store(ingress_nats_url, clickhouse_dsn) as store:
        await store_events(store, _traffic())
        # A copy of one event with the same id and a later ts, as a second
        # telemetry process inserts it after a lost ack. The first store
        # would skip the id, because it remembers the ids it inserted.
        second_writer = EventStore.open(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
        try:
            await store_events(second_writer, [_feedback("acme", "r-control", "k1", FeedbackKind.RATING, 4, minute=20)])
        finally:
            second_writer.close()
        yield


async def test_feedback_report_per_variant(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await http.get("/v1/reports/feedback", params=RANGE, headers=bearer(api_keys.acme))

    assert response.status_code == 200
    rows = {row["variant"]: row for row in response.json()["rows"]}
    assert sorted(rows) == ["", "control", "treatment"]
    assert rows["control"]["ratings"] == 2
    assert rows["control"]["mean_rating"] == pytest.approx(3.0)
    assert rows["control"]["thumbs_up_rate"] == pytest.approx(1.0)
    assert rows["control"]["conversion_rate"] is None
    assert rows["treatment"]["thumbs"] == 2
    assert rows["treatment"]["thumbs_up_rate"] == pytest.approx(0.5)
    assert rows["treatment"]["conversions"] == 1
    assert rows["treatment"]["conversion_rate"] == pytest.approx(1.0)
    assert rows["treatment"]["value_count"] == 1
    assert rows["treatment"]["value_sum"] == pytest.approx(10.5)
    assert rows[""]["thumbs"] == 1
    assert rows[""]["thumbs_up_rate"] == pytest.approx(0.0)
    assert rows[""]["mean_rating"] is None


async def test_feedback_report_filters_variant(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await http.get("/v1/reports/feedback", params={**RANGE, "variant": "treatment"}, headers=bearer(api_keys.acme))

    assert response.status_code == 200
    assert [row["variant"] for row in response.json()["rows"]] == ["treatment"]


async def test_cli_prints_feedback_report(ingress: str, api_keys: ApiKeys, store_api: None) -> None:
    arguments = ["report", "feedback", "--since", RANGE["since"], "--until", RANGE["until"]]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 0, result.output
    assert "feedback by kind" in result.output
    assert "treatment" in result.output
    assert "(none)" in result.output


def _run_cli(ingress: str, api_key: str, arguments: list[str]) -> Result:
    return CliRunner().invoke(cli_app, [*arguments, "--url", ingress, "--api-key", api_key])
