"""The store's per-arm metric sums against sums computed here from the same simulated events, through the telemetry service on chDB."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import nats
import pytest

from shared.bus import EventPublisher, make_broker
from shared.experiment_analysis.arm_data import ArmData, read_arms
from shared.experiment_analysis.metrics_config import load_metrics
from shared.prices import PriceTable, TokenPrice
from shared.settings import Settings
from shared.store_client import StoreClient
from tests.experiment_analysis.simulated_experiment import EXPERIMENT, events, expected_sums, simulate

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

STORE_WAIT_S = 30.0
PRICES = PriceTable(
    default=TokenPrice(prompt_usd_per_1m_tokens=1.0, completion_usd_per_1m_tokens=2.0),
    models={"model-control": TokenPrice(prompt_usd_per_1m_tokens=0.5, completion_usd_per_1m_tokens=1.5)},
)
# Sums of a few dozen float64 values, summed in another order.
RELATIVE_TOLERANCE = 1e-9


@pytest.fixture
async def stored(telemetry_app: Settings) -> AsyncIterator[tuple[StoreClient, str, list]]:
    client = await nats.connect(telemetry_app.resolved_nats_url)
    broker = make_broker(telemetry_app.resolved_nats_url)
    await broker.connect()
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    requests = simulate(seed=7, start=start)
    publisher = EventPublisher(broker)
    envelopes = events(tenant, requests)
    for envelope in envelopes:
        await publisher.publish(envelope)
    store = StoreClient(client)
    await _wait_rows(store, tenant, len(envelopes))
    yield store, tenant, requests
    await broker.stop()
    await client.close()


async def _wait_rows(store: StoreClient, tenant: str, expected: int) -> None:
    deadline = time.monotonic() + STORE_WAIT_S
    sql = "SELECT count() FROM events FINAL WHERE tenant = {tenant:String}"
    while (await store.query(sql, {"tenant": tenant})).rows != [[expected]]:
        if time.monotonic() > deadline:
            raise AssertionError(f"telemetry did not store {expected} events of {tenant} within {STORE_WAIT_S} s")
        await asyncio.sleep(0.2)


async def _arms(store: StoreClient, tenant: str) -> dict[str, ArmData]:
    arms = await read_arms(store, tenant=tenant, experiment=EXPERIMENT, metrics=load_metrics(), prices=PRICES)
    return {arm.variant: arm for arm in arms}


async def test_metric_sums_match_events(stored: tuple[StoreClient, str, list]) -> None:
    store, tenant, requests = stored
    expected, _mixed = expected_sums(requests, load_metrics(), PRICES)

    arms = await _arms(store, tenant)

    assert sorted(arms) == ["control", "treatment"]
    for variant, metrics in expected.items():
        for key, sums in metrics.items():
            found = arms[variant].metrics[key]
            assert found.units == sums.units, (variant, key)
            for name in ("sum_x", "sum_xx", "sum_y", "sum_yy", "sum_xy"):
                assert getattr(found, name) == pytest.approx(getattr(sums, name), rel=RELATIVE_TOLERANCE), (variant, key, name)


async def test_units_served_by_both_arms_left_out(stored: tuple[StoreClient, str, list]) -> None:
    store, tenant, requests = stored
    _expected, mixed = expected_sums(requests, load_metrics(), PRICES)

    arms = await _arms(store, tenant)

    assert mixed > 0
    assert sum(arm.mixed_units for arm in arms.values()) == mixed


async def test_exposures_counted_per_arm(stored: tuple[StoreClient, str, list]) -> None:
    store, tenant, requests = stored
    units_by_arm = {
        variant: {r.unit for r in requests if r.variant == variant and not r.forced} for variant in ("control", "treatment")
    }

    arms = await _arms(store, tenant)

    for variant, units in units_by_arm.items():
        assert arms[variant].exposure_units == len(units)
        assert arms[variant].exposures == len(units)


async def test_forced_unit_left_out(stored: tuple[StoreClient, str, list]) -> None:
    store, tenant, requests = stored
    forced = [request for request in requests if request.forced]
    unforced_units = {r.unit for r in requests if r.variant == "treatment" and not r.forced}

    arms = await _arms(store, tenant)

    assert forced
    assert arms["treatment"].exposure_units == len(unforced_units)


async def test_other_tenant_reads_nothing(stored: tuple[StoreClient, str, list]) -> None:
    store, _tenant, _requests = stored

    arms = await _arms(store, "another-tenant")

    assert arms == {}
