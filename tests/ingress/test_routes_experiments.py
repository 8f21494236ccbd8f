"""GET /v1/reports/experiment/{key} and `sluice report experiment KEY` against a running ingress and a store API on real chDB.

The ingress serves the shipped experiments file, whose experiment
`sampling-temperature` has the arms control and cooler at 50/50. The store
contains a simulated run of that experiment for tenant acme.
"""

from __future__ import annotations

import asyncio
import re
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
from shared.experiment_analysis.metrics_config import load_metrics
from shared.prices import load_price_table
from tests.experiment_analysis.simulated_experiment import SimulatedRequest, events, expected_sums, simulate
from tests.ingress.support import ApiKeys, bearer
from tests.ingress.store_api import serving_store_api
from tests.telemetry.signal_events import rows

pytestmark = [pytest.mark.nats, pytest.mark.redis]

EXPERIMENT = "sampling-temperature"
ARMS = ("control", "cooler")
START = datetime(2026, 4, 1, 12, 0, tzinfo=timezone.utc)
# chDB stops a query after this long; no query of these tests comes near it.
MAX_EXECUTION_TIME_S = 10
ANALYTICS_MAX_RESULT_ROWS = 100
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def requests() -> list[SimulatedRequest]:
    return simulate(seed=11, start=START, experiment=EXPERIMENT, arms=ARMS, units_per_arm=20)


@pytest.fixture
async def store_api(ingress_nats_url: str, clickhouse_dsn: str, requests: list[SimulatedRequest]) -> AsyncIterator[None]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=MAX_EXECUTION_TIME_S)
    await store.migrate(load_migrations())
    await store.insert_new(rows(events("acme", requests), SignalBuilder()))
    async with serving_store_api(ingress_nats_url, store, ANALYTICS_MAX_RESULT_ROWS):
        yield
    store.close()


async def test_unknown_experiment_returns_404(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get("/v1/reports/experiment/no-such-test", headers=bearer(api_keys.acme))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "experiment_not_found"
    assert EXPERIMENT in response.json()["error"]["message"]


async def test_other_tenant_returns_403(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    response = await http.get(f"/v1/reports/experiment/{EXPERIMENT}", params={"tenant": "globex"}, headers=bearer(api_keys.acme))

    assert response.status_code == 403, response.text


async def test_reversed_range_returns_422(http: httpx.AsyncClient, api_keys: ApiKeys) -> None:
    params = {"since": "2026-04-02T00:00:00", "until": "2026-04-01T00:00:00"}

    response = await http.get(f"/v1/reports/experiment/{EXPERIMENT}", params=params, headers=bearer(api_keys.acme))

    assert response.status_code == 422
    assert response.json()["error"]["field"] == "since"


@pytest.mark.clickhouse
async def test_report_matches_simulated_units(
    http: httpx.AsyncClient, api_keys: ApiKeys, store_api: None, requests: list[SimulatedRequest]
) -> None:
    expected, mixed = expected_sums(requests, load_metrics(), load_price_table())

    response = await http.get(f"/v1/reports/experiment/{EXPERIMENT}", headers=bearer(api_keys.acme))

    assert response.status_code == 200
    body = response.json()
    assert body["control"] == "control"
    assert [arm["variant"] for arm in body["arms"]] == list(ARMS)
    assert [arm["units"] for arm in body["arms"]] == [expected[arm]["conversion_rate"].units for arm in ARMS]
    assert sum(arm["mixed_units"] for arm in body["arms"]) == mixed
    conversion = next(metric for metric in body["metrics"] if metric["key"] == "conversion_rate")
    for arm in conversion["arms"]:
        sums = expected[arm["variant"]]["conversion_rate"]
        assert arm["estimate"]["value"] == pytest.approx(sums.sum_x / sums.units, rel=1e-12)
    assert body["sample_ratio"]["observed_units"] == [arm["exposure_units"] for arm in body["arms"]]
    assert body["verdict"]


@pytest.mark.clickhouse
async def test_cli_prints_tables_and_chart(ingress: str, api_keys: ApiKeys, store_api: None, tmp_path: Path) -> None:
    chart = tmp_path / "experiment.html"

    # In a thread, because the CLI runs its own event loop and this loop serves the store API.
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["report", "experiment", EXPERIMENT, "--chart", str(chart)])

    assert result.exit_code == 0, result.output
    assert "cooler" in result.output
    assert "sample ratio check" in result.output
    assert "verdict:" in result.output
    page = chart.read_text(encoding="utf-8")
    svg = ElementTree.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])
    drawn = int(re.search(r"(\d+) intervals\s*$", result.output).group(1))  # type: ignore[union-attr]
    assert len(svg.findall(f"{SVG}circle")) == drawn
    assert drawn > 0


async def test_cli_needs_experiment_key(ingress: str, api_keys: ApiKeys) -> None:
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["report", "experiment"])

    assert result.exit_code == 1
    assert "missing experiment key" in result.output


async def test_cli_rejects_key_for_other_report(ingress: str, api_keys: ApiKeys) -> None:
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["report", "latency", EXPERIMENT])

    assert result.exit_code == 1
    assert "no second argument" in result.output


def _run_cli(ingress: str, api_key: str, arguments: list[str]) -> Result:
    return CliRunner().invoke(cli_app, [*arguments, "--url", ingress, "--api-key", api_key])
