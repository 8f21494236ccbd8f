"""The bulk EVENTS messages of the telemetry benchmark: valid, distinct envelopes."""

from __future__ import annotations

from load_tests.event_mix import event_messages, mean_body_bytes, request_templates
from shared.events import EventType, decode_envelope, derive_event_id
from shared.subjects import envelope_subject


def test_yields_exact_count() -> None:
    messages = list(event_messages(request_templates(), 17))

    assert len(messages) == 17


def test_event_ids_are_distinct() -> None:
    messages = list(event_messages(request_templates(), 700))

    assert len({message.event_id for message in messages}) == 700


def test_request_has_seven_event_types() -> None:
    messages = list(event_messages(request_templates(), 7))

    types = [decode_envelope(message.body).type for message in messages]
    assert types == [
        EventType.ACCEPTED,
        EventType.SCREENED,
        EventType.ASSIGNED,
        EventType.FIRST_TOKEN,
        EventType.COMPLETED,
        EventType.MODERATED,
        EventType.DELIVERED,
    ]


def test_copies_carry_derived_ids() -> None:
    for message in event_messages(request_templates(), 21):
        envelope = decode_envelope(message.body)
        attempt = 1 if envelope.type in (EventType.FIRST_TOKEN, EventType.COMPLETED) else 0

        assert envelope.event_id == message.event_id
        assert message.event_id == derive_event_id(envelope.tenant, envelope.request_id, envelope.type, attempt)
        assert message.subject == envelope_subject(envelope)


def test_copies_get_new_request_ids() -> None:
    templates = request_templates()
    template_ids = {template.request_id.decode() for template in templates}

    request_ids = {decode_envelope(message.body).request_id for message in event_messages(templates, 70)}

    assert len(request_ids) == 10
    assert not request_ids & template_ids


def test_payloads_parse_as_typed_models() -> None:
    for message in event_messages(request_templates(), 7):
        decode_envelope(message.body).parsed_payload()


def test_mean_envelope_is_about_a_kilobyte() -> None:
    assert 500 < mean_body_bytes(request_templates()) < 3_000
