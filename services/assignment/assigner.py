"""Choosing a request's experiment and variant.

The unit is the request's `user_id`, so a user keeps the same variant on
every request. A request without a `user_id` is hashed by its request id
instead, which gives a random but not sticky assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from services.assignment.hashing import (
    BucketRange,
    bucket_ranges,
    choose_bucket,
    equal_weights,
    hash_unit,
    in_namespace,
)
from shared.events import GenerationParams, RequestSpec, VariantSpec
from shared.experiments import ExperimentConfig, ExperimentsFile, ModelChoice, find_model

log = structlog.get_logger(__name__)

USER_ID_ATTRIBUTE = "user_id"
REQUEST_ID_ATTRIBUTE = "request_id"


@dataclass(frozen=True)
class Assignment:
    """The outcome for one request. `experiment_key` and `hash_value` are None when no experiment took the unit."""

    experiment_key: str | None
    variant: VariantSpec
    hash_value: float | None
    hash_attribute: str


@dataclass(frozen=True)
class _Experiment:
    key: str
    seed: str
    hash_version: int
    namespace: tuple[str, float, float] | None
    ranges: list[BucketRange]
    variants: list[VariantSpec]


def merge_params(variant: GenerationParams, request: GenerationParams) -> GenerationParams:
    """Return the variant's parameters with every field that the request sets (not None) taking precedence.

    A request cannot unset a variant's value: None in the request means "not set".
    """
    overrides = {name: value for name, value in request if value is not None}
    return variant.model_copy(update=overrides)


class Assigner:
    """Maps a request to an `Assignment`, deterministically for a given unit and configuration.

    Bucket ranges are computed once at construction. Experiments with a
    `condition` are skipped, because conditions are not evaluated yet.
    """

    def __init__(self, config: ExperimentsFile) -> None:
        self._config = config
        self._experiments = [_prepare(experiment) for experiment in config.experiments if _is_evaluated(experiment)]
        self._default_variant = config.default_variant.to_spec()

    def assign(self, request: RequestSpec, request_id: str) -> Assignment:
        """Return the variant for `request`, with the request's parameters merged over the variant's.

        The request's `model` name narrows the choice (see `shared.experiments.find_model`).
        A variant key serves that variant with no experiment. An experiment
        key hashes the unit in that experiment only, so a unit outside its
        coverage or namespace gets the default variant.
        """
        unit, attribute = _unit_of(request, request_id)
        choice = self._model_choice(request.model)
        if choice.variant is not None:
            return Assignment(None, _with_request_params(choice.variant.to_spec(), request), None, attribute)

        for experiment in self._experiments:
            if choice.experiment_key not in (None, experiment.key):
                continue
            chosen = _choose(experiment, unit)
            if chosen is not None:
                variant, hash_value = chosen
                return Assignment(experiment.key, _with_request_params(variant, request), hash_value, attribute)
        return Assignment(None, _with_request_params(self._default_variant, request), None, attribute)

    def _model_choice(self, model: str | None) -> ModelChoice:
        choice = find_model(self._config, model)
        if choice is None:
            # The ingress rejects unknown names, so this one left the experiments file after acceptance.
            log.warning("model_not_found", model=model, fallback="usual routing")
            return ModelChoice()
        return choice


def _is_evaluated(experiment: ExperimentConfig) -> bool:
    if experiment.condition is None:
        return True
    # NOTE: targeting conditions are not evaluated yet. Rather than give the
    # experiment to units it does not target, the experiment takes no units.
    log.warning("experiment_skipped", experiment_key=experiment.key, reason="condition is not supported yet")
    return False


def _prepare(experiment: ExperimentConfig) -> _Experiment:
    weights = [variant.weight for variant in experiment.variants]
    if any(weight is None for weight in weights):
        weights = equal_weights(len(experiment.variants))
    namespace = experiment.namespace
    return _Experiment(
        key=experiment.key,
        seed=experiment.resolved_seed,
        hash_version=experiment.hash_version,
        namespace=(namespace.name, namespace.start, namespace.end) if namespace is not None else None,
        ranges=bucket_ranges(len(experiment.variants), experiment.coverage, weights),
        variants=[variant.to_spec() for variant in experiment.variants],
    )


def _unit_of(request: RequestSpec, request_id: str) -> tuple[str, str]:
    # An empty user_id identifies no user, so it is treated like a missing one.
    if request.user_id:
        return request.user_id, USER_ID_ATTRIBUTE
    return request_id, REQUEST_ID_ATTRIBUTE


def _choose(experiment: _Experiment, unit: str) -> tuple[VariantSpec, float] | None:
    """Return the variant and hash for `unit`, or None when the unit is outside the namespace slice or coverage."""
    if experiment.namespace is not None and not in_namespace(unit, experiment.namespace):
        return None

    hash_value = hash_unit(experiment.seed, unit, experiment.hash_version)
    if hash_value is None:
        return None

    index = choose_bucket(hash_value, experiment.ranges)
    if index < 0:
        return None
    return experiment.variants[index], hash_value


def _with_request_params(variant: VariantSpec, request: RequestSpec) -> VariantSpec:
    return variant.model_copy(update={"params": merge_params(variant.params, request.params)})
