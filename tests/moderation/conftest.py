"""The test output policy as a chain and as a file, shared by the moderation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.moderation.holdback import OutputPolicy
from shared.scanning import ScannerChain, build_output_chain, parse_policy
from tests.moderation.support import OUTPUT_POLICY
from tests.support.policy import write_policy_file


@pytest.fixture(scope="session")
def output_chain() -> ScannerChain:
    return build_output_chain(parse_policy(OUTPUT_POLICY, source="moderation-test-policy"))


@pytest.fixture(scope="session")
def output_policy() -> OutputPolicy:
    return OutputPolicy(parse_policy(OUTPUT_POLICY, source="moderation-test-policy"))


@pytest.fixture(scope="session")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_policy_file(tmp_path_factory, "moderation-policy", OUTPUT_POLICY)
