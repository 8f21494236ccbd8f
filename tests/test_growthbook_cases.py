"""GrowthBook's shared SDK test cases, run through the assignment service's hashing module.

Every GrowthBook SDK must pass these cases, so passing them means a unit gets
the same variant here as in GrowthBook's other SDKs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.assignment.hashing import bucket_ranges, choose_bucket, equal_weights, hash_unit, in_namespace
from shared.settings import REPO_ROOT

CASES_FILE = REPO_ROOT.parent / "shared" / "reference" / "growthbook-cases.json"

# The reference values are rounded (for example 0.33333333 and 0.04).
ROUNDING_TOLERANCE = 1e-6


def _cases(section: str) -> list[Any]:
    if not CASES_FILE.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"GrowthBook test cases not found at {CASES_FILE}"))]
    return json.loads(CASES_FILE.read_text(encoding="utf-8"))[section]


def _case_id(case: Any) -> str:
    return str(case[0]) if isinstance(case, list) else "absent"


def _ranges(ranges: list[list[float]]) -> list[tuple[float, float]]:
    return [(start, end) for start, end in ranges]


def _flatten(ranges: list[Any]) -> list[float]:
    return [bound for bucket_range in ranges for bound in bucket_range]


@pytest.mark.parametrize("case", _cases("hash"), ids=_case_id)
def test_hash_case(case: list[Any]) -> None:
    seed, unit, version, expected = case

    assert hash_unit(seed, unit, version) == expected


@pytest.mark.parametrize("case", _cases("getBucketRange"), ids=_case_id)
def test_bucket_range_case(case: list[Any]) -> None:
    _name, (variation_count, coverage, weights), expected = case

    ranges = bucket_ranges(variation_count, coverage, weights)

    assert len(ranges) == len(expected)
    assert _flatten(ranges) == pytest.approx(_flatten(expected), abs=ROUNDING_TOLERANCE)


@pytest.mark.parametrize("case", _cases("chooseVariation"), ids=_case_id)
def test_choose_bucket_case(case: list[Any]) -> None:
    _name, hash_value, ranges, expected = case

    assert choose_bucket(hash_value, _ranges(ranges)) == expected


@pytest.mark.parametrize("case", _cases("inNamespace"), ids=_case_id)
def test_in_namespace_case(case: list[Any]) -> None:
    _name, unit, (namespace, start, end), expected = case

    assert in_namespace(unit, (namespace, start, end)) is expected


@pytest.mark.parametrize("case", _cases("getEqualWeights"), ids=_case_id)
def test_equal_weights_case(case: list[Any]) -> None:
    variation_count, expected = case

    assert equal_weights(variation_count) == pytest.approx(expected, abs=ROUNDING_TOLERANCE)
