"""Recording feedback: idempotency, attribution and the published `feedback.received` event.

Both channels (`POST /v1/feedback` and the feedback subject) go through
`FeedbackRecorder.record`. The event id, which is also the feedback id, is
derived from the tenant, the request id and the idempotency key. So a
submission that is published twice gets one id, which JetStream's duplicate
window drops and the `feedback` table collapses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import nats.errors
import structlog
from redis.exceptions import RedisError

from shared.bus import EventPublisher
from shared.events import Envelope, EventType, FeedbackPayload, derive_event_id, utc_now

from services.ingress.errors import IdempotencyKeyInUseError, IdempotencyKeyReusedError, ServiceUnavailableError
from services.ingress.feedback_attribution import AttributionChecker
from services.ingress.feedback_validation import FeedbackBody
from services.ingress.idempotency import IdempotencyRecord, IdempotencyStore

log = structlog.get_logger(__name__)

Channel = Literal["http", "nats"]


def feedback_event_id(tenant: str, request_id: str, idempotency_key: str) -> str:
    """Return the id of the feedback event for this key: a UUID 5 under the request's feedback event id."""
    namespace = uuid.UUID(derive_event_id(tenant, request_id, EventType.FEEDBACK))
    return str(uuid.uuid5(namespace, idempotency_key))


@dataclass(frozen=True)
class FeedbackOutcome:
    feedback_id: str
    # True when the key was used before with the same body: nothing was published this time.
    duplicate: bool

    @property
    def status(self) -> Literal["accepted", "duplicate"]:
        return "duplicate" if self.duplicate else "accepted"


@dataclass(frozen=True)
class FeedbackSubmission:
    """Checked feedback, ready to record: the body, its key and tenant, and where it came from."""

    tenant: str
    body: FeedbackBody
    idempotency_key: str
    channel: Channel
    trace: dict[str, str]
    # The HTTP route, or None for the feedback subject.
    route: str | None = None


class FeedbackRecorder:
    """Turns a checked submission into a published `feedback.received` event, once per idempotency key."""

    def __init__(self, *, idempotency: IdempotencyStore, attribution: AttributionChecker, publisher: EventPublisher) -> None:
        self._idempotency = idempotency
        self._attribution = attribution
        self._publisher = publisher

    async def record(self, submission: FeedbackSubmission) -> FeedbackOutcome:
        """Publish the feedback unless its key was used before; return its id and whether it was a repeat.

        A repeat of the same key and body returns the first id without
        checking the request again, so it succeeds after the window closed.
        Raises `IdempotencyKeyReusedError` (422), `IdempotencyKeyInUseError`
        (409), the errors of `AttributionChecker.check`, and
        `ServiceUnavailableError` (503) when NATS does not acknowledge.
        """
        body = submission.body
        feedback_id = feedback_event_id(submission.tenant, body.request_id, submission.idempotency_key)
        record = IdempotencyRecord(feedback_id, body.digest())
        earlier = await self._reserve(submission, record)
        if earlier is not None:
            log.info("feedback_repeated", feedback_id=earlier.request_id, tenant=submission.tenant, channel=submission.channel)
            return FeedbackOutcome(earlier.request_id, duplicate=True)

        try:
            await self._attribution.check(submission.tenant, body.request_id)
            await self._publish(_envelope(submission, feedback_id))
        except Exception:
            await self._release(submission)
            raise
        # NOTE: when this write fails the feedback is published but the caller gets 503;
        # a retry after the reservation expires publishes the same event id again.
        await self._idempotency.mark_accepted(submission.tenant, submission.idempotency_key, record)
        _log_recorded(submission, feedback_id)
        return FeedbackOutcome(feedback_id, duplicate=False)

    async def _reserve(self, submission: FeedbackSubmission, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Reserve the key for `record`; return the earlier record when the same feedback was sent before."""
        key = submission.idempotency_key
        earlier = await self._idempotency.reserve(submission.tenant, key, record)
        if earlier is None:
            return None
        if earlier.body_sha256 != record.body_sha256:
            raise IdempotencyKeyReusedError(
                "idempotency_key_reused",
                f"idempotency key {key!r} was used for feedback {earlier.request_id} with a different body; "
                "send the same body to get that feedback's id, or use a new key for new feedback",
                field="idempotency_key",
            )
        if not earlier.accepted:
            raise IdempotencyKeyInUseError(
                "idempotency_key_in_use",
                f"feedback with idempotency key {key!r} is still being recorded; retry in a moment",
                field="idempotency_key",
            )
        return earlier

    async def _publish(self, envelope: Envelope) -> None:
        try:
            await self._publisher.publish(envelope)
        except nats.errors.Error as error:
            log.warning("feedback_publish_failed", request_id=envelope.request_id, tenant=envelope.tenant, error=repr(error))
            raise ServiceUnavailableError(
                "event_bus_unavailable",
                "the feedback could not be recorded because NATS JetStream did not acknowledge it; "
                "nothing was stored, retry later with the same idempotency key",
            ) from error

    async def _release(self, submission: FeedbackSubmission) -> None:
        """Forget the reservation, so the same key works again once the cause is fixed."""
        try:
            await self._idempotency.release(submission.tenant, submission.idempotency_key)
        except RedisError as error:
            log.error(
                "feedback_release_failed",
                request_id=submission.body.request_id,
                tenant=submission.tenant,
                error=repr(error),
            )


def _log_recorded(submission: FeedbackSubmission, feedback_id: str) -> None:
    log.info(
        "feedback_recorded",
        feedback_id=feedback_id,
        request_id=submission.body.request_id,
        tenant=submission.tenant,
        kind=submission.body.kind.value,
        channel=submission.channel,
    )


def _envelope(submission: FeedbackSubmission, feedback_id: str) -> Envelope:
    body = submission.body
    payload = FeedbackPayload(
        kind=body.kind,
        value=body.value,
        metadata=body.metadata,
        idempotency_key=submission.idempotency_key,
        channel=submission.channel,
    )
    return Envelope(
        event_id=feedback_id,
        type=EventType.FEEDBACK,
        request_id=body.request_id,
        tenant=submission.tenant,
        ts=utc_now(),
        trace=submission.trace,
        route=submission.route,
        payload=payload.model_dump(mode="json"),
    )
