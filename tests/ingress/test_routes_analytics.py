"""POST /v1/analytics/query against a running ingress and a store API on real chDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app as cli_app

from tests.ingress.store_api import new_admin_key, serving_store_api
from tests.ingress.support import ApiKeys, bearer
from tests.telemetry.analytics_support import ROWS_BY_TENANT, open_seeded_store

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# A small row cap, so that a test reaches it with a few rows.
MAX_RESULT_ROWS = 5
# chDB stops a query after this long; no query of these tests comes near it.
MAX_EXECUTION_TIME_S = 10


@pytest.fixture
async def store_api(ingress_nats_url: str, clickhouse_dsn: str) -> AsyncIterator[None]:
    """Serve the store API on the ingress's NATS server from a store seeded with `ROWS_BY_TENANT`."""
    store = await open_seeded_store(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
    async with serving_store_api(ingress_nats_url, store, MAX_RESULT_ROWS):
        yield
    store.close()


@pytest.fixture
async def admin_key(http: httpx.AsyncClient, ingress_nats_url: str) -> str:
    # Any authenticated GET returns a status other than 401 once the key is known.
    return await new_admin_key(http, ingress_nats_url, "analytics-admin", "/v1/reports/drift/history")


async def _post(http: httpx.AsyncClient, key: str, sql: str, **fields: object) -> httpx.Response:
    return await http.post("/v1/analytics/query", json={"sql": sql, **fields}, headers=bearer(key))


async def test_query_needs_key(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/analytics/query", json={"sql": "SELECT 1"})

    assert response.status_code == 401


async def test_query_without_store_returns_503(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await _post(http, api_keys.acme, "SELECT 1")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "store_unavailable"


async def test_query_without_sql_returns_422(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.post("/v1/analytics/query", json={}, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "sql"


@pytest.mark.clickhouse
async def test_each_key_counts_own_tenant(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    acme = await _post(http, api_keys.acme, "SELECT count() AS events FROM events")
    globex = await _post(http, api_keys.globex, "SELECT count() AS events FROM events")

    assert acme.status_code == 200
    assert acme.json() == {"columns": ["events"], "rows": [[ROWS_BY_TENANT["acme"]]]}
    assert globex.json() == {"columns": ["events"], "rows": [[ROWS_BY_TENANT["globex"]]]}


@pytest.mark.clickhouse
async def test_other_tenant_filter_sees_nothing(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await _post(http, api_keys.acme, "SELECT count() FROM events WHERE tenant = 'globex'")

    assert response.json()["rows"] == [[0]]


@pytest.mark.clickhouse
async def test_or_true_sees_own_tenant(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    sql = "SELECT DISTINCT tenant FROM events WHERE tenant = 'globex' OR 1 = 1"

    response = await _post(http, api_keys.acme, sql)

    assert response.json()["rows"] == [["acme"]]


@pytest.mark.clickhouse
async def test_parameters_bound(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    sql = "SELECT count() FROM events WHERE request_id = {request_id:String}"

    response = await _post(http, api_keys.globex, sql, parameters={"request_id": "request-1"})

    assert response.json()["rows"] == [[1]]


@pytest.mark.clickhouse
@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE events", "starts with 'DROP'"),
        ("SELECT name FROM system.tables", "system.tables is a system table"),
        ("SELECT * FROM url('http://127.0.0.1:1/x', CSV)", "table function url()"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS clauses are not allowed"),
    ],
)
async def test_hostile_query_returns_400(
    http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None, sql: str, message: str
) -> None:
    response = await _post(http, api_keys.acme, sql)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_query"
    assert error["field"] == "sql"
    assert message in error["message"]


@pytest.mark.clickhouse
async def test_admin_key_counts_every_tenant(http: httpx.AsyncClient, admin_key: str, store_api: None) -> None:
    response = await _post(http, admin_key, "SELECT tenant, count() AS events FROM events GROUP BY tenant ORDER BY tenant")

    assert response.status_code == 200
    assert response.json()["rows"] == [[tenant, count] for tenant, count in sorted(ROWS_BY_TENANT.items())]


@pytest.mark.clickhouse
async def test_admin_hostile_query_returns_400(http: httpx.AsyncClient, admin_key: str, store_api: None) -> None:
    response = await _post(http, admin_key, "SELECT name FROM system.tables")

    assert response.status_code == 400
    assert "system.tables is a system table" in response.json()["error"]["message"]


@pytest.mark.clickhouse
async def test_result_over_cap_returns_400(http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None) -> None:
    response = await _post(http, api_keys.acme, "SELECT number FROM numbers(6)")

    assert response.status_code == 400
    assert f"more than {MAX_RESULT_ROWS} rows, the analytics row cap" in response.json()["error"]["message"]


@pytest.mark.clickhouse
async def test_cli_prints_result_table(ingress: str, api_keys: ApiKeys, store_api: None) -> None:
    arguments = ["query", "SELECT tenant, count() AS events FROM events GROUP BY tenant"]

    # In a thread, because the CLI runs its own event loop and this loop serves the store API.
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.globex, arguments)

    assert result.exit_code == 0, result.output
    assert "globex" in result.output
    assert "acme" not in result.output
    assert "1 row" in result.output


@pytest.mark.clickhouse
async def test_cli_reports_rejection(ingress: str, api_keys: ApiKeys, store_api: None) -> None:
    arguments = ["query", "SELECT name FROM system.tables"]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert result.exit_code == 1
    assert "HTTP 400" in result.output
    assert "system table" in result.output


def _run_cli(ingress: str, api_key: str, arguments: list[str]) -> Result:
    return CliRunner().invoke(cli_app, [*arguments, "--url", ingress, "--api-key", api_key])
