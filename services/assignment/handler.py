"""The consumer of `request.screened`: publishes `experiment.exposed` and `request.assigned`, or `request.expired` after the deadline."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import structlog
from nats.aio.msg import Msg

from services.assignment.assigner import USER_ID_ATTRIBUTE, Assigner, Assignment, unit_of
from services.assignment.exposures import ExposurePublisher
from services.assignment.metrics import AssignmentMetrics
from services.assignment.sticky_store import StickyBucketStore
from shared.bus import EventPublisher
from shared.consuming import EnvelopeHandler, publish_if_expired
from shared.events import AssignedPayload, Envelope, EventType, FailedPayload, RequestSpec, ScreenedPayload, Verdict
from shared.subjects import SubjectTokenError, envelope_subject

log = structlog.get_logger(__name__)

STAGE = "assignment"
# The error code of a request whose tenant or backend name cannot be part of a NATS subject.
INVALID_SUBJECT_TOKEN = "invalid_subject_token"


class ScreenedHandler(EnvelopeHandler):
    """Handles one delivery of a `request.screened` message and acks, nacks or terminates it.

    A message whose publish failed is redelivered after `RETRY_DELAY_S`.
    `assigner` returns the assigner of the experiments in force; it is read
    once per message, so a change of experiments never splits one message.
    For a request in an experiment, the exposure is published before
    `request.assigned`, so a request that gets served always has one.
    """

    stage: ClassVar[str] = STAGE
    event_types: ClassVar[tuple[EventType, ...]] = (EventType.SCREENED,)

    def __init__(
        self,
        assigner: Callable[[], Assigner],
        publisher: EventPublisher,
        sticky_store: StickyBucketStore,
        exposures: ExposurePublisher,
        metrics: AssignmentMetrics,
    ) -> None:
        self._assigner = assigner
        self._publisher = publisher
        self._sticky_store = sticky_store
        self._exposures = exposures
        self.metrics = metrics

    async def process(self, msg: Msg, envelope: Envelope, payload: ScreenedPayload) -> None:
        if payload.verdict is Verdict.BLOCKED:
            log.debug("request_skipped", reason="blocked")
            return
        if await publish_if_expired(self._publisher, envelope, STAGE):
            return
        await self._publish_assigned(envelope, payload)

    async def _publish_assigned(self, envelope: Envelope, payload: ScreenedPayload) -> None:
        assignment = await self._assign(envelope, payload.request)
        assigned = AssignedPayload(
            request=payload.request,
            experiment_key=assignment.experiment_key,
            variant=assignment.variant,
            hash_value=assignment.hash_value,
            hash_attribute=assignment.hash_attribute,
        )
        assigned_envelope = envelope.follow_up(EventType.ASSIGNED, assigned)
        try:
            # Checked before anything is stored or exposed, because such a request is never served.
            envelope_subject(assigned_envelope)
        except SubjectTokenError as error:
            await self._publish_not_assignable(envelope, error)
            return

        await self._record_experiment(envelope, assignment)
        await self._publisher.publish(assigned_envelope)
        self.metrics.record(assignment.experiment_key, assignment.variant.key)
        log.info(
            "request_assigned",
            experiment_key=assignment.experiment_key,
            variant=assignment.variant.key,
            hash_attribute=assignment.hash_attribute,
            source=assignment.source,
        )

    async def _assign(self, envelope: Envelope, request: RequestSpec) -> Assignment:
        assigner = self._assigner()
        unit, attribute = unit_of(request, envelope.request_id)
        # Only a user is sticky: a request id never comes back, so storing its variant would only fill Redis.
        stored = None
        if attribute == USER_ID_ATTRIBUTE and assigner.has_experiments:
            stored = await self._sticky_store.load(envelope.tenant, attribute, unit)
        return assigner.assign(
            request, envelope.request_id, tenant=envelope.tenant, route=envelope.route, sticky_assignments=stored
        )

    async def _record_experiment(self, envelope: Envelope, assignment: Assignment) -> None:
        """Store a new sticky assignment and publish the exposure, for a request in an experiment."""
        if assignment.sticky_update is not None:
            await self._sticky_store.save(
                envelope.tenant, assignment.hash_attribute, assignment.unit, assignment.sticky_update
            )
        if assignment.experiment_key is not None:
            await self._exposures.expose(envelope, assignment)

    async def _publish_not_assignable(self, envelope: Envelope, error: SubjectTokenError) -> None:
        # The pool queue's subject contains the tenant name, so an invalid name leaves the request no queue to wait in.
        log.warning("request_not_assignable", error=str(error))
        failed = FailedPayload(stage=STAGE, error_code=INVALID_SUBJECT_TOKEN, message=str(error))
        await self._publisher.publish(envelope.follow_up(EventType.FAILED, failed))
