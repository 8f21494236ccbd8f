"""The highest-rate search: which rate it probes next and when it stops."""

from __future__ import annotations

from load_tests.rate_search import RateSearch


def test_search_bisects_between_pass_and_fail() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(100.0, passed=True)
    search.record(200.0, passed=False)

    assert search.next_rate() == 150.0


def test_search_doubles_after_only_passes() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(500.0, passed=True)

    assert search.next_rate() == 1000.0


def test_search_stops_doubling_at_cap() -> None:
    search = RateSearch(max_rate_rps=800.0)
    search.record(500.0, passed=True)
    assert search.next_rate() == 800.0

    search.record(800.0, passed=True)
    assert search.next_rate() is None


def test_search_halves_after_only_fails() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(50.0, passed=False)

    assert search.next_rate() == 25.0


def test_search_stops_below_min_step() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(12.0, passed=False)

    assert search.next_rate() is None


def test_search_stops_when_bracket_narrow() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(400.0, passed=True)
    search.record(430.0, passed=False)

    assert search.next_rate() is None


def test_search_stops_when_results_inverted() -> None:
    search = RateSearch(max_rate_rps=2000.0)
    search.record(100.0, passed=False)
    search.record(200.0, passed=True)

    assert search.next_rate() is None
    assert search.passed_rps == 200.0
    assert search.failed_rps == 100.0


def test_search_without_results_has_nothing() -> None:
    assert RateSearch(max_rate_rps=2000.0).next_rate() is None
