"""Why a request of the Locust scenario counts as a failure in Locust's statistics.

Locust groups failures by their message, so messages name the kind of
failure and never a request id.
"""

from __future__ import annotations

from typing import Any

from services.ingress.state_store import RequestStatus

COMPLETED = RequestStatus.COMPLETED.value
TERMINAL_STATUSES = frozenset(
    status.value for status in (RequestStatus.BLOCKED, RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.EXPIRED)
)


class ScenarioFailure(Exception):
    """A request that did not complete. Locust records the message in its failures table."""


class RequestNotCompleted(ScenarioFailure):
    """The request reached a terminal status other than completed: blocked, failed or expired."""


class RequestTimedOut(ScenarioFailure):
    """The request had not finished within the scenario's timeout."""


class StreamBroken(ScenarioFailure):
    """The WebSocket stream failed, or closed before its final message."""


class StatusReadFailed(ScenarioFailure):
    """Polling the status URL returned an error instead of the status."""


def final_failure(final: dict[str, Any]) -> RequestNotCompleted | None:
    """Return the failure a stream's final message reports, or None when the request completed."""
    return _outcome_failure(final.get("status"), final.get("blocked_by"), final.get("error_code"))


def status_failure(status: dict[str, Any]) -> RequestNotCompleted | None:
    """Return the failure a terminal status body reports, or None when the request completed."""
    error = status.get("error") or {}
    return _outcome_failure(status.get("status"), status.get("blocked_by"), error.get("code"))


def _outcome_failure(status: str | None, blocked_by: str | None, error_code: str | None) -> RequestNotCompleted | None:
    if status == COMPLETED:
        return None
    if status == RequestStatus.BLOCKED.value:
        return RequestNotCompleted(f"blocked by {blocked_by or 'an unnamed scanner'}")
    if status == RequestStatus.FAILED.value:
        return RequestNotCompleted(f"failed with {error_code or 'no error code'}")
    return RequestNotCompleted(f"ended with status {status}")
