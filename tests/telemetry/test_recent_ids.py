"""The recent-id memory keeps the last keys added and drops the oldest first."""

from __future__ import annotations

import pytest

from services.telemetry.recent_ids import RecentIds


def test_keeps_added_keys() -> None:
    recent = RecentIds(max_ids=3)

    recent.add_all([("acme", "e1"), ("acme", "e2")])

    assert ("acme", "e1") in recent
    assert ("acme", "e2") in recent
    assert ("globex", "e1") not in recent


def test_drops_oldest_beyond_max() -> None:
    recent = RecentIds(max_ids=2)

    recent.add_all([("acme", "e1"), ("acme", "e2"), ("acme", "e3")])

    assert ("acme", "e1") not in recent
    assert ("acme", "e3") in recent
    assert len(recent) == 2


def test_repeated_key_counts_once() -> None:
    recent = RecentIds(max_ids=2)

    recent.add_all([("acme", "e1"), ("acme", "e1"), ("acme", "e2")])

    assert ("acme", "e1") in recent
    assert len(recent) == 2


def test_max_below_one_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RecentIds(max_ids=0)
