"""GET /v1/reports/{latency,throughput,cost,safety,errors} against a running ingress and a store API on real chDB."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app as cli_app

from services.telemetry.migrations import load_migrations
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from shared.prices import load_price_table

from tests.ingress.store_api import new_admin_key, serving_store_api
from tests.ingress.support import ApiKeys, bearer
from tests.reports.traffic import known_requests, request_events
from tests.telemetry.signal_events import rows

pytestmark = [pytest.mark.nats, pytest.mark.redis]

START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
RANGE = {"since": "2026-03-01T12:00:00", "until": "2026-03-01T14:00:00"}
# chDB stops a query after this long; no query of these tests comes near it.
MAX_EXECUTION_TIME_S = 10
ANALYTICS_MAX_RESULT_ROWS = 100
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
async def store_api(ingress_nats_url: str, clickhouse_dsn: str) -> AsyncIterator[None]:
    """Serve the store API from a store holding the known requests of tenants acme and globex (globex's without control)."""
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
    await store.migrate(load_migrations())
    builder = SignalBuilder()
    for tenant in ("acme", "globex"):
        requests = [spec for spec in known_requests() if tenant == "acme" or spec.variant != ("control", "model-a")]
        await store.insert_new(rows([event for spec in requests for event in request_events(tenant, START, spec)], builder))
    async with serving_store_api(ingress_nats_url, store, ANALYTICS_MAX_RESULT_ROWS):
        yield
    store.close()


@pytest.fixture
async def admin_key(http: httpx.AsyncClient, ingress_nats_url: str) -> str:
    # An invalid bucket gets 400 once the key is known, and 401 before.
    return await new_admin_key(http, ingress_nats_url, "reports-admin", "/v1/reports/latency?bucket=bad")


async def test_report_needs_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/reports/latency")

    assert response.status_code == 401


async def test_unknown_report_returns_400(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get("/v1/reports/speed", headers=bearer(api_keys.acme))

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "name"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"bucket": "2h"}, "bucket"),
        ({"since": "2026-03-02T00:00:00", "until": "2026-03-01T00:00:00"}, "since"),
        ({"since": "2026-01-01T00:00:00", "until": "2026-03-01T00:00:00", "bucket": "1m"}, "bucket"),
        ({"variant": ""}, "variant"),
    ],
)
async def test_invalid_filter_returns_400(http: httpx.AsyncClient, api_keys: ApiKeys, params: dict, field: str) -> None:
    response = await http.get("/v1/reports/throughput", params=params, headers=bearer(api_keys.acme))

    assert response.status_code == 400
    assert response.json()["error"]["field"] == field


