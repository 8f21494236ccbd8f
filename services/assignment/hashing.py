"""GrowthBook's bucketing functions, wrapped so the rest of the service depends on one module.

The functions come from the `growthbook` SDK (`growthbook.core`), so a unit
lands in the same variant here as in any other GrowthBook SDK given the same
seed, weights and coverage.
"""

from __future__ import annotations

from collections.abc import Sequence

from growthbook.core import chooseVariation, gbhash, getBucketRanges, getEqualWeights, inNamespace

BucketRange = tuple[float, float]


def hash_unit(seed: str, unit: str, version: int) -> float | None:
    """Return GrowthBook's hash of `unit` under `seed`, in [0, 1).

    Version 1 has 1,000 distinct values and version 2 has 10,000. Returns None
    for any other version.
    """
    return gbhash(seed, unit, version)


def bucket_ranges(
    variation_count: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[BucketRange]:
    """Return one [start, end) range per variation.

    Coverage is clamped to [0, 1]. Weights that are missing, of the wrong
    length or not summing to 1 (within 0.01) are replaced by equal weights.
    """
    return getBucketRanges(variation_count, coverage, list(weights) if weights is not None else None)


def choose_bucket(hash_value: float, ranges: Sequence[BucketRange]) -> int:
    """Return the index of the first range that contains `hash_value`, or -1 when none does."""
    return chooseVariation(hash_value, list(ranges))


def in_namespace(unit: str, namespace: tuple[str, float, float]) -> bool:
    """Return whether `unit` hashes into the slice [start, end) of namespace `(name, start, end)`."""
    return inNamespace(unit, namespace)


def equal_weights(variation_count: int) -> list[float]:
    """Return `variation_count` equal weights summing to 1, or an empty list when the count is below 1."""
    return getEqualWeights(variation_count)
