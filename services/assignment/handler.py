"""The consumer of `request.screened`: publishes `request.assigned`, or `request.expired` after the deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import structlog
from nats.aio.msg import Msg

from services.assignment.assigner import Assigner
from services.assignment.metrics import AssignmentMetrics
from shared.bus import EventPublisher
from shared.consuming import EnvelopeHandler, publish_if_expired
from shared.events import AssignedPayload, Envelope, EventType, FailedPayload, ScreenedPayload, Verdict
from shared.subjects import SubjectTokenError

log = structlog.get_logger(__name__)

STAGE = "assignment"
# The error code of a request whose tenant or backend name cannot be part of a NATS subject.
INVALID_SUBJECT_TOKEN = "invalid_subject_token"


class ScreenedHandler(EnvelopeHandler):
    """Handles one delivery of a `request.screened` message and acks, nacks or terminates it.

    A message whose publish failed is redelivered after `RETRY_DELAY_S`.
    `assigner` returns the assigner of the experiments in force; it is read
    once per message, so a change of experiments never splits one message.
    """

    stage: ClassVar[str] = STAGE
    event_types: ClassVar[tuple[EventType, ...]] = (EventType.SCREENED,)

    def __init__(
        self, assigner: Callable[[], Assigner], publisher: EventPublisher, metrics: AssignmentMetrics | None = None
    ) -> None:
        self._assigner = assigner
        self._publisher = publisher
        # A registry of the handler's own unless the service passes the one it serves.
        self.metrics = metrics or AssignmentMetrics()

    async def process(self, msg: Msg, envelope: Envelope, payload: ScreenedPayload) -> None:
        if payload.verdict is Verdict.BLOCKED:
            log.debug("request_skipped", reason="blocked")
            return
        if await publish_if_expired(self._publisher, envelope, STAGE):
            return
        await self._publish_assigned(envelope, payload)

    async def _publish_assigned(self, envelope: Envelope, payload: ScreenedPayload) -> None:
        assignment = self._assigner().assign(payload.request, envelope.request_id)
        assigned = AssignedPayload(
            request=payload.request,
            experiment_key=assignment.experiment_key,
            variant=assignment.variant,
            hash_value=assignment.hash_value,
            hash_attribute=assignment.hash_attribute,
        )
        try:
            await self._publisher.publish(envelope.follow_up(EventType.ASSIGNED, assigned))
        except SubjectTokenError as error:
            # The pool queue's subject contains the tenant name, so an invalid name leaves the request no queue to wait in.
            log.warning("request_not_assignable", error=str(error))
            failed = FailedPayload(stage=STAGE, error_code=INVALID_SUBJECT_TOKEN, message=str(error))
            await self._publisher.publish(envelope.follow_up(EventType.FAILED, failed))
            return
        self.metrics.record(assignment.experiment_key, assignment.variant.key)
        log.info(
            "request_assigned",
            experiment_key=assignment.experiment_key,
            variant=assignment.variant.key,
            hash_attribute=assignment.hash_attribute,
        )
