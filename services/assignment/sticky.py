"""GrowthBook's sticky bucketing rules, applied to one unit's stored assignments.

GrowthBook keeps one assignment document per unit,
`{attributeName, attributeValue, assignments}`, where `assignments` maps
`{experiment key}__{bucket version}` to the key of the variant the unit got.
The rules below follow `growthbook.core` (growthbook 4.0.0):

- A stored variant for the experiment's current bucket version wins over
  the hash, so a unit keeps its variant when weights change, as long as
  that variant key still exists.
- A stored assignment under any version below `min_bucket_version` excludes
  the unit from the experiment.
- Bumping `bucket_version` leaves the old assignments unread, so every unit
  is hashed again, and the new variant is stored under the new version.

The SDK's own functions for this are private and read its evaluation
context, so these few lines restate them on plain mappings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StickyLookup:
    """The decision that a unit's stored assignments make for one experiment.

    `variant_index` is the stored variant's position, or None when the hash
    decides. `blocked` is True when an assignment older than
    `min_bucket_version` excludes the unit.
    """

    variant_index: int | None = None
    blocked: bool = False


def assignment_field(experiment_key: str, bucket_version: int) -> str:
    """Return GrowthBook's name for an experiment's assignment in the document: `{key}__{version}`."""
    return f"{experiment_key}__{bucket_version}"


def look_up(
    assignments: Mapping[str, str],
    experiment_key: str,
    bucket_version: int,
    min_bucket_version: int,
    variant_keys: Sequence[str],
) -> StickyLookup:
    """Return the stored decision for `experiment_key` under its current bucket versions."""
    for version in range(min_bucket_version):
        if assignment_field(experiment_key, version) in assignments:
            return StickyLookup(blocked=True)

    stored = assignments.get(assignment_field(experiment_key, bucket_version))
    # A variant that left the experiment no longer binds the unit, so the hash decides again.
    if not stored or stored not in variant_keys:
        return StickyLookup()
    return StickyLookup(variant_index=list(variant_keys).index(stored))
