"""Envelope behaviour: deterministic ids, deadlines and schema versions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.events import (
    CURRENT_SCHEMA_VERSION,
    AcceptedPayload,
    ChatMessage,
    EventType,
    FailedPayload,
    RequestSpec,
    UnsupportedSchemaVersion,
    decode_envelope,
    derive_event_id,
    new_envelope,
    utc_now,
)


def _accepted(deadline=None):
    payload = AcceptedPayload(request=RequestSpec(messages=[ChatMessage(role="user", content="hi")]), prompt_chars=2)
    return new_envelope(EventType.ACCEPTED, request_id="r1", tenant="acme", payload=payload, deadline=deadline)


def test_event_id_is_deterministic() -> None:
    assert derive_event_id("acme", "r1", EventType.SCREENED) == derive_event_id("acme", "r1", EventType.SCREENED)


def test_event_id_differs_by_tenant_type_and_attempt() -> None:
    ids = {
        derive_event_id("acme", "r1", EventType.SCREENED),
        derive_event_id("other", "r1", EventType.SCREENED),
        derive_event_id("acme", "r1", EventType.ASSIGNED),
        derive_event_id("acme", "r1", EventType.SCREENED, attempt=2),
    }
    assert len(ids) == 4


def test_follow_up_keeps_request_context() -> None:
    first = _accepted(deadline=utc_now() + timedelta(seconds=30))
    first.trace["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    failed = first.follow_up(EventType.FAILED, FailedPayload(stage="safety", error_code="x", message="y"))

    assert (failed.request_id, failed.tenant, failed.deadline) == (first.request_id, first.tenant, first.deadline)
    assert failed.trace == first.trace
    assert failed.type is EventType.FAILED


def test_envelope_past_deadline_is_expired() -> None:
    assert _accepted(deadline=utc_now() - timedelta(seconds=1)).is_expired()
    assert not _accepted(deadline=utc_now() + timedelta(seconds=60)).is_expired()
    assert not _accepted(deadline=None).is_expired()


def test_decode_round_trips() -> None:
    envelope = _accepted()
    assert decode_envelope(envelope.model_dump_json()) == envelope


def test_decode_rejects_future_schema_version() -> None:
    envelope = _accepted().model_copy(update={"schema_version": CURRENT_SCHEMA_VERSION + 1})
    with pytest.raises(UnsupportedSchemaVersion, match="schema_version"):
        decode_envelope(envelope.model_dump_json())
