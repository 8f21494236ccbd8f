"""Decoding `request.accepted` messages: clear errors that carry no prompt text."""

from __future__ import annotations

import json

import pytest

from services.safety.handler import AcceptedHandler
from shared.consuming import MalformedMessage, decode_event
from shared.events import AcceptedPayload, Envelope, EventType, ExpiredPayload, new_envelope, utc_now
from tests.safety.support import accepted, user

SECRET_PROMPT = "my password is hunter2"


def decode_accepted(body: bytes) -> tuple[Envelope, AcceptedPayload]:
    return decode_event(body, AcceptedHandler.event_types)


def test_accepted_envelope_decoded() -> None:
    envelope = accepted(user("Hello"))

    decoded, payload = decode_accepted(envelope.model_dump_json().encode())

    assert decoded == envelope
    assert payload.request.messages[0].content == "Hello"


def test_wrong_type_rejected() -> None:
    envelope = new_envelope(
        EventType.EXPIRED, request_id="r-1", tenant="acme", payload=ExpiredPayload(stage="ingress", deadline=utc_now())
    )

    with pytest.raises(MalformedMessage) as caught:
        decode_accepted(envelope.model_dump_json().encode())

    assert "has type request.expired, expected request.accepted" in str(caught.value)


def test_bad_payload_hides_prompt() -> None:
    data = json.loads(accepted(user(SECRET_PROMPT)).model_dump_json())
    data["payload"]["request"]["messages"][0]["role"] = "narrator"

    with pytest.raises(MalformedMessage) as caught:
        decode_accepted(json.dumps(data).encode())

    assert "invalid payload at request.messages.0.role (literal_error)" in str(caught.value)
    assert SECRET_PROMPT not in str(caught.value)
