"""What each event changes in the status record, and which events close the release log."""

from __future__ import annotations

import json

from shared.events import Verdict

from services.ingress.projection import MODERATION_FINISH_REASON, final_message, state_update
from services.ingress.state_store import RecordField, RequestStatus
from tests.ingress import event_builders as events


def test_accepted_sets_screening_and_time() -> None:
    start = events.accepted()

    update = state_update(start)

    assert update is not None
    assert update.status is RequestStatus.SCREENING
    assert update.fields == {RecordField.ACCEPTED_AT: start.ts.isoformat()}


def test_passed_screening_queues_request() -> None:
    update = state_update(events.screened(events.accepted()))

    assert update is not None
    assert update.status is RequestStatus.QUEUED
    assert RecordField.BLOCKED_BY not in update.fields


def test_blocked_screening_records_scanner_and_reason() -> None:
    update = state_update(events.screened(events.accepted(), Verdict.BLOCKED))

    assert update is not None
    assert update.status is RequestStatus.BLOCKED
    assert update.fields[RecordField.BLOCKED_BY] == "PromptInjection"
    assert update.fields[RecordField.REASON] == "prompt injection detected"
    assert [item["scanner"] for item in json.loads(update.fields[RecordField.INPUT_VERDICTS])] == [
        "BanSubstrings",
        "PromptInjection",
    ]


def test_generation_completed_sets_no_text() -> None:
    update = state_update(events.completed(events.accepted()))

    assert update is not None
    assert update.status is None
    assert RecordField.TEXT not in update.fields
    assert update.fields[RecordField.COMPLETION_TOKENS] == "12"


def test_delivered_completes_with_released_text() -> None:
    update = state_update(events.delivered(events.accepted(), text="released"))

    assert update is not None
    assert update.status is RequestStatus.COMPLETED
    assert update.fields[RecordField.TEXT] == "released"


def test_delivered_after_output_block_is_blocked() -> None:
    update = state_update(events.delivered(events.accepted(), finish_reason=MODERATION_FINISH_REASON))

    assert update is not None
    assert update.status is RequestStatus.BLOCKED


def test_blocked_moderation_records_scanner() -> None:
    update = state_update(events.moderated(events.accepted(), Verdict.BLOCKED))

    assert update is not None
    assert update.status is None
    assert update.fields[RecordField.BLOCKED_BY] == "BanSubstrings"


def test_failed_records_error() -> None:
    update = state_update(events.failed(events.accepted()))

    assert update is not None
    assert update.status is RequestStatus.FAILED
    assert update.fields[RecordField.ERROR_CODE] == "backend_unavailable"


def test_input_block_gets_final_message() -> None:
    final = final_message(events.screened(events.accepted(), Verdict.BLOCKED))

    assert final == {"status": "blocked", "stage": "input", "blocked_by": "PromptInjection", "reason": "prompt injection detected"}


def test_failure_gets_final_message() -> None:
    final = final_message(events.failed(events.accepted()))

    assert final == {"status": "failed", "error_code": "backend_unavailable", "message": "the backend did not answer"}


def test_expiry_gets_final_message() -> None:
    assert final_message(events.expired(events.accepted())) == {"status": "expired"}


def test_moderated_requests_get_no_final_message() -> None:
    start = events.accepted()

    for event in events.completed_sequence(start):
        assert final_message(event) is None, event.type
