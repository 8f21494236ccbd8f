"""The weighted turn that picks which tenant an endpoint pool admits next."""

from __future__ import annotations

from collections import Counter

import pytest

from services.inference.weighted_turn import WeightedTurn


def _turns(turn: WeightedTurn, candidates: list[str], count: int) -> list[str]:
    return [turn.choose(candidates) for _ in range(count)]


def test_equal_weights_alternate() -> None:
    turn = WeightedTurn({})

    assert _turns(turn, ["a", "b"], 6) == ["a", "b", "a", "b", "a", "b"]


def test_weights_three_to_one_spread() -> None:
    turn = WeightedTurn({"a": 3})

    assert _turns(turn, ["a", "b"], 8) == ["a", "a", "b", "a", "a", "a", "b", "a"]


def test_shares_follow_weights() -> None:
    turn = WeightedTurn({"a": 5, "b": 2})

    counts = Counter(_turns(turn, ["a", "b", "c"], 80))

    assert counts == {"a": 50, "b": 20, "c": 10}


def test_single_candidate_always_chosen() -> None:
    turn = WeightedTurn({"a": 4})

    assert _turns(turn, ["b"], 3) == ["b", "b", "b"]


def test_idle_tenant_banks_no_turns() -> None:
    turn = WeightedTurn({})
    _turns(turn, ["a"], 10)

    # b waited for none of a's ten turns, so both start level and alternate.
    assert _turns(turn, ["b", "a"], 4) == ["b", "a", "b", "a"]


def test_new_tenant_keeps_others_credit() -> None:
    turn = WeightedTurn({})
    assert _turns(turn, ["a", "b"], 3) == ["a", "b", "a"]

    # c arrives after a took two turns to b's one. b is owed a turn, so it still goes first.
    assert turn.choose(["a", "b", "c"]) == "b"


def test_unlisted_tenant_weighs_one() -> None:
    turn = WeightedTurn({"a": 2})

    assert turn.weight_of("a") == 2
    assert turn.weight_of("z") == 1


def test_empty_candidates_rejected() -> None:
    with pytest.raises(ValueError, match="no tenant has waiting work"):
        WeightedTurn({}).choose([])


def test_zero_weight_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WeightedTurn({"a": 0})
