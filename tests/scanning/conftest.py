"""Policies and chains shared by the scanning tests; llm-guard is imported once, by the first chain built."""

from __future__ import annotations

import pytest

from shared.scanning import Policy, ScannerChain, build_input_chain, build_output_chain, parse_policy

TEST_POLICY = {
    "input": [
        {"type": "InvisibleText"},
        {"type": "Secrets"},
        {"type": "BanSubstrings", "options": {"substrings": ["ignore all previous instructions", "rm -rf /"]}},
        {"type": "Regex", "name": "PrivateKey", "max_match_chars": 80, "options": {"patterns": ["-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"]}},
        {"type": "TokenLimit", "options": {"limit": 64}},
    ],
    "output": [
        {"type": "BanSubstrings", "options": {"substrings": ["forbidden fruit", "xyzzy"]}},
        {"type": "Regex", "name": "AwsAccessKey", "max_match_chars": 22, "options": {"patterns": ["\\bAKIA[0-9A-Z]{16}\\b"]}},
        {"type": "NoRefusalLight", "action": "flag"},
    ],
}


@pytest.fixture(scope="session")
def test_policy() -> Policy:
    return parse_policy(TEST_POLICY, source="test-policy")


@pytest.fixture(scope="session")
def input_chain(test_policy: Policy) -> ScannerChain:
    return build_input_chain(test_policy)


@pytest.fixture(scope="session")
def output_chain(test_policy: Policy) -> ScannerChain:
    return build_output_chain(test_policy)
