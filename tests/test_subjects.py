"""Subject names of the pool queues: token validation, the subject of each envelope, consumer names."""

from __future__ import annotations

import pytest

from shared.events import AssignedPayload, ChatMessage, Envelope, EventType, RequestSpec, VariantSpec
from shared.subjects import (
    EVENTS_STREAM,
    SubjectTokenError,
    assigned_subject,
    check_subject_token,
    envelope_subject,
    event_filter,
    pool_queue_consumer,
    pool_subject_filter,
)
from tests.support.envelopes import new_request_envelope


def _assigned(backend: str, tenant: str) -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")])
    payload = AssignedPayload(
        request=request, experiment_key=None, variant=VariantSpec(key="control", backend=backend), hash_attribute="request_id"
    )
    return new_request_envelope(EventType.ASSIGNED, payload, tenant=tenant, deadline_in_s=None)


@pytest.mark.parametrize("name", ["acme", "a", "tenant_1", "gpu-pool", "A1", "x" * 63])
def test_valid_tokens_accepted(name: str) -> None:
    assert check_subject_token(name, "tenant") == name


@pytest.mark.parametrize("name", ["", "acme.west", "a*", "a>", "a b", "a@b", "-acme", "_acme", "x" * 64, "café"])
def test_invalid_tokens_rejected(name: str) -> None:
    with pytest.raises(SubjectTokenError) as raised:
        check_subject_token(name, "tenant")

    assert f"invalid tenant name {name!r}" in str(raised.value)
    assert "letters, digits" in str(raised.value)


def test_assigned_subject_names_pool_and_tenant() -> None:
    assert assigned_subject("embedded", "acme") == "sluice.events.request.assigned.embedded.acme"


def test_assigned_subject_rejects_bad_backend() -> None:
    with pytest.raises(SubjectTokenError, match="invalid backend name 'gpu.pool'"):
        assigned_subject("gpu.pool", "acme")


def test_envelope_subject_of_assigned() -> None:
    assert envelope_subject(_assigned("embedded", "acme")) == "sluice.events.request.assigned.embedded.acme"


def test_envelope_subject_of_invalid_tenant() -> None:
    with pytest.raises(SubjectTokenError, match="invalid tenant name 'acme west'"):
        envelope_subject(_assigned("embedded", "acme west"))


def test_filters_match_pool_queues() -> None:
    assert pool_subject_filter("embedded") == "sluice.events.request.assigned.embedded.*"
    assert event_filter(EventType.ASSIGNED) == "sluice.events.request.assigned.>"
    assert event_filter(EventType.COMPLETED) == "sluice.events.generation.completed"


def test_pool_queue_consumer() -> None:
    spec = pool_queue_consumer("embedded", "acme", 8)

    assert spec.stream == EVENTS_STREAM
    assert spec.durable == "inference@embedded@acme"
    assert spec.filter_subject == "sluice.events.request.assigned.embedded.acme"
    assert spec.max_ack_pending == 8
