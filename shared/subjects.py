"""NATS subjects, JetStream streams and durable consumers: the bus topology in one place.

`docs/architecture.md` has the same table for readers; `ensure_jetstream`
in `shared/bus.py` creates what is declared here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.events import EventType

EVENTS_STREAM = "EVENTS"
EVENTS_SUBJECT_PREFIX = "sluice.events"
CHUNKS_STREAM = "CHUNKS"
CHUNKS_SUBJECT_PREFIX = "sluice.chunks"

# Core NATS request/reply (not persisted): the telemetry service's read-only store API.
STORE_QUERY_SUBJECT = "sluice.store.query"
STORE_QUEUE_GROUP = "telemetry"

# Events stay a week, long enough to rebuild ClickHouse after an outage of a
# few days; telemetry normally commits them within a second.
EVENTS_MAX_AGE_S = 7 * 24 * 3600
# Raw chunks matter only until moderation has released them.
CHUNKS_MAX_AGE_S = 3600
# JetStream drops a message whose Nats-Msg-Id it saw within this window: a
# stage that is redelivered and publishes again adds nothing.
DUPLICATE_WINDOW_S = 120


def event_subject(event_type: EventType) -> str:
    """Return the subject an event is published on, e.g. `sluice.events.request.accepted`."""
    return f"{EVENTS_SUBJECT_PREFIX}.{event_type.value}"


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
INFERENCE_CONSUMER = ConsumerSpec(EVENTS_STREAM, "inference", event_subject(EventType.ASSIGNED))
MODERATION_CONSUMER = ConsumerSpec(CHUNKS_STREAM, "moderation", f"{CHUNKS_SUBJECT_PREFIX}.>")
TELEMETRY_CONSUMER = ConsumerSpec(EVENTS_STREAM, "telemetry", f"{EVENTS_SUBJECT_PREFIX}.>", max_ack_pending=20_000)
REQUEST_STATE_CONSUMER = ConsumerSpec(EVENTS_STREAM, "request-state", f"{EVENTS_SUBJECT_PREFIX}.>")

CONSUMERS = (
    SAFETY_CONSUMER,
    ASSIGNMENT_CONSUMER,
    INFERENCE_CONSUMER,
    MODERATION_CONSUMER,
    TELEMETRY_CONSUMER,
    REQUEST_STATE_CONSUMER,
)
