"""Sending an evaluation's results: `drift.evaluated` events on the EVENTS stream and alerts on core NATS `alerts.drift`.

Alerts go out on core NATS only, with no JetStream stream: a subscriber
that was down misses them, but every result event records whether an alert
was active, so `drift_reports` has the alert history.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NatsClient

from services.drift.alarms import Alert
from services.drift.detector import DriftReport, SignalResult
from services.drift.results import StatisticResult
from services.drift.windows import WindowBounds
from shared.bus import EventPublisher
from shared.events import (
    DriftEvaluatedPayload,
    DriftStatistic,
    DriftWindow,
    Envelope,
    EventType,
    derive_event_id,
)

ALERTS_SUBJECT = "alerts.drift"


def result_envelopes(
    tenant: str, evaluation_id: str, evaluated_at: datetime, report: DriftReport, firing: dict[tuple[str, str], bool]
) -> list[Envelope]:
    """Build one `drift.evaluated` event per result, with the evaluation id as request id and the result's index as seq.

    `firing` maps each result's (variant, signal) to whether its alert is active after this evaluation.
    """
    envelopes = []
    for index, result in enumerate(report.results):
        payload = _payload(result, firing[(result.variant, str(result.signal))], report.per_test_alpha)
        envelopes.append(
            Envelope(
                event_id=derive_event_id(tenant, evaluation_id, EventType.DRIFT_EVALUATED, seq=index),
                type=EventType.DRIFT_EVALUATED,
                request_id=evaluation_id,
                tenant=tenant,
                ts=evaluated_at,
                payload=payload.model_dump(mode="json"),
            )
        )
    return envelopes


def alert_message(tenant: str, evaluation_id: str, evaluated_at: datetime, alert: Alert) -> bytes:
    """Return the JSON body published on `alerts.drift`: the alert with its tenant, evaluation id and time."""
    body: dict[str, Any] = {
        "tenant": tenant,
        "evaluation_id": evaluation_id,
        "evaluated_at": evaluated_at.isoformat(),
        **alert.to_json_dict(),
    }
    return json.dumps(body).encode()


class ResultPublisher:
    """Publishes result events to JetStream (waiting for each ack) and alerts to core NATS."""

    def __init__(self, events: EventPublisher, nats_client: NatsClient) -> None:
        self._events = events
        self._nats = nats_client

    async def publish_results(self, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            await self._events.publish(envelope)

    async def publish_alert(self, body: bytes) -> None:
        await self._nats.publish(ALERTS_SUBJECT, body)


def _payload(result: SignalResult, alert_active: bool, per_test_alpha: float) -> DriftEvaluatedPayload:
    return DriftEvaluatedPayload(
        variant=result.variant,
        signal=str(result.signal),
        outcome=str(result.outcome),
        alert_active=alert_active,
        reference=_window(result.reference),
        current=_window(result.current),
        statistics=[_statistic(statistic) for statistic in result.statistics],
        per_test_alpha=per_test_alpha,
    )


def _window(bounds: WindowBounds) -> DriftWindow:
    return DriftWindow(start=bounds.start, end=bounds.end, sample_count=bounds.sample_count)


def _statistic(statistic: StatisticResult) -> DriftStatistic:
    return DriftStatistic(
        name=statistic.name,
        value=statistic.value,
        threshold=statistic.threshold,
        direction=str(statistic.direction),
        fired=statistic.fired,
    )
