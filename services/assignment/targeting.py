"""Targeting conditions: GrowthBook's condition language evaluated on a request's attributes.

A condition is a GrowthBook condition object (MongoDB-like operators such as
`$in`, `$regex` and `$exists`), evaluated by the `growthbook` SDK's
`evalCondition`, so a condition matches here exactly when it would in any
other GrowthBook SDK given the same attributes.

The attributes of a request are `tenant`, `route`, `user_id` and `metadata`
(the request's metadata object, so a condition names a metadata key with a
dotted path such as `metadata.country`). An attribute that the request lacks
is left out, and the condition evaluates it as GrowthBook evaluates a missing attribute:
`{"user_id": {"$exists": false}}` matches, and an equality test fails.
Metadata stays under its own key, so a client cannot set `tenant` or
`user_id` through it.

NOTE: metadata values are strings, and growthbook 4.0.0 orders only two
numbers or two strings, so `{"metadata.tier": {"$gt": 2}}` never matches.
Compare metadata with strings (`$in`, `$regex`, or `$gt` on equal-width strings).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from growthbook.core import evalCondition

from shared.events import RequestSpec


def condition_attributes(request: RequestSpec, tenant: str | None, route: str | None) -> dict[str, Any]:
    """Return the attributes that a condition is evaluated on, without the ones the request lacks."""
    attributes: dict[str, Any] = {"metadata": dict(request.metadata)}
    if tenant is not None:
        attributes["tenant"] = tenant
    if route is not None:
        attributes["route"] = route
    # An empty user_id identifies no user, as in the choice of the hashed unit.
    if request.user_id:
        attributes["user_id"] = request.user_id
    return attributes


def matches_condition(
    condition: Mapping[str, Any], attributes: Mapping[str, Any], saved_groups: Mapping[str, Any] | None = None
) -> bool:
    """Return whether `attributes` satisfy `condition`, as GrowthBook's `evalCondition` decides.

    `saved_groups` maps a saved group id to its list of values, for the
    `$inGroup` and `$notInGroup` operators. An invalid condition (an unknown
    operator, a bad regular expression) does not match.
    """
    groups = dict(saved_groups) if saved_groups is not None else None
    return evalCondition(dict(attributes), dict(condition), groups)
