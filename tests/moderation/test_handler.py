"""Decoding CHUNKS messages: chunks and ends accepted, anything else rejected without output text."""

from __future__ import annotations

import json

import pytest

from services.moderation.handler import CHUNK_EVENT_TYPES
from shared.consuming import MalformedMessage, decode_event
from shared.events import ChunkPayload, EndPayload, Envelope, EventType, ExpiredPayload, new_envelope, utc_now
from tests.moderation.support import chunk, end, new_request_id

SECRET_OUTPUT = "the vault code is 0451"


def decode_chunk_message(body: bytes) -> tuple[Envelope, ChunkPayload | EndPayload]:
    return decode_event(body, CHUNK_EVENT_TYPES)


def test_chunk_decoded() -> None:
    envelope, _payload = chunk(new_request_id(), 3, "Hello")

    decoded, payload = decode_chunk_message(envelope.model_dump_json().encode())

    assert decoded == envelope
    assert payload == ChunkPayload(attempt=1, seq=3, text="Hello")


def test_end_decoded() -> None:
    envelope, expected = end(new_request_id())

    _decoded, payload = decode_chunk_message(envelope.model_dump_json().encode())

    assert isinstance(payload, EndPayload)
    assert payload == expected


def test_event_type_rejected() -> None:
    envelope = new_envelope(
        EventType.EXPIRED, request_id="r-1", tenant="acme", payload=ExpiredPayload(stage="ingress", deadline=utc_now())
    )

    with pytest.raises(MalformedMessage) as caught:
        decode_chunk_message(envelope.model_dump_json().encode())

    assert "has type request.expired, expected generation.chunk or generation.end" in str(caught.value)


def test_bad_payload_hides_output() -> None:
    data = json.loads(chunk(new_request_id(), 0, SECRET_OUTPUT)[0].model_dump_json())
    data["payload"]["seq"] = "first"

    with pytest.raises(MalformedMessage) as caught:
        decode_chunk_message(json.dumps(data).encode())

    assert "invalid payload at seq (int_parsing)" in str(caught.value)
    assert SECRET_OUTPUT not in str(caught.value)
