"""Choosing a request's experiment and variant.

The unit is the request's `user_id`, so a user keeps the same variant on
every request. A request without a `user_id` is hashed by its request id
instead, which gives a random assignment that is never stored.

For each experiment in order, as GrowthBook's `run_experiment` does: a
forced variant of the unit wins, then an experiment outside its start and
stop takes no unit, then the unit's stored (sticky) variant wins, then the
namespace, the condition, coverage and the hash decide. A unit with a stored
variant skips the namespace, condition and coverage checks, as in GrowthBook,
so narrowing them later does not move units already in the experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog

from services.assignment.hashing import (
    BucketRange,
    bucket_ranges,
    choose_bucket,
    equal_weights,
    hash_unit,
    in_namespace,
)
from services.assignment.sticky import assignment_field, look_up
from services.assignment.targeting import condition_attributes, matches_condition
from shared.events import GenerationParams, RequestSpec, VariantSpec, utc_now
from shared.experiments import ExperimentConfig, ExperimentsFile, ModelChoice, find_model

log = structlog.get_logger(__name__)

USER_ID_ATTRIBUTE = "user_id"
REQUEST_ID_ATTRIBUTE = "request_id"

# The source of a chosen variant (the hash, the sticky store or a forced entry), as `ExposedPayload.source` records it.
Source = Literal["hash", "sticky", "forced"]


@dataclass(frozen=True)
class StickyAssignment:
    """A new entry for the unit's assignment document: `field` (`{key}__{version}`) maps to `variant_key`."""

    field: str
    variant_key: str


@dataclass(frozen=True)
class Assignment:
    """The outcome for one request.

    `experiment_key`, `hash_value` and `source` are None when no experiment
    took the unit. `hash_value` is also None for a forced variant, which
    is chosen before hashing. `sticky_update` is the entry to store when
    the hash chose the variant of a unit whose assignments are stored.
    """

    experiment_key: str | None
    variant: VariantSpec
    hash_value: float | None
    hash_attribute: str
    unit: str = ""
    source: Source | None = None
    bucket_version: int = 0
    sticky_update: StickyAssignment | None = None


@dataclass(frozen=True)
class _Experiment:
    config: ExperimentConfig
    namespace: tuple[str, float, float] | None
    ranges: list[BucketRange]
    variants: list[VariantSpec]
    forced: dict[str, VariantSpec]

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def variant_keys(self) -> list[str]:
        return [variant.key for variant in self.variants]


@dataclass(frozen=True)
class _Choice:
    variant: VariantSpec
    hash_value: float | None
    source: Source
    sticky_update: StickyAssignment | None = None


def merge_params(variant: GenerationParams, request: GenerationParams) -> GenerationParams:
    """Return the variant's parameters with every field that the request sets (not None) taking precedence.

    A request cannot unset a variant's value: None in the request means "not set".
    """
    overrides = {name: value for name, value in request if value is not None}
    return variant.model_copy(update=overrides)


