"""NATS subjects, JetStream streams and durable consumers: the bus topology in one place.

`docs/architecture.md` has the same table for readers; `ensure_jetstream`
in `shared/bus.py` creates what is declared here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.events import AssignedPayload, Envelope, EventType

EVENTS_STREAM = "EVENTS"
EVENTS_SUBJECT_PREFIX = "sluice.events"
CHUNKS_STREAM = "CHUNKS"
CHUNKS_SUBJECT_PREFIX = "sluice.chunks"

# Core NATS request/reply (not persisted): the telemetry service's read-only store API.
STORE_QUERY_SUBJECT = "sluice.store.query"
STORE_QUEUE_GROUP = "telemetry"
# Core NATS request/reply (not persisted): feedback from internal systems,
# handled by one ingress replica of the queue group. The message names the
# tenant, because only trusted services reach the bus.
FEEDBACK_SUBMIT_SUBJECT = "sluice.feedback.submit"
FEEDBACK_QUEUE_GROUP = "ingress"
# Core NATS, no queue group: every inference replica hears each cancel notice
# (`sluice.control.cancel.<tenant>.<request_id>`, see shared/cancellation.py).
CANCEL_SUBJECT_PREFIX = "sluice.control.cancel"

# Events stay a week, long enough to rebuild ClickHouse after an outage of a
# few days; telemetry normally commits them within a second.
EVENTS_MAX_AGE_S = 7 * 24 * 3600
# Raw chunks matter only until moderation has released them.
CHUNKS_MAX_AGE_S = 3600
# JetStream drops a message whose Nats-Msg-Id it saw within this window: a
# stage that is redelivered and publishes again adds nothing.
DUPLICATE_WINDOW_S = 120


# A backend or tenant name becomes one token of a subject and part of a
# durable consumer's name, so it may not contain `.`, `*`, `>`, `@` or
# whitespace. Tenant names match `shared.api_keys.TENANT_PATTERN`, a subset.
SUBJECT_TOKEN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_SUBJECT_TOKEN = re.compile(SUBJECT_TOKEN_PATTERN)
# Separates the parts of a pool queue consumer's name: no subject token contains it.
_CONSUMER_NAME_SEPARATOR = "@"
POOL_QUEUE_CONSUMER_PREFIX = "inference"
# A pool queue consumer may have a message out this long without an ack. The
# inference handler reports progress every 10 s, so a long generation keeps it.
POOL_QUEUE_ACK_WAIT_S = 30.0


class SubjectTokenError(ValueError):
    """A backend or tenant name cannot be used as a subject token."""


def check_subject_token(value: str, subject_part: str) -> str:
    """Return `value` when it is a valid subject token, else raise `SubjectTokenError` naming `subject_part` ("backend", "tenant")."""
    if not _SUBJECT_TOKEN.fullmatch(value):
        raise SubjectTokenError(
            f"invalid {subject_part} name {value!r}: it must match {SUBJECT_TOKEN_PATTERN} "
            "(letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters)"
        )
    return value


def event_subject(event_type: EventType) -> str:
    """Return the subject an event is published on, e.g. `sluice.events.request.accepted`.

    `request.assigned` is published below this subject, on `assigned_subject`.
    """
    return f"{EVENTS_SUBJECT_PREFIX}.{event_type.value}"


def assigned_subject(backend: str, tenant: str) -> str:
    """Return the subject of one tenant's queue in one endpoint pool, e.g. `sluice.events.request.assigned.embedded.acme`.

    Raises `SubjectTokenError` when `backend` or `tenant` is not a valid subject token.
    """
    backend = check_subject_token(backend, "backend")
    tenant = check_subject_token(tenant, "tenant")
    return f"{event_subject(EventType.ASSIGNED)}.{backend}.{tenant}"


def pool_subject_filter(backend: str) -> str:
    """Return the filter that matches every tenant's `request.assigned` messages of one endpoint pool."""
    return f"{event_subject(EventType.ASSIGNED)}.{check_subject_token(backend, 'backend')}.*"


def event_filter(event_type: EventType) -> str:
    """Return the filter that matches every message of `event_type`, whichever pool and tenant it names."""
    if event_type is EventType.ASSIGNED:
        return f"{event_subject(event_type)}.>"
    return event_subject(event_type)


def envelope_subject(envelope: Envelope) -> str:
    """Return the subject `envelope` is published on: its event subject, or its pool queue for `request.assigned`.

    Raises `SubjectTokenError` when an assigned request's backend or tenant is
    not a valid subject token.
    """
    if envelope.type is EventType.ASSIGNED:
        payload: AssignedPayload = envelope.parsed_payload()
        return assigned_subject(payload.variant.backend, envelope.tenant)
    return event_subject(envelope.type)


def chunk_subject(request_id: str) -> str:
    return f"{CHUNKS_SUBJECT_PREFIX}.{request_id}"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" or "workqueue", as JetStream names them
    max_age_s: int


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer; every replica of a service shares it, so each message goes to one replica."""

    stream: str
    durable: str
    filter_subject: str
    # Seconds without an ack (or an in-progress ack) before JetStream redelivers.
    ack_wait_s: float = 30.0
    # How many unacked messages one consumer may have out at once, over all replicas.
    max_ack_pending: int = 1000


STREAMS = (
    StreamSpec(EVENTS_STREAM, (f"{EVENTS_SUBJECT_PREFIX}.>",), "limits", EVENTS_MAX_AGE_S),
    StreamSpec(CHUNKS_STREAM, (f"{CHUNKS_SUBJECT_PREFIX}.>",), "workqueue", CHUNKS_MAX_AGE_S),
)

SAFETY_CONSUMER = ConsumerSpec(EVENTS_STREAM, "safety", event_subject(EventType.ACCEPTED))
ASSIGNMENT_CONSUMER = ConsumerSpec(EVENTS_STREAM, "assignment", event_subject(EventType.SCREENED))
MODERATION_CONSUMER = ConsumerSpec(CHUNKS_STREAM, "moderation", f"{CHUNKS_SUBJECT_PREFIX}.>")
TELEMETRY_CONSUMER = ConsumerSpec(EVENTS_STREAM, "telemetry", f"{EVENTS_SUBJECT_PREFIX}.>", max_ack_pending=20_000)
REQUEST_STATE_CONSUMER = ConsumerSpec(EVENTS_STREAM, "request-state", f"{EVENTS_SUBJECT_PREFIX}.>")

CONSUMERS = (
    SAFETY_CONSUMER,
    ASSIGNMENT_CONSUMER,
    MODERATION_CONSUMER,
    TELEMETRY_CONSUMER,
    REQUEST_STATE_CONSUMER,
)


def pool_queue_consumer(backend: str, tenant: str, max_ack_pending: int) -> ConsumerSpec:
    """Return the durable consumer of one tenant's queue in one endpoint pool, e.g. `inference@embedded@acme`.

    The inference service creates it when it first finds the tenant's work
    in the pool, not at start like `CONSUMERS`, because the tenants are not
    listed anywhere in advance. The admission loop sets `max_ack_pending` to
    a small multiple of the pool's `max_in_flight`, so JetStream never hands
    out far more of one tenant's requests than the pool can run.
    """
    name = _CONSUMER_NAME_SEPARATOR.join((POOL_QUEUE_CONSUMER_PREFIX, backend, tenant))
    return ConsumerSpec(
        EVENTS_STREAM,
        name,
        assigned_subject(backend, tenant),
        ack_wait_s=POOL_QUEUE_ACK_WAIT_S,
        max_ack_pending=max_ack_pending,
    )
