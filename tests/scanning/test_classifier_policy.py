"""Policy entries of the prompt classifier and of llm-guard's model-backed scanners: validation and build errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.scanning import PolicyError, build_input_chain, parse_policy


def _error_of(entry: dict[str, object]) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"input": [entry]}, source="policy.yaml")
    return str(caught.value)


def test_classifier_entry_parses() -> None:
    policy = parse_policy(
        {"input": [{"type": "PromptClassifier", "action": "flag", "options": {"thresholds": {"harmful": 0.7}}}]},
        source="policy.yaml",
    )

    assert policy.input[0].options.thresholds == {"harmful": 0.7}
    assert policy.input[0].options.cascade is True


def test_classifier_unknown_option_rejected() -> None:
    message = _error_of({"type": "PromptClassifier", "options": {"thresholds": {"injection": 0.5}, "threshold": 0.5}})

    assert "input[0].options.threshold: Extra inputs are not permitted" in message
    assert "allowed keys: cascade, thresholds" in message


def test_classifier_threshold_above_one_rejected() -> None:
    message = _error_of({"type": "PromptClassifier", "options": {"thresholds": {"injection": 1.5}}})

    assert "input[0].options.thresholds.injection: Input should be less than 1" in message


def test_classifier_unknown_class_rejected() -> None:
    message = _error_of({"type": "PromptClassifier", "options": {"thresholds": {"toxicity": 0.5}}})

    assert "input[0].options.thresholds" in message
    assert "'injection', 'jailbreak' or 'harmful'" in message


def test_classifier_empty_thresholds_rejected() -> None:
    message = _error_of({"type": "PromptClassifier", "options": {"thresholds": {}}})

    assert "input[0].options.thresholds: Dictionary should have at least 1 item" in message


def test_local_model_needs_model_dir() -> None:
    message = _error_of({"type": "PromptInjection", "options": {"threshold": 0.9}})

    assert "input[0].options.model_dir: Field required" in message


def test_local_model_threshold_zero_rejected() -> None:
    message = _error_of({"type": "Toxicity", "options": {"model_dir": "/models/toxicity", "threshold": 0.0}})

    assert "input[0].options.threshold: Input should be greater than 0" in message


@pytest.mark.parametrize("scanner_type", ["PromptInjection", "Toxicity"])
def test_missing_model_dir_fails_build(tmp_path: Path, scanner_type: str) -> None:
    missing = tmp_path / "no-such-model"
    policy = parse_policy({"input": [{"type": scanner_type, "options": {"model_dir": str(missing)}}]}, source="policy.yaml")

    with pytest.raises(PolicyError) as caught:
        build_input_chain(policy)

    message = str(caught.value)
    assert f"input[0] ({scanner_type}) cannot be built" in message
    assert f"model_dir {missing} is not a folder" in message