class Assigner:
    """Maps a request to an `Assignment`, deterministically for a given unit, configuration, time and stored assignments.

    Bucket ranges and variant specs are computed once at construction.
    """

    def __init__(self, config: ExperimentsFile) -> None:
        self._config = config
        self._experiments = [_prepare(experiment) for experiment in config.experiments]
        self._default_variant = config.default_variant.to_spec()

    @property
    def has_experiments(self) -> bool:
        """Whether any experiment can take a unit, so that loading stored assignments can matter."""
        return bool(self._experiments)

    def assign(
        self,
        request: RequestSpec,
        request_id: str,
        *,
        tenant: str | None = None,
        route: str | None = None,
        sticky_assignments: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> Assignment:
        """Return the variant for `request`, with the request's parameters merged over the variant's.

        The request's `model` name narrows the choice (see `shared.experiments.find_model`).
        A variant key serves that variant with no experiment. An experiment
        key hashes the unit in that experiment only, so a unit outside its
        coverage or namespace gets the default variant.

        `tenant` and `route` are condition attributes. `sticky_assignments`
        is the unit's stored assignment document (`{key}__{version}` to
        variant key), or None when the unit is not sticky or the store is
        unavailable, in which case the hash decides. `now` defaults to the
        current UTC time and is compared with each experiment's start and stop.
        """
        unit, attribute = unit_of(request, request_id)
        choice = self._model_choice(request.model)
        if choice.variant is not None:
            return Assignment(None, _with_request_params(choice.variant.to_spec(), request), None, attribute, unit)

        attributes = condition_attributes(request, tenant, route)
        moment = now or utc_now()
        for experiment in self._experiments:
            if choice.experiment_key not in (None, experiment.key):
                continue
            chosen = _choose(experiment, unit, attributes, sticky_assignments, moment)
            if chosen is not None:
                return Assignment(
                    experiment.key,
                    _with_request_params(chosen.variant, request),
                    chosen.hash_value,
                    attribute,
                    unit,
                    chosen.source,
                    experiment.config.bucket_version,
                    chosen.sticky_update,
                )
        return Assignment(None, _with_request_params(self._default_variant, request), None, attribute, unit)

    def _model_choice(self, model: str | None) -> ModelChoice:
        choice = find_model(self._config, model)
        if choice is None:
            # The ingress rejects unknown names, so this one left the experiments file after acceptance.
            log.warning("model_not_found", model=model, fallback="usual routing")
            return ModelChoice()
        return choice


def _prepare(experiment: ExperimentConfig) -> _Experiment:
    weights = [variant.weight for variant in experiment.variants]
    if any(weight is None for weight in weights):
        weights = equal_weights(len(experiment.variants))
    namespace = experiment.namespace
    variants = [variant.to_spec() for variant in experiment.variants]
    by_key = {variant.key: variant for variant in variants}
    return _Experiment(
        config=experiment,
        namespace=(namespace.name, namespace.start, namespace.end) if namespace is not None else None,
        ranges=bucket_ranges(len(experiment.variants), experiment.coverage, weights),
        variants=variants,
        forced={unit: by_key[key] for unit, key in experiment.forced_variants.items()},
    )


def unit_of(request: RequestSpec, request_id: str) -> tuple[str, str]:
    """Return the unit that `request` is hashed by and the attribute it comes from (`user_id` or `request_id`)."""
    # An empty user_id identifies no user, so it is treated like a missing one.
    if request.user_id:
        return request.user_id, USER_ID_ATTRIBUTE
    return request_id, REQUEST_ID_ATTRIBUTE


def _choose(
    experiment: _Experiment,
    unit: str,
    attributes: dict[str, Any],
    sticky_assignments: Mapping[str, str] | None,
    now: datetime,
) -> _Choice | None:
    """Return the variant of `unit` in `experiment`, or None when the experiment does not take the unit."""
    forced = experiment.forced.get(unit)
    if forced is not None:
        return _Choice(forced, None, "forced")
    if not experiment.config.is_running(now):
        return None

    stored_index: int | None = None
    if sticky_assignments is not None:
        config = experiment.config
        lookup = look_up(
            sticky_assignments, config.key, config.bucket_version, config.min_bucket_version, experiment.variant_keys
        )
        if lookup.blocked:
            return None
        stored_index = lookup.variant_index

    if stored_index is None and not _is_targeted(experiment, unit, attributes):
        return None
    hash_value = hash_unit(experiment.config.resolved_seed, unit, experiment.config.hash_version)
    if hash_value is None:
        return None
    if stored_index is not None:
        return _Choice(experiment.variants[stored_index], hash_value, "sticky")
    return _hashed_choice(experiment, hash_value, sticky_assignments is not None)


def _is_targeted(experiment: _Experiment, unit: str, attributes: dict[str, Any]) -> bool:
    if experiment.namespace is not None and not in_namespace(unit, experiment.namespace):
        return False
    condition = experiment.config.condition
    return condition is None or matches_condition(condition, attributes)


def _hashed_choice(experiment: _Experiment, hash_value: float, is_sticky: bool) -> _Choice | None:
    """Return the variant whose bucket contains `hash_value`, or None when the unit is outside coverage."""
    index = choose_bucket(hash_value, experiment.ranges)
    if index < 0:
        return None
    variant = experiment.variants[index]
    update = None
    if is_sticky:
        update = StickyAssignment(assignment_field(experiment.key, experiment.config.bucket_version), variant.key)
    return _Choice(variant, hash_value, "hash", update)


def _with_request_params(variant: VariantSpec, request: RequestSpec) -> VariantSpec:
    return variant.model_copy(update={"params": merge_params(variant.params, request.params)})
