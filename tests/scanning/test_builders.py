"""Building chains from the policy: names, reasons, match lengths and build errors."""

from __future__ import annotations

import pytest

from shared.scanning import PolicyError, build_input_chain, build_output_chain, load_policy, parse_policy
from shared.scanning.policy import SECRETS_MAX_MATCH_CHARS
from shared.settings import Settings


def test_shipped_policy_builds() -> None:
    policy = load_policy(Settings().policy_file)

    input_chain = build_input_chain(policy)
    output_chain = build_output_chain(policy)

    assert input_chain.names == (
        "InvisibleText",
        "Secrets",
        "PII",
        "BanSubstrings",
        "PrivateKey",
        "TokenLimit",
        "InjectionClassifier",
        "HarmfulRequestClassifier",
    )
    assert output_chain.streaming().names == ("BanSubstrings", "PrivateKey", "AwsAccessKey")
    # "EICAR-STANDARD-ANTIVIRUS" is the longest banned output substring.
    assert output_chain.holdback_chars == 24


def test_custom_reason_replaces_default() -> None:
    policy = parse_policy(
        {"input": [{"type": "BanSubstrings", "reason": "house rule 7", "options": {"substrings": ["pineapple pizza"]}}]},
        source="policy.yaml",
    )

    result = build_input_chain(policy).scan("I like pineapple pizza")

    assert result.reason == "house rule 7"


def test_allow_list_regex_reason() -> None:
    policy = parse_policy(
        {"output": [{"type": "Regex", "options": {"patterns": ["^OK"], "is_blocked": False}}]}, source="policy.yaml"
    )

    result = build_output_chain(policy).scan("not ok")

    assert result.blocked_by == "Regex"
    assert result.reason == "the text matches none of the allowed patterns"


def test_contains_all_checked_whole_only() -> None:
    options = {"substrings": ["abc"], "contains_all": True}
    policy = parse_policy({"output": [{"type": "BanSubstrings", "options": options}]}, source="policy.yaml")

    chain = build_output_chain(policy)

    assert chain.streaming().names == ()
    assert chain.holdback_chars == 0


@pytest.mark.parametrize("options", [{"patterns": ["a"], "is_blocked": False}, {"patterns": ["a"], "match_type": "fullmatch"}])
def test_unbounded_regex_checked_whole_only(options: dict[str, object]) -> None:
    policy = parse_policy({"output": [{"type": "Regex", "options": options}]}, source="policy.yaml")

    assert build_output_chain(policy).streaming().names == ()


def test_build_error_names_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.scanning import secrets

    def reject_options(**options: object) -> None:
        raise ValueError("redact mode wasn't recognized")

    # Valid policies build, so the scanner class is replaced by one that raises as its constructor can.
    monkeypatch.setattr(secrets, "SecretsScanner", reject_options)
    policy = parse_policy({"input": [{"type": "InvisibleText"}, {"type": "Secrets", "name": "Keys"}]}, source="p.yaml")

    with pytest.raises(PolicyError) as caught:
        build_input_chain(policy)

    assert str(caught.value) == "policy file p.yaml: input[1] (Keys) cannot be built: ValueError: redact mode wasn't recognized"
    assert isinstance(caught.value.__cause__, ValueError)


def test_secrets_entry_builds_sluice_scanner(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_guard import input_scanners

    def fail_if_built(**options: object) -> None:
        raise AssertionError("llm-guard's Secrets class was built")

    monkeypatch.setattr(input_scanners, "Secrets", fail_if_built)
    policy = parse_policy({"input": [{"type": "Secrets", "options": {"redact_mode": "partial"}}]}, source="p.yaml")

    result = build_input_chain(policy).scan("my key is AKIAZ4TQ7NKW2FJX5L3M, keep it")

    assert result.blocked_by == "Secrets"
    assert result.sanitized_text == "my key is AK..3M, keep it"


def test_output_secrets_redact_entry_not_built() -> None:
    policy = parse_policy({"output": [{"type": "Secrets", "action": "redact"}, {"type": "NoRefusalLight", "action": "flag"}]}, source="p.yaml")

    assert build_output_chain(policy).names == ("NoRefusalLight",)


def test_output_secrets_block_entry_streams() -> None:
    policy = parse_policy({"output": [{"type": "Secrets"}]}, source="p.yaml")

    chain = build_output_chain(policy)

    assert chain.streaming().names == ("Secrets",)
    assert chain.holdback_chars == SECRETS_MAX_MATCH_CHARS
    assert chain.scan("push with ghp_yvok56yK5SsJry2UXzG0bG1pqFvCEwKTmdKr now").blocked_by == "Secrets"
