"""The request budget that stops a Locust run after a set number of requests."""

from __future__ import annotations

from load_tests.locust_budget import RequestBudget


def test_budget_rejects_claims_past_maximum() -> None:
    budget = RequestBudget(max_requests=2)

    claims = [budget.claim() for _ in range(3)]

    assert claims == [True, True, False]
    assert budget.started == 2


def test_release_reports_last_request() -> None:
    budget = RequestBudget(max_requests=2)
    budget.claim()
    budget.claim()

    assert budget.release() is False
    assert budget.release() is True


def test_unlimited_budget_never_ends() -> None:
    budget = RequestBudget(max_requests=None)

    claims = [budget.claim() for _ in range(1_000)]
    releases = [budget.release() for _ in range(1_000)]

    assert all(claims)
    assert not any(releases)
