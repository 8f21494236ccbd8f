"""The policy's storage modes applied to the rows telemetry stores: raw, redacted, hashed or none, per tenant and route."""

from __future__ import annotations

import hashlib
import json

import pytest

from services.telemetry.rows import decode_event
from services.telemetry.text_storage import TextStorage
from shared.events import (
    AcceptedPayload,
    ChatMessage,
    DeliveredPayload,
    Envelope,
    EventType,
    FailedPayload,
    RequestSpec,
    Usage,
    new_envelope,
)
from shared.scanning import parse_policy
from shared.scanning.pii import PiiDetector

EMAIL = "jane.doe@example.com"
PROMPT = f"Write to {EMAIL} today"
OUTPUT = f"Dear {EMAIL}, the feast is on."

POLICY = {
    "storage": {"prompt": "redacted", "output": "redacted"},
    "routes": {"/v1/chat/completions": {"storage": {"prompt": "hashed"}}},
    "tenants": {"raw-co": {"storage": {"prompt": "raw", "output": "raw"}}, "quiet-co": {"storage": {"prompt": "none", "output": "none"}}},
}


@pytest.fixture(scope="module")
def text_storage() -> TextStorage:
    return TextStorage(parse_policy(POLICY, source="storage-test-policy"), PiiDetector())


def _accepted(tenant: str, route: str | None = None) -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content=PROMPT)])
    payload = AcceptedPayload(request=request, prompt_chars=len(PROMPT))
    return new_envelope(EventType.ACCEPTED, request_id="r1", tenant=tenant, payload=payload, route=route)


def _delivered(tenant: str) -> Envelope:
    payload = DeliveredPayload(text=OUTPUT, finish_reason="length", chunks=2, usage=Usage())
    return _accepted(tenant).follow_up(EventType.DELIVERED, payload)


def _stored(envelope: Envelope, text_storage: TextStorage) -> dict:
    return json.loads(decode_event(envelope.model_dump_json().encode(), text_storage).line)["payload"]


def _stored_prompt(envelope: Envelope, text_storage: TextStorage) -> str:
    return _stored(envelope, text_storage)["request"]["messages"][0]["content"]


def test_prompt_stored_redacted(text_storage: TextStorage) -> None:
    assert _stored_prompt(_accepted("acme"), text_storage) == "Write to [EMAIL] today"


def test_output_stored_redacted(text_storage: TextStorage) -> None:
    assert _stored(_delivered("acme"), text_storage)["text"] == "Dear [EMAIL], the feast is on."


def test_route_prompt_stored_hashed(text_storage: TextStorage) -> None:
    stored = _stored_prompt(_accepted("acme", "/v1/chat/completions"), text_storage)

    assert stored == hashlib.sha256(PROMPT.encode()).hexdigest()


def test_tenant_stores_raw(text_storage: TextStorage) -> None:
    assert _stored_prompt(_accepted("raw-co"), text_storage) == PROMPT
    assert _stored(_delivered("raw-co"), text_storage)["text"] == OUTPUT


def test_tenant_stores_nothing(text_storage: TextStorage) -> None:
    assert _stored_prompt(_accepted("quiet-co"), text_storage) == ""
    assert _stored(_delivered("quiet-co"), text_storage)["text"] == ""


def test_route_column_stored(text_storage: TextStorage) -> None:
    envelope = _accepted("acme", "/v1/chat/completions")

    line = json.loads(decode_event(envelope.model_dump_json().encode(), text_storage).line)

    assert line["route"] == "/v1/chat/completions"


def test_payload_without_text_unchanged(text_storage: TextStorage) -> None:
    payload = FailedPayload(stage="inference", error_code="backend_error", message="backend returned 500")
    envelope = _accepted("quiet-co").follow_up(EventType.FAILED, payload)

    assert _stored(envelope, text_storage) == payload.model_dump(mode="json")
