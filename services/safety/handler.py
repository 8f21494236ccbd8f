"""The consumer of `request.accepted`: screening, then publishing the follow-up event before the ack."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from nats.aio.msg import Msg

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

    def __init__(self, screener: Callable[[], Screener], publisher: EventPublisher) -> None:
        self._screener = screener
        self._publisher = publisher

    async def process(self, msg: Msg, envelope: Envelope, payload: AcceptedPayload) -> None:
        await self._publisher.publish(await self._screener().screen(envelope, payload))
