"""Variant choice: determinism, balance, coverage, namespaces and the parameter merge rule."""

from __future__ import annotations

from collections import Counter

import pytest
from structlog.testing import capture_logs

from services.assignment.assigner import REQUEST_ID_ATTRIBUTE, USER_ID_ATTRIBUTE, Assigner, merge_params
from services.assignment.hashing import hash_unit
from shared.events import ChatMessage, GenerationParams, RequestSpec
from shared.experiments import ExperimentsFile


def _config(**experiment: object) -> ExperimentsFile:
    return ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded", "params": {"temperature": 0.7}},
            "experiments": [
                {
                    "key": "sampling",
                    "variants": [
                        {"key": "control", "weight": 0.5, "backend": "embedded", "params": {"temperature": 0.8}},
                        {"key": "cooler", "weight": 0.5, "backend": "embedded", "params": {"temperature": 0.5, "top_p": 0.9}},
                    ],
                    **experiment,
                }
            ],
        }
    )


def _request(user_id: str | None = None, params: GenerationParams | None = None) -> RequestSpec:
    return RequestSpec(
        messages=[ChatMessage(role="user", content="Speak, friend.")],
        params=params or GenerationParams(),
        user_id=user_id,
    )


def test_same_user_same_variant() -> None:
    assigner = Assigner(_config())

    first = assigner.assign(_request("alice"), "request-1")
    second = assigner.assign(_request("alice"), "request-2")

    assert first.variant.key == second.variant.key
    assert first.hash_value == second.hash_value


def test_user_hash_matches_growthbook() -> None:
    assignment = Assigner(_config()).assign(_request("alice"), "request-1")

    assert assignment.experiment_key == "sampling"
    assert assignment.hash_attribute == USER_ID_ATTRIBUTE
    assert assignment.hash_value == hash_unit("sampling", "alice", 2)


def test_variants_balanced_over_users() -> None:
    assigner = Assigner(_config())

    counts = Counter(assigner.assign(_request(f"user-{index}"), "request").variant.key for index in range(1000))

    # 50/50 over 1000 units: the standard deviation is about 16, so 450..550 is beyond 3 sigma.
    assert 450 <= counts["control"] <= 550
    assert counts["control"] + counts["cooler"] == 1000


def test_seed_changes_split() -> None:
    default_seed = Assigner(_config())
    other_seed = Assigner(_config(seed="another-seed"))
    users = [f"user-{index}" for index in range(200)]

    differing = [
        user
        for user in users
        if default_seed.assign(_request(user), "r").variant.key != other_seed.assign(_request(user), "r").variant.key
    ]

    assert len(differing) > 50


def test_missing_user_hashes_request_id() -> None:
    assignment = Assigner(_config()).assign(_request(None), "request-42")

    assert assignment.hash_attribute == REQUEST_ID_ATTRIBUTE
    assert assignment.hash_value == hash_unit("sampling", "request-42", 2)


def test_empty_user_hashes_request_id() -> None:
    assignment = Assigner(_config()).assign(_request(""), "request-42")

    assert assignment.hash_attribute == REQUEST_ID_ATTRIBUTE


def test_zero_coverage_gives_default() -> None:
    assignment = Assigner(_config(coverage=0.0)).assign(_request("alice"), "request-1")

    assert assignment.experiment_key is None
    assert assignment.variant.key == "default"
    assert assignment.hash_value is None
    assert assignment.variant.params.temperature == 0.7


def test_partial_coverage_splits_units() -> None:
    assigner = Assigner(_config(coverage=0.5))

    keys = Counter(assigner.assign(_request(f"user-{index}"), "r").variant.key for index in range(1000))

    assert 450 <= keys["default"] <= 550
    assert keys["control"] > 0
    assert keys["cooler"] > 0


def test_namespace_excludes_outside_units() -> None:
    assigner = Assigner(_config(namespace={"name": "sampling-layer", "start": 0.0, "end": 0.3}))

    keys = Counter(assigner.assign(_request(f"user-{index}"), "r").variant.key for index in range(1000))

    # inNamespace hashes with version 1, so about 700 of 1000 units fall outside [0, 0.3).
    assert 630 <= keys["default"] <= 770


def test_condition_skips_experiment() -> None:
    assignment = Assigner(_config(condition={"country": "NL"})).assign(_request("alice"), "request-1")

    assert assignment.experiment_key is None
    assert assignment.variant.key == "default"


