"""The per-minute rollups of `request_signals` count each outcome and keep latency and score quantiles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from services.telemetry.migrations import load_migrations
from services.telemetry.signals import SignalBuilder
from services.telemetry.store import EventStore
from shared.events import EventType, ScannerResult, ScreenedPayload, Verdict
from tests.telemetry.signal_events import accepted, at, request_events, rows

pytestmark = pytest.mark.clickhouse

MINUTE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
TTFTS_MS = [42.25, 80.5, 12.75, 150.0, 33.5]
LEVELS = [50, 95, 99]

_REQUEST_ROLLUP_SQL = """
SELECT
    variant, model,
    sum(accepted), sum(input_blocked), sum(assigned), sum(completed), sum(output_blocked), sum(refusals),
    sum(delivered), sum(failed), sum(cancelled), sum(expired), sum(prompt_tokens), sum(output_tokens),
    quantilesMerge(0.5, 0.95, 0.99)(ttft_ms_quantiles),
    quantilesMerge(0.5, 0.95, 0.99)(total_ms_quantiles),
    quantilesMerge(0.5, 0.95, 0.99)(queue_ms_quantiles)
FROM request_signals_per_minute
WHERE tenant = 'acme' AND minute = {minute:DateTime}
GROUP BY variant, model
ORDER BY variant
"""

_SCANNER_ROLLUP_SQL = """
SELECT stage, scanner, sum(evaluations), sum(blocks), quantilesMerge(0.5, 0.95, 0.99)(risk_score_quantiles)
FROM scanner_signals_per_minute
WHERE tenant = 'acme' AND minute = {minute:DateTime}
GROUP BY stage, scanner
ORDER BY stage, scanner
"""


@pytest.fixture
async def store(clickhouse_dsn: str) -> AsyncIterator[EventStore]:
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=5)
    await store.migrate(load_migrations())
    yield store
    store.close()


async def _insert_minute(store: EventStore) -> None:
    # Five delivered requests in two batches, so the rollup merges states
    # of two inserts, and one request blocked at screening.
    builder = SignalBuilder()
    delivered = [
        [at(envelope, MINUTE + timedelta(seconds=index)) for envelope in request_events(f"r{index}", ttft_ms=ttft_ms)]
        for index, ttft_ms in enumerate(TTFTS_MS)
    ]
    await store.insert_new(rows([event for request in delivered[:3] for event in request], builder))
    await store.insert_new(rows([event for request in delivered[3:] for event in request], builder))
    await store.insert_new(rows(_blocked_request("blocked"), builder))


def _blocked_request(request_id: str) -> list:
    first = at(accepted(request_id), MINUTE + timedelta(seconds=30))
    scanners = [ScannerResult(scanner="PromptInjection", valid=False, risk_score=0.875, duration_ms=1.0)]
    payload = ScreenedPayload(
        request=first.parsed_payload().request,
        verdict=Verdict.BLOCKED,
        scanners=scanners,
        blocked_by="PromptInjection",
        reason="injection",
    )
    return [first, at(first.follow_up(EventType.SCREENED, payload), MINUTE + timedelta(seconds=31))]


def _percentiles(values: list[float]) -> list[float]:
    # Linear interpolation, as ClickHouse's `quantiles` while a state contains all values.
    return list(np.percentile(np.array(values, dtype=np.float32), LEVELS))


async def test_request_rollup_counts(store: EventStore) -> None:
    await _insert_minute(store)

    _, result = await store.query(_REQUEST_ROLLUP_SQL, {"minute": MINUTE})

    unassigned, small = result
    assert unassigned[:2] == ("", "")
    # accepted, input_blocked, assigned, completed, output_blocked, refusals,
    # delivered, failed, cancelled, expired, prompt_tokens, output_tokens
    assert unassigned[2:14] == (6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert small[:2] == ("small", "qwen-0.5b")
    assert small[2:14] == (0, 0, 5, 5, 0, 5, 5, 0, 0, 0, 5 * 12, 5 * 5)


async def test_request_rollup_quantiles(store: EventStore) -> None:
    await _insert_minute(store)

    _, result = await store.query(_REQUEST_ROLLUP_SQL, {"minute": MINUTE})

    ttft, total, queue = result[1][14:]
    assert ttft == pytest.approx(_percentiles(TTFTS_MS), rel=1e-6)
    assert total == pytest.approx(_percentiles([15.5 + 250.0] * 5), rel=1e-6)
    assert queue == pytest.approx(_percentiles([15.5] * 5), rel=1e-6)
    # Rows without a latency (the unassigned ones) add nothing to the states.
    assert all(np.isnan(value) for value in result[0][14])


async def test_scanner_rollup(store: EventStore) -> None:
    await _insert_minute(store)

    _, result = await store.query(_SCANNER_ROLLUP_SQL, {"minute": MINUTE})

    by_scanner = {(stage, scanner): values for stage, scanner, *values in result}
    assert sorted(by_scanner) == [
        ("moderation", "NoRefusalLight"),
        ("moderation", "Toxicity"),
        ("screening", "PromptInjection"),
        ("screening", "Toxicity"),
    ]
    evaluations, blocks, quantiles = by_scanner[("screening", "PromptInjection")]
    assert (evaluations, blocks) == (6, 1)
    assert quantiles == pytest.approx(_percentiles([0.125] * 5 + [0.875]), rel=1e-6)
    assert by_scanner[("moderation", "Toxicity")][:2] == [5, 0]
