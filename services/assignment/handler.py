"""The consumer of `request.screened`: publishes `request.assigned`, or `request.expired` after the deadline."""

from __future__ import annotations

from typing import ClassVar

import structlog
from nats.aio.msg import Msg

from services.assignment.assigner import Assigner
from shared.bus import EventPublisher
from shared.consuming import EnvelopeHandler, publish_if_expired
from shared.events import AssignedPayload, Envelope, EventType, ScreenedPayload, Verdict

log = structlog.get_logger(__name__)

STAGE = "assignment"


class ScreenedHandler(EnvelopeHandler):
    """Handles one delivery of a `request.screened` message and acks, nacks or terminates it.

    A message whose publish failed is redelivered after `RETRY_DELAY_S`.
    """

    stage: ClassVar[str] = STAGE
    event_types: ClassVar[tuple[EventType, ...]] = (EventType.SCREENED,)

    def __init__(self, assigner: Assigner, publisher: EventPublisher) -> None:
        self._assigner = assigner
        self._publisher = publisher

    async def process(self, msg: Msg, envelope: Envelope, payload: ScreenedPayload) -> None:
        if payload.verdict is Verdict.BLOCKED:
            log.debug("request_skipped", reason="blocked")
            return
        if await publish_if_expired(self._publisher, envelope, STAGE):
            return
        await self._publish_assigned(envelope, payload)

    async def _publish_assigned(self, envelope: Envelope, payload: ScreenedPayload) -> None:
        assignment = self._assigner.assign(payload.request, envelope.request_id)
        assigned = AssignedPayload(
            request=payload.request,
            experiment_key=assignment.experiment_key,
            variant=assignment.variant,
            hash_value=assignment.hash_value,
            hash_attribute=assignment.hash_attribute,
        )
        await self._publisher.publish(envelope.follow_up(EventType.ASSIGNED, assigned))
        log.info(
            "request_assigned",
            experiment_key=assignment.experiment_key,
            variant=assignment.variant.key,
            hash_attribute=assignment.hash_attribute,
        )
