"""Which terminal states the Locust scenario counts as failures, and their messages."""

from __future__ import annotations

from load_tests.locust_outcomes import TERMINAL_STATUSES, final_failure, status_failure


def test_completed_final_is_success() -> None:
    assert final_failure({"type": "final", "status": "completed", "finish_reason": "length"}) is None


def test_blocked_final_names_scanner() -> None:
    failure = final_failure({"type": "final", "status": "blocked", "blocked_by": "Secrets", "reason": "found a key"})

    assert str(failure) == "blocked by Secrets"


def test_failed_final_names_error_code() -> None:
    failure = final_failure({"type": "final", "status": "failed", "error_code": "backend_rejected", "message": "too long"})

    assert str(failure) == "failed with backend_rejected"


def test_expired_final_names_status() -> None:
    assert str(final_failure({"type": "final", "status": "expired"})) == "ended with status expired"


def test_status_body_failure_reads_error_code() -> None:
    failure = status_failure({"status": "failed", "error": {"code": "backend_unavailable", "message": "refused"}})

    assert str(failure) == "failed with backend_unavailable"


def test_completed_status_body_is_success() -> None:
    assert status_failure({"status": "completed", "error": None}) is None


def test_terminal_statuses_exclude_progress() -> None:
    assert TERMINAL_STATUSES == {"blocked", "completed", "failed", "expired"}
