"""Each canned report against numbers computed here from the requests the test sent through the telemetry service.

Percentiles are compared with numpy.percentile's default (linear
interpolation), which is what ClickHouse's quantilesExactInclusive returns.
Counts and token sums are compared exactly.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import nats
import numpy as np
import pytest
from nats.aio.client import Client as NatsClient

from shared.analytics_reports import cost_report, errors_report, latency_report, safety_report, throughput_report
from shared.bus import EventPublisher, make_broker
from shared.prices import PriceTable, TokenPrice
from shared.report_filters import ReportFilterError, ReportFilters
from shared.settings import Settings
from shared.store_client import StoreClient
from tests.reports.traffic import RequestSpecification, known_requests, request_events

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

STORE_WAIT_S = 20.0
LEVELS = [50, 95, 99]
HOUR_S = 3600


class Traffic:
    """The known requests of one tenant, stored, and the report filters over their two hours."""

    def __init__(self, store: StoreClient, tenant: str, start: datetime) -> None:
        self.store = store
        self.tenant = tenant
        self.start = start
        self.requests = known_requests()

    def filters(self, **overrides: object) -> ReportFilters:
        values = {"tenant": self.tenant, "since": self.start, "until": self.start + timedelta(hours=2), "bucket": "1h"}
        return ReportFilters(**{**values, **overrides})

    def bucket_start(self, spec: RequestSpecification) -> datetime:
        return self.start + timedelta(hours=spec.bucket)


@pytest.fixture
async def traffic(telemetry_app: Settings) -> AsyncIterator[Traffic]:
    client: NatsClient = await nats.connect(telemetry_app.resolved_nats_url)
    broker = make_broker(telemetry_app.resolved_nats_url)
    await broker.connect()
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    store = StoreClient(client)
    traffic = Traffic(store, f"tenant-{uuid.uuid4().hex[:8]}", start)
    other_tenant = f"other-{uuid.uuid4().hex[:8]}"
    publisher = EventPublisher(broker)
    expected_rows = 0
    for tenant in (traffic.tenant, other_tenant):
        for spec in traffic.requests:
            for envelope in request_events(tenant, start, spec):
                await publisher.publish(envelope)
                expected_rows += tenant == traffic.tenant
    await _wait_signal_rows(store, traffic.tenant, expected_rows)
    await _wait_signal_rows(store, other_tenant, expected_rows)
    yield traffic
    await broker.stop()
    await client.close()


async def _wait_signal_rows(store: StoreClient, tenant: str, expected: int) -> None:
    deadline = time.monotonic() + STORE_WAIT_S
    sql = "SELECT count() FROM request_signals FINAL WHERE tenant = {tenant:String}"
    while (await store.query(sql, {"tenant": tenant})).rows != [[expected]]:
        assert time.monotonic() < deadline, f"telemetry did not store {expected} signal rows of {tenant} in {STORE_WAIT_S} s"
        await asyncio.sleep(0.05)


def _group(specs: list[RequestSpecification], traffic: Traffic) -> dict[tuple, list[RequestSpecification]]:
    groups: dict[tuple, list[RequestSpecification]] = defaultdict(list)
    for spec in specs:
        assert spec.variant is not None
        variant_key, model = spec.variant
        groups[(traffic.bucket_start(spec), model, variant_key)].append(spec)
    return dict(sorted(groups.items()))


def _percentiles(values: list[float]) -> list[float]:
    return [float(value) for value in np.percentile(values, LEVELS)]


async def test_latency_percentiles_per_model_variant(traffic: Traffic) -> None:
    report = await latency_report(traffic.store, traffic.filters())

    completed = [spec for spec in traffic.requests if spec.outcome == "completed"]
    expected = _group(completed, traffic)
    assert [(row.bucket_start, row.model, row.variant) for row in report.rows] == list(expected)
    for row, specs in zip(report.rows, expected.values()):
        assert row.completed == len(specs)
        ttft = row.ttft
        assert [ttft.p50_ms, ttft.p95_ms, ttft.p99_ms] == pytest.approx(_percentiles([s.ttft_ms for s in specs]))
        total = row.total
        assert [total.p50_ms, total.p95_ms, total.p99_ms] == pytest.approx(_percentiles([s.total_ms for s in specs]))
        queue = row.queue
        assert [queue.p50_ms, queue.p95_ms, queue.p99_ms] == pytest.approx(_percentiles([s.queue_ms for s in specs]))
        assert ttft.samples == len(specs)


async def test_latency_variant_filter(traffic: Traffic) -> None:
    report = await latency_report(traffic.store, traffic.filters(variant="treatment"))

    treatment = [spec for spec in traffic.requests if spec.outcome == "completed" and spec.variant == ("treatment", "model-b")]
    assert {row.variant for row in report.rows} == {"treatment"}
    assert sum(row.completed for row in report.rows) == len(treatment)


async def test_throughput_tokens_and_rates(traffic: Traffic) -> None:
    report = await throughput_report(traffic.store, traffic.filters())

    generations = [spec for spec in traffic.requests if spec.variant is not None]
    expected = _group(generations, traffic)
    assert [(row.bucket_start, row.model, row.variant) for row in report.rows] == list(expected)
    for row, specs in zip(report.rows, expected.values()):
        completed = sum(spec.outcome == "completed" for spec in specs)
        prompt_tokens = sum(spec.prompt_tokens for spec in specs)
        output_tokens = sum(spec.output_tokens for spec in specs)
        assert row.completed == completed
        assert row.prompt_tokens == prompt_tokens
        assert row.output_tokens == output_tokens
        assert row.requests_per_s == pytest.approx(completed / HOUR_S)
        assert row.tokens_per_s == pytest.approx((prompt_tokens + output_tokens) / HOUR_S)


async def test_throughput_rate_uses_seconds_in_range(traffic: Traffic) -> None:
    # A range that ends 15 minutes into the first hour holds only c1 to c4, t1 and t2 (minutes 5 to 10).
    filters = traffic.filters(until=traffic.start + timedelta(minutes=15))

    report = await throughput_report(traffic.store, filters)

    assert sum(row.completed for row in report.rows) == 6
    for row in report.rows:
        assert row.requests_per_s == pytest.approx(row.completed / (15 * 60))


async def test_cost_uses_price_per_model(traffic: Traffic) -> None:
    prices = PriceTable(
        default=TokenPrice(prompt_usd_per_1m_tokens=1.0, completion_usd_per_1m_tokens=2.0),
        models={"model-a": TokenPrice(prompt_usd_per_1m_tokens=3.0, completion_usd_per_1m_tokens=5.0)},
    )

    report = await cost_report(traffic.store, traffic.filters(), prices)

    expected_usd: dict[str, float] = defaultdict(float)
    for spec in traffic.requests:
        if spec.variant is None:
            continue
        prompt_price, completion_price = (3.0, 5.0) if spec.variant[1] == "model-a" else (1.0, 2.0)
        expected_usd[spec.variant[1]] += (spec.prompt_tokens * prompt_price + spec.output_tokens * completion_price) / 1e6
    reported_usd: dict[str, float] = defaultdict(float)
    for row in report.rows:
        reported_usd[row.model] += row.cost_usd
    assert reported_usd == pytest.approx(expected_usd)
    assert report.total_usd == pytest.approx(sum(expected_usd.values()))


async def test_safety_counts_per_stage(traffic: Traffic) -> None:
    report = await safety_report(traffic.store, traffic.filters())

    expected = []
    for bucket in (0, 1):
        specs = [spec for spec in traffic.requests if spec.bucket == bucket]
        moderated = [spec for spec in specs if spec.outcome == "completed"]
        bucket_start = traffic.start + timedelta(hours=bucket)
        screening_blocked = sum(spec.screening_blocked_by is not None for spec in specs)
        moderation_blocked = sum(spec.moderation_blocked_by is not None for spec in moderated)
        screening_flagged = sum("flag" in spec.screening_actions.values() for spec in specs)
        moderation_flagged = sum("flag" in spec.moderation_actions.values() for spec in moderated)
        screening_redacted = sum("redact" in spec.screening_actions.values() for spec in specs)
        moderation_redacted = sum("redact" in spec.moderation_actions.values() for spec in moderated)
        refusals = sum(spec.refusal for spec in moderated)
        expected.append(
            (bucket_start, "moderation", len(moderated), moderation_blocked, moderation_flagged, moderation_redacted, refusals)
        )
        expected.append((bucket_start, "screening", len(specs), screening_blocked, screening_flagged, screening_redacted, 0))
    reported = [(r.bucket_start, r.stage, r.checked, r.blocked, r.flagged, r.redacted, r.refusals) for r in report.stages]
    assert reported == expected
    # The known requests flag and redact in both stages, so none of these totals is zero.
    assert sum(row.flagged for row in report.stages if row.stage == "screening") == 1
    assert sum(row.redacted for row in report.stages if row.stage == "screening") == 2
    assert sum(row.flagged for row in report.stages if row.stage == "moderation") == 1
    assert sum(row.redacted for row in report.stages if row.stage == "moderation") == 1


async def test_safety_counts_per_scanner(traffic: Traffic) -> None:
    report = await safety_report(traffic.store, traffic.filters())

    scores: dict[tuple, list[float]] = defaultdict(list)
    blocks: dict[tuple, int] = defaultdict(int)
    flags: dict[tuple, int] = defaultdict(int)
    redactions: dict[tuple, int] = defaultdict(int)
    for spec in traffic.requests:
        bucket_start = traffic.bucket_start(spec)
        stages = [("screening", spec.screening_scores, spec.screening_blocked_by, spec.screening_actions)]
        if spec.outcome == "completed":
            stages.append(("moderation", spec.moderation_scores, spec.moderation_blocked_by, spec.moderation_actions))
        for stage, stage_scores, blocked_by, actions in stages:
            for scanner, score in stage_scores.items():
                key = (bucket_start, stage, scanner)
                scores[key].append(score)
                blocks[key] += scanner == blocked_by
                flags[key] += actions.get(scanner) == "flag"
                redactions[key] += actions.get(scanner) == "redact"
    keys = sorted(scores)
    assert [(row.bucket_start, row.stage, row.scanner) for row in report.scanners] == keys
    for row, key in zip(report.scanners, keys):
        assert row.runs == len(scores[key])
        assert row.blocks == blocks[key]
        assert row.flags == flags[key]
        assert row.redactions == redactions[key]
        assert row.mean_risk_score == pytest.approx(float(np.mean(scores[key])))
        assert row.max_risk_score == pytest.approx(max(scores[key]))
    # c3 and t1 had PII redacted at screening, and b2's second blocking scanner counts no block.
    assert sum(row.redactions for row in report.scanners if (row.stage, row.scanner) == ("screening", "PII")) == 2
    assert sum(row.blocks for row in report.scanners if (row.stage, row.scanner) == ("screening", "PromptInjection")) == 1


async def test_safety_variant_filter_keeps_assigned_screening(traffic: Traffic) -> None:
    report = await safety_report(traffic.store, traffic.filters(variant="control"))

    control = [spec for spec in traffic.requests if spec.variant == ("control", "model-a")]
    screening = [row for row in report.stages if row.stage == "screening"]
    moderation = [row for row in report.stages if row.stage == "moderation"]
    assert sum(row.checked for row in screening) == len(control)
    assert sum(row.blocked for row in screening) == 0
    assert sum(row.checked for row in moderation) == sum(spec.outcome == "completed" for spec in control)


async def test_errors_rates_and_causes(traffic: Traffic) -> None:
    report = await errors_report(traffic.store, traffic.filters())

    expected_rows = []
    expected_causes = []
    for bucket in (0, 1):
        specs = [spec for spec in traffic.requests if spec.bucket == bucket]
        bucket_start = traffic.start + timedelta(hours=bucket)
        failed = [spec for spec in specs if spec.outcome == "failed"]
        cancelled = [spec for spec in specs if spec.outcome == "cancelled"]
        expected_rows.append((bucket_start, len(specs), len(failed), len(cancelled)))
        counts: dict[tuple, int] = defaultdict(int)
        for spec in cancelled:
            counts[("cancelled", spec.cancel_reason)] += 1
        for spec in failed:
            counts[("failed", spec.error_code)] += 1
        expected_causes += [(bucket_start, outcome, cause, count) for (outcome, cause), count in sorted(counts.items())]
    assert [(r.bucket_start, r.requests, r.failed, r.cancelled) for r in report.rows] == expected_rows
    for row in report.rows:
        assert row.error_rate == pytest.approx(row.failed / row.requests)
        assert row.cancellation_rate == pytest.approx(row.cancelled / row.requests)
    assert [(c.bucket_start, c.outcome, c.cause, c.count) for c in report.causes] == expected_causes


async def test_errors_variant_counts_assigned_requests(traffic: Traffic) -> None:
    report = await errors_report(traffic.store, traffic.filters(variant="treatment", bucket="1d", since=None, until=None))

    treatment = [spec for spec in traffic.requests if spec.variant == ("treatment", "model-b")]
    assert sum(row.requests for row in report.rows) == len(treatment)
    assert sum(row.failed for row in report.rows) == sum(spec.outcome == "failed" for spec in treatment)
    assert sum(row.cancelled for row in report.rows) == sum(spec.outcome == "cancelled" for spec in treatment)


async def test_report_outside_range_is_empty(traffic: Traffic) -> None:
    filters = traffic.filters(since=traffic.start - timedelta(hours=2), until=traffic.start)

    report = await latency_report(traffic.store, filters)

    assert report.rows == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"bucket": "2h"}, "bucket"),
        ({"variant": ""}, "variant"),
        ({"until": datetime(2020, 1, 1, tzinfo=timezone.utc)}, "since"),
        ({"bucket": "1m", "until": datetime(2030, 1, 1, tzinfo=timezone.utc)}, "bucket"),
    ],
)
async def test_invalid_filters_raise(overrides: dict, field: str) -> None:
    filters = ReportFilters(tenant="acme", since=datetime(2026, 1, 1, tzinfo=timezone.utc), **overrides)

    with pytest.raises(ReportFilterError) as raised:
        await latency_report(StoreClient(None), filters)  # type: ignore[arg-type]

    assert raised.value.field == field
