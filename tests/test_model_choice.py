"""The `model` names of the OpenAI API: which experiment or variant each selects, and the listed names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.experiments import AUTO_MODEL, ExperimentsFile, ModelChoice, find_model, model_names


def _experiments() -> ExperimentsFile:
    return ExperimentsFile.model_validate(
        {
            "default_variant": {"key": "default", "backend": "embedded"},
            "experiments": [
                {"key": "sampling", "variants": [{"key": "control", "backend": "embedded"}, {"key": "cooler", "backend": "embedded"}]},
                {"key": "adapters", "variants": [{"key": "control", "backend": "embedded", "adapter_id": "a"}]},
            ],
        }
    )


def test_experiment_key_selects_experiment() -> None:
    assert find_model(_experiments(), "sampling") == ModelChoice(experiment_key="sampling")


def test_variant_key_selects_variant() -> None:
    choice = find_model(_experiments(), "cooler")

    assert choice is not None
    assert choice.experiment_key is None
    assert choice.variant is not None
    assert choice.variant.key == "cooler"


def test_default_variant_key_selects_default_variant() -> None:
    choice = find_model(_experiments(), "default")

    assert choice is not None
    assert choice.variant == _experiments().default_variant


def test_shared_variant_key_selects_first_experiment() -> None:
    choice = find_model(_experiments(), "control")

    assert choice is not None
    assert choice.variant is not None
    assert choice.variant.adapter_id is None


def test_auto_and_none_select_usual_routing() -> None:
    assert find_model(_experiments(), AUTO_MODEL) == ModelChoice()
    assert find_model(_experiments(), None) == ModelChoice()


def test_unknown_name_selects_nothing() -> None:
    assert find_model(_experiments(), "gpt-4o") is None


def test_model_names_list_each_name_once() -> None:
    assert model_names(_experiments()) == ["auto", "sampling", "adapters", "control", "cooler", "default"]


def test_every_listed_name_is_found() -> None:
    experiments = _experiments()

    assert all(find_model(experiments, name) is not None for name in model_names(experiments))


@pytest.mark.parametrize(
    ("experiments", "default_key", "message"),
    [
        ([{"key": "split", "variants": [{"key": "auto", "backend": "embedded"}]}], "default", "reserved"),
        ([{"key": "split", "variants": [{"key": "split", "backend": "embedded"}]}], "default", "also an experiment key"),
        ([{"key": "split", "variants": [{"key": "default", "backend": "embedded"}]}], "default", "default_variant key"),
        ([], "auto", "reserved"),
    ],
)
def test_clashing_model_names_rejected(experiments: list[dict], default_key: str, message: str) -> None:
    document = {"experiments": experiments, "default_variant": {"key": default_key, "backend": "embedded"}}
    with pytest.raises(ValidationError, match=message):
        ExperimentsFile.model_validate(document)
