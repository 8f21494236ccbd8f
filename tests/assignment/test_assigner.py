"""Variant choice: determinism, balance, coverage, namespaces and the parameter merge rule."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

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


def test_unmet_condition_gives_default() -> None:
    assignment = Assigner(_config(condition={"tenant": "globex"})).assign(_request("alice"), "r", tenant="acme")

    assert assignment.experiment_key is None
    assert assignment.variant.key == "default"
    assert assignment.source is None


@pytest.mark.parametrize(
    "condition",
    [
        {"tenant": "acme"},
        {"route": {"$in": ["/v1/chat/completions", "/v1/requests"]}},
        {"user_id": {"$regex": "^ali"}},
        {"metadata.country": "NL"},
        {"$and": [{"tenant": "acme"}, {"metadata.plan": {"$ne": "free"}}]},
    ],
)
def test_met_condition_enters_experiment(condition: dict[str, object]) -> None:
    request = _request("alice").model_copy(update={"metadata": {"country": "NL", "plan": "pro"}})

    assignment = Assigner(_config(condition=condition)).assign(request, "r", tenant="acme", route="/v1/requests")

    assert assignment.experiment_key == "sampling"
    assert assignment.source == "hash"


def test_absent_attribute_evaluates_as_growthbook() -> None:
    absent = Assigner(_config(condition={"user_id": {"$exists": False}}))
    equal = Assigner(_config(condition={"metadata.country": "NL"}))

    assert absent.assign(_request(None), "r").experiment_key == "sampling"
    assert absent.assign(_request("alice"), "r").experiment_key is None
    assert equal.assign(_request("alice"), "r").experiment_key is None


def test_metadata_cannot_set_tenant() -> None:
    request = _request("alice").model_copy(update={"metadata": {"tenant": "acme"}})

    assignment = Assigner(_config(condition={"tenant": "acme"})).assign(request, "r", tenant="globex")

    assert assignment.experiment_key is None


def test_unmet_condition_falls_to_next_experiment() -> None:
    config = ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded"},
            "experiments": [
                {"key": "dutch", "condition": {"metadata.country": "NL"}, "variants": [{"key": "nl-arm", "backend": "embedded"}]},
                {"key": "everyone", "variants": [{"key": "all-arm", "backend": "embedded"}]},
            ],
        }
    )
    assigner = Assigner(config)
    dutch = _request("alice").model_copy(update={"metadata": {"country": "NL"}})

    assert assigner.assign(dutch, "r").experiment_key == "dutch"
    assert assigner.assign(_request("alice"), "r").experiment_key == "everyone"


def test_forced_variant_wins_over_hash() -> None:
    users = [f"user-{index}" for index in range(50)]
    assigner = Assigner(_config(forced_variants={user: "cooler" for user in users}))

    assignments = [assigner.assign(_request(user), "r") for user in users]

    assert {assignment.variant.key for assignment in assignments} == {"cooler"}
    assert {assignment.source for assignment in assignments} == {"forced"}
    assert {assignment.hash_value for assignment in assignments} == {None}


def test_forced_variant_ignores_coverage_and_condition() -> None:
    config = _config(coverage=0.0, condition={"tenant": "nobody"}, forced_variants={"qa-tester": "control"})

    assignment = Assigner(config).assign(_request("qa-tester"), "r", tenant="acme")

    assert assignment.experiment_key == "sampling"
    assert assignment.variant.key == "control"


def test_forced_variant_not_stored() -> None:
    assignment = Assigner(_config(forced_variants={"alice": "control"})).assign(_request("alice"), "r", sticky_assignments={})

    assert assignment.sticky_update is None


START = datetime(2025, 6, 1, tzinfo=timezone.utc)
STOP = datetime(2025, 7, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("now", "expected_experiment"),
    [
        (START - timedelta(microseconds=1), None),
        (START, "sampling"),
        (STOP - timedelta(microseconds=1), "sampling"),
        (STOP, None),
    ],
)
def test_schedule_bounds_experiment(now: datetime, expected_experiment: str | None) -> None:
    assigner = Assigner(_config(start=START, stop=STOP))

    assert assigner.assign(_request("alice"), "r", now=now).experiment_key == expected_experiment


def test_stopped_experiment_ignores_stored_variant() -> None:
    assigner = Assigner(_config(stop=STOP))

    assignment = assigner.assign(_request("alice"), "r", sticky_assignments={"sampling__0": "cooler"}, now=STOP)

    assert assignment.experiment_key is None


def test_forced_variant_applies_outside_schedule() -> None:
    assigner = Assigner(_config(start=START, forced_variants={"qa-tester": "cooler"}))

    assignment = assigner.assign(_request("qa-tester"), "r", now=START - timedelta(days=1))

    assert assignment.variant.key == "cooler"
    assert assignment.source == "forced"


def _weighted(control_weight: float, **experiment: object) -> Assigner:
    config = _config(**experiment).model_dump(mode="json")
    arms = config["experiments"][0]["variants"]
    arms[0]["weight"], arms[1]["weight"] = control_weight, round(1.0 - control_weight, 6)
    return Assigner(ExperimentsFile.model_validate(config))


def test_stored_variant_survives_weight_change() -> None:
    users = [f"user-{index}" for index in range(300)]
    before = _weighted(0.5)
    stored = {user: before.assign(_request(user), "r", sticky_assignments={}).sticky_update for user in users}
    after = _weighted(0.1)
    moved_by_hash = [user for user in users if after.assign(_request(user), "r").variant.key != stored[user].variant_key]

    with_store = [
        after.assign(_request(user), "r", sticky_assignments={update.field: update.variant_key})
        for user, update in stored.items()
        if update is not None
    ]

    # Units hashed into [0.1, 0.5) move from control to cooler without a store: about 40% of them.
    assert len(moved_by_hash) > 80
    assert len(with_store) == len(users)
    assert [assignment.variant.key for assignment in with_store] == [stored[user].variant_key for user in users]
    assert {assignment.source for assignment in with_store} == {"sticky"}
    assert {assignment.sticky_update for assignment in with_store} == {None}


def test_first_assignment_records_sticky_update() -> None:
    assignment = Assigner(_config(bucket_version=2)).assign(_request("alice"), "r", sticky_assignments={})

    assert assignment.sticky_update is not None
    assert assignment.sticky_update.field == "sampling__2"
    assert assignment.sticky_update.variant_key == assignment.variant.key
    assert assignment.bucket_version == 2


def test_stored_variant_skips_condition() -> None:
    assigner = Assigner(_config(condition={"tenant": "nobody"}))

    assignment = assigner.assign(_request("alice"), "r", tenant="acme", sticky_assignments={"sampling__0": "cooler"})

    assert assignment.variant.key == "cooler"
    assert assignment.source == "sticky"


def test_removed_stored_variant_rehashes() -> None:
    assignment = Assigner(_config()).assign(_request("alice"), "r", sticky_assignments={"sampling__0": "retired"})

    assert assignment.source == "hash"
    assert assignment.sticky_update is not None


def test_bumped_bucket_version_rehashes() -> None:
    users = [f"user-{index}" for index in range(200)]
    assigner = Assigner(_config(bucket_version=1))

    assignments = [assigner.assign(_request(user), "r", sticky_assignments={"sampling__0": "cooler"}) for user in users]

    assert {assignment.source for assignment in assignments} == {"hash"}
    assert 60 <= sum(assignment.variant.key == "control" for assignment in assignments) <= 140
    assert {assignment.sticky_update.field for assignment in assignments if assignment.sticky_update} == {"sampling__1"}


def test_old_bucket_version_excluded() -> None:
    assigner = Assigner(_config(bucket_version=2, min_bucket_version=2))

    old = assigner.assign(_request("alice"), "r", sticky_assignments={"sampling__1": "cooler"})
    current = assigner.assign(_request("alice"), "r", sticky_assignments={"sampling__2": "cooler"})
    new = assigner.assign(_request("alice"), "r", sticky_assignments={})

    assert old.experiment_key is None
    assert old.variant.key == "default"
    assert current.variant.key == "cooler"
    assert new.experiment_key == "sampling"


def test_no_store_means_no_sticky_update() -> None:
    assignment = Assigner(_config()).assign(_request("alice"), "r")

    assert assignment.source == "hash"
    assert assignment.sticky_update is None


def test_variant_carries_quantization_and_template() -> None:
    config = _config().model_dump(mode="json")
    config["experiments"][0]["variants"][0].update({"quantization": "awq", "prompt_template": "Verse: {prompt}"})
    config["experiments"][0]["variants"][1].update({"quantization": "awq", "prompt_template": "Verse: {prompt}"})

    assignment = Assigner(ExperimentsFile.model_validate(config)).assign(_request("alice"), "r")

    assert assignment.variant.quantization == "awq"
    assert assignment.variant.prompt_template == "Verse: {prompt}"


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
