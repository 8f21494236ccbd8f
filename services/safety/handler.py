"""The consumer of `request.accepted`: screening, then publishing the follow-up event before the ack."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from nats.aio.msg import Msg

from services.safety.metrics import SafetyMetrics
from services.safety.screening import STAGE, Screener
from shared.bus import EventPublisher
from shared.consuming import EnvelopeHandler
from shared.events import AcceptedPayload, Envelope, EventType


class AcceptedHandler(EnvelopeHandler):
    """Handles one delivery of a `request.accepted` message and acks, nacks or terminates it.

    The message is acked only after JetStream acknowledged the publish of its
    follow-up event. A failed publish is redelivered after `RETRY_DELAY_S`.
    `screener` returns the screener of the policy in force; it is read once
    per message, so a policy change never swaps the chain during a scan.
    """

    stage: ClassVar[str] = STAGE
    event_types: ClassVar[tuple[EventType, ...]] = (EventType.ACCEPTED,)

    def __init__(
        self, screener: Callable[[], Screener], publisher: EventPublisher, metrics: SafetyMetrics | None = None
    ) -> None:
        self._screener = screener
        self._publisher = publisher
        # A registry of the handler's own unless the service passes the one it serves.
        self.metrics = metrics or SafetyMetrics()

    async def process(self, msg: Msg, envelope: Envelope, payload: AcceptedPayload) -> None:
        started = time.perf_counter()
        follow_up = await self._screener().screen(envelope, payload)
        self.metrics.record(follow_up, time.perf_counter() - started)
        await self._publisher.publish(follow_up)
