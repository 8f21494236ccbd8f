"""The JSON Schemas in schemas/events/ agree with the pydantic models in shared/events.py."""

from __future__ import annotations

import json

import jsonschema
import pytest

from shared.event_schemas import ENVELOPE_SCHEMA_FILE, SCHEMA_DIR, expected_schemas, schema_file
from shared.events import (
    AcceptedPayload,
    ChatMessage,
    EventType,
    RequestSpec,
    Verdict,
    ScreenedPayload,
    ScannerResult,
    new_envelope,
)

EXPECTED = expected_schemas()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_file_matches_model(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing: run `python -m shared.event_schemas`"
    assert json.loads(path.read_text()) == EXPECTED[name], f"{path} is stale: run `python -m shared.event_schemas`"


def test_no_schema_file_without_model() -> None:
    on_disk = {path.name for path in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(EXPECTED)


def test_envelope_validates_against_files() -> None:
    payload = ScreenedPayload(
        request=RequestSpec(messages=[ChatMessage(role="user", content="hello")]),
        verdict=Verdict.PASSED,
        scanners=[ScannerResult(scanner="Secrets", valid=True, risk_score=0.0, duration_ms=1.5)],
    )
    envelope = new_envelope(EventType.SCREENED, request_id="r1", tenant="dev", payload=payload)
    document = json.loads(envelope.model_dump_json())

    jsonschema.validate(document, json.loads((SCHEMA_DIR / ENVELOPE_SCHEMA_FILE).read_text()))
    jsonschema.validate(document["payload"], json.loads((SCHEMA_DIR / schema_file(EventType.SCREENED)).read_text()))


def test_payload_schema_rejects_unknown_field() -> None:
    schema = json.loads((SCHEMA_DIR / schema_file(EventType.ACCEPTED)).read_text())
    document = json.loads(
        AcceptedPayload(request=RequestSpec(messages=[ChatMessage(role="user", content="x")]), prompt_chars=1).model_dump_json()
    )
    document["surprise"] = 1

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)