def test_omitted_weights_split_equally() -> None:
    config = ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded"},
            "experiments": [
                {"key": "three-way", "variants": [{"key": name, "backend": "embedded"} for name in ("a", "b", "c")]}
            ],
        }
    )
    assigner = Assigner(config)

    keys = Counter(assigner.assign(_request(f"user-{index}"), "r").variant.key for index in range(3000))

    for name in ("a", "b", "c"):
        assert 900 <= keys[name] <= 1100


def test_first_matching_experiment_wins() -> None:
    config = ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded"},
            "experiments": [
                {"key": "first", "coverage": 0.0, "variants": [{"key": "first-arm", "backend": "embedded"}]},
                {"key": "second", "variants": [{"key": "second-arm", "backend": "embedded"}]},
            ],
        }
    )

    assignment = Assigner(config).assign(_request("alice"), "r")

    assert assignment.experiment_key == "second"
    assert assignment.variant.key == "second-arm"


def test_request_params_override_variant() -> None:
    merged = merge_params(
        GenerationParams(temperature=0.5, top_p=0.9, max_new_tokens=64),
        GenerationParams(temperature=1.2, stop=["\n\n"]),
    )

    assert merged == GenerationParams(temperature=1.2, top_p=0.9, max_new_tokens=64, stop=["\n\n"])


def test_unset_request_params_keep_variant() -> None:
    merged = merge_params(GenerationParams(temperature=0.5, top_p=0.9), GenerationParams())

    assert merged == GenerationParams(temperature=0.5, top_p=0.9)


@pytest.mark.parametrize("user_id", ["alice", "bob", "carol"])
def test_assignment_carries_merged_params(user_id: str) -> None:
    assignment = Assigner(_config()).assign(_request(user_id, GenerationParams(max_new_tokens=32)), "r")

    assert assignment.variant.params.max_new_tokens == 32
    assert assignment.variant.params.temperature in (0.8, 0.5)


def _two_experiments(second_coverage: float = 1.0) -> ExperimentsFile:
    """Two experiments that both take every unit, so only `model` can send a unit to the second."""
    return ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded"},
            "experiments": [
                {"key": "first", "variants": [{"key": "first-arm", "backend": "embedded"}]},
                {"key": "second", "coverage": second_coverage, "variants": [{"key": "second-arm", "backend": "embedded"}]},
            ],
        }
    )


def _asking_for(model: str, user_id: str = "alice", params: GenerationParams | None = None) -> RequestSpec:
    return _request(user_id, params).model_copy(update={"model": model})


@pytest.mark.parametrize("user_id", ["alice", "bob", "carol"])
def test_variant_key_serves_variant_without_experiment(user_id: str) -> None:
    assigner = Assigner(_config())

    assignment = assigner.assign(_asking_for("cooler", user_id, GenerationParams(max_new_tokens=16)), "r")

    assert assignment.variant.key == "cooler"
    assert assignment.experiment_key is None
    assert assignment.hash_value is None
    assert assignment.variant.params == GenerationParams(temperature=0.5, top_p=0.9, max_new_tokens=16)


def test_default_variant_key_serves_default() -> None:
    assignment = Assigner(_config()).assign(_asking_for("default"), "r")

    assert assignment.variant.key == "default"
    assert assignment.experiment_key is None


def test_experiment_key_assigns_in_that_experiment() -> None:
    assigner = Assigner(_two_experiments())

    assignment = assigner.assign(_asking_for("second"), "r")

    assert assignment.experiment_key == "second"
    assert assignment.variant.key == "second-arm"
    assert assignment.hash_value == hash_unit("second", "alice", 2)


def test_experiment_key_outside_coverage_gives_default() -> None:
    assignment = Assigner(_two_experiments(second_coverage=0.0)).assign(_asking_for("second"), "r")

    assert assignment.experiment_key is None
    assert assignment.variant.key == "default"


def test_auto_routes_as_usual() -> None:
    assigner = Assigner(_two_experiments())

    assert assigner.assign(_asking_for("auto"), "r") == assigner.assign(_request("alice"), "r")


def test_unknown_model_routes_as_usual_and_logs() -> None:
    assigner = Assigner(_two_experiments())

    with capture_logs() as logs:
        assignment = assigner.assign(_asking_for("removed-variant"), "r")

    assert assignment.experiment_key == "first"
    assert [entry["model"] for entry in logs if entry["event"] == "model_not_found"] == ["removed-variant"]