async def test_other_tenant_returns_403(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get("/v1/reports/latency", params={"tenant": "globex"}, headers=bearer(api_keys.acme))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden_tenant"


async def test_report_without_store_returns_503(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get("/v1/reports/errors", headers=bearer(api_keys.acme))

    assert response.status_code == 503


@pytest.mark.clickhouse
async def test_latency_counts_callers_completions(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await http.get("/v1/reports/latency", params=RANGE, headers=bearer(api_keys.acme))

    assert response.status_code == 200
    body = response.json()
    completed = sum(spec.outcome == "completed" for spec in known_requests())
    assert sum(row["completed"] for row in body["rows"]) == completed
    assert {row["variant"] for row in body["rows"]} == {"control", "treatment"}


@pytest.mark.clickhouse
async def test_cost_prices_with_shipped_table(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await http.get("/v1/reports/cost", params={**RANGE, "variant": "treatment"}, headers=bearer(api_keys.acme))

    assert response.status_code == 200
    price = load_price_table().price_of("model-b")
    treatment = [spec for spec in known_requests() if spec.variant == ("treatment", "model-b")]
    prompt_tokens = sum(spec.prompt_tokens for spec in treatment)
    output_tokens = sum(spec.output_tokens for spec in treatment)
    assert response.json()["total_usd"] == pytest.approx(price.cost_usd(prompt_tokens, output_tokens))


@pytest.mark.clickhouse
async def test_admin_reports_named_tenant(http: httpx.AsyncClient, admin_key: str, store_api: None) -> None:
    params = {**RANGE, "tenant": "globex", "bucket": "1d"}

    response = await http.get("/v1/reports/errors", params=params, headers=bearer(admin_key))

    assert response.status_code == 200
    globex = [spec for spec in known_requests() if spec.variant != ("control", "model-a")]
    assert response.json()["rows"][0]["requests"] == len(globex)


@pytest.mark.clickhouse
async def test_safety_report_over_http(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await http.get("/v1/reports/safety", params={**RANGE, "bucket": "1d"}, headers=bearer(api_keys.acme))

    assert response.status_code == 200
    stages = {row["stage"]: row for row in response.json()["stages"]}
    assert stages["screening"]["checked"] == len(known_requests())
    assert stages["screening"]["blocked"] == 2
    assert stages["moderation"]["blocked"] == 1
    requests = known_requests()
    assert stages["screening"]["flagged"] == sum("flag" in spec.screening_actions.values() for spec in requests)
    assert stages["screening"]["redacted"] == sum("redact" in spec.screening_actions.values() for spec in requests)
    assert stages["moderation"]["flagged"] == sum("flag" in spec.moderation_actions.values() for spec in requests)
    assert stages["moderation"]["redacted"] == sum("redact" in spec.moderation_actions.values() for spec in requests)
    scanners = {(row["stage"], row["scanner"]): row for row in response.json()["scanners"]}
    assert scanners[("screening", "PII")]["redactions"] == 2


@pytest.mark.clickhouse
async def test_cli_latency_table_and_chart(ingress: str, api_keys: ApiKeys, store_api: None, tmp_path: Path) -> None:
    chart = tmp_path / "latency.html"
    arguments = ["report", "latency", "--since", RANGE["since"], "--until", RANGE["until"], "--chart", str(chart)]

    # In a thread, because the CLI runs its own event loop and this loop serves the store API.
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 0, result.output
    assert "model-a" in result.output
    assert "model-b" in result.output
    page = chart.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    svg = ElementTree.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])
    # One line per model and variant, one dot per bucket of each.
    assert len(svg.findall(f"{SVG}polyline")) == 2
    assert len(svg.findall(f"{SVG}circle")) == 4


@pytest.mark.clickhouse
async def test_cli_errors_lists_causes(ingress: str, api_keys: ApiKeys, store_api: None) -> None:
    arguments = ["report", "errors", "--variant", "treatment", "--bucket", "1d", "--since", RANGE["since"]]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 0, result.output
    assert "backend_timeout" in result.output
    assert "client_request" in result.output
    assert "client_disconnected" not in result.output


@pytest.mark.clickhouse
async def test_cli_safety_actions_by_scanner(ingress: str, api_keys: ApiKeys, store_api: None) -> None:
    arguments = ["report", "safety", "--bucket", "1d", "--since", RANGE["since"], "--until", RANGE["until"]]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 0, result.output
    screening = result.output[result.output.index("screening actions by scanner") : result.output.index("moderation actions")]
    # The PII row: runs, blocks, flags and redactions, as c3 and t1 of the known requests give them.
    pii_rows = [line.split("│") for line in screening.splitlines() if "│ PII " in line]
    assert [[cell.strip() for cell in row[2:7]] for row in pii_rows] == [["PII", "2", "0", "0", "2"]]


async def test_cli_rejects_png_chart(ingress: str, api_keys: ApiKeys, tmp_path: Path) -> None:
    arguments = ["report", "throughput", "--chart", str(tmp_path / "throughput.png")]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 1
    assert "matplotlib" in result.output


async def test_cli_rejects_bucket_for_drift(ingress: str, api_keys: ApiKeys) -> None:
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["report", "drift", "--bucket", "1h"])

    assert result.exit_code == 1
    assert "--bucket" in result.output


def _run_cli(ingress: str, api_key: str, arguments: list[str]) -> Result:
    return CliRunner().invoke(cli_app, [*arguments, "--url", ingress, "--api-key", api_key])
