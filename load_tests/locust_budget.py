"""A request-count limit for a Locust run: users claim a request before sending it."""

from __future__ import annotations


class RequestBudget:
    """Counts requests against an optional maximum, so a run can stop after exactly that many.

    A user calls `claim()` before it sends a request and `release()` once that
    request ended, whatever its outcome. Not thread-safe: Locust's users are
    greenlets of one thread, and neither method yields to another greenlet.

    NOTE: with several Locust worker processes, each counts its own requests
    and quits only its own runner. Distributed runs were not tried.
    """

    def __init__(self, max_requests: int | None) -> None:
        self.max_requests = max_requests
        self.started = 0
        self.finished = 0

    def claim(self) -> bool:
        """Count one more request and return True, or return False when the maximum was started already."""
        if self.max_requests is not None and self.started >= self.max_requests:
            return False
        self.started += 1
        return True

    def release(self) -> bool:
        """Count one claimed request as ended, and return True when it was the last one the maximum allows."""
        self.finished += 1
        return self.finished == self.max_requests
