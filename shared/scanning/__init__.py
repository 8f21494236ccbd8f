"""Prompt and output screening with llm-guard, configured by the policy file.

Load the policy with `load_policy` (fast, validates the whole file), build
the chains once at startup with `build_input_chain` / `build_output_chain`
(slow: imports llm-guard), then call `ScannerChain.scan_async` per text.
Entry points call `configure_scanner_runtime` before building.
"""

from shared.scanning.builders import (
    ChainsByProfile,
    build_input_chain,
    build_input_chains,
    build_output_chain,
    build_output_chains,
)
from shared.scanning.chain import ChainResult, PolicyScanner, ScannerChain
from shared.scanning.errors import PolicyError, ScannerFailed, ScanningError
from shared.scanning.policy import DEFAULT_REGEX_MAX_MATCH_CHARS, Policy, load_policy, parse_policy, parse_policy_text
from shared.scanning.runtime import configure_scanner_runtime

__all__ = [
    "DEFAULT_REGEX_MAX_MATCH_CHARS",
    "ChainResult",
    "ChainsByProfile",
    "Policy",
    "PolicyError",
    "PolicyScanner",
    "ScannerChain",
    "ScannerFailed",
    "ScanningError",
    "build_input_chain",
    "build_input_chains",
    "build_output_chain",
    "build_output_chains",
    "configure_scanner_runtime",
    "load_policy",
    "parse_policy",
    "parse_policy_text",
]
