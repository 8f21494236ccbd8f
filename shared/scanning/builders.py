"""Building the scanners of a validated policy, once per process.

Every type builds llm-guard's scanner of that name, except `Secrets`, which
builds Sluice's own `SecretsScanner` (`shared.scanning.secrets`). That
scanner has llm-guard's options, contract and plugin set, without the
setup that llm-guard's Secrets scanner repeats on every scan.

llm-guard takes about 6 s to import (llm-guard 0.3.16 on 2 CPU cores), so it
is imported here, when the first chain is built at startup, and never on the
message path. This module is the one place where llm-guard, detect-secrets
and tiktoken construction errors become `PolicyError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from shared.scanning.chain import PolicyScanner, ScanFunction, ScannerChain
from shared.scanning.errors import PolicyError
from shared.scanning.partial_match import TailStart, patterns_tail_start, substrings_tail_start
from shared.scanning.policy import (
    PII_MAX_MATCH_CHARS,
    SECRETS_MAX_MATCH_CHARS,
    BanSubstringsSpec,
    OutputSecretsSpec,
    PiiSpec,
    Policy,
    PromptClassifierSpec,
    PromptInjectionSpec,
    RegexSpec,
    ScannerSpec,
    SecretsSpec,
    TokenLimitSpec,
    ToxicitySpec,
)

Section = Literal["input", "output"]

_DEFAULT_REASONS = {
    "InvisibleText": "the text contains invisible Unicode characters (format, private-use or unassigned code points)",
    "Secrets": "the text contains a secret such as an API key, a token or a private key",
    "PII": "the text contains personal data or an API key that the policy blocks",
    "BanSubstrings": "the text contains a banned substring",
    "Regex": "the text matches a banned pattern",
    "PromptClassifier": "the prompt reads as a prompt injection, a jailbreak or a harmful request",
    "PromptInjection": "the prompt reads as a prompt injection",
    "Toxicity": "the text reads as toxic",
    "NoRefusalLight": "the output reads as a refusal",
}


def build_input_chain(policy: Policy) -> ScannerChain:
    """Build the prompt scanners of `policy`; raises `PolicyError` when one cannot be built."""
    return _build_chain(policy, "input")


def build_output_chain(policy: Policy) -> ScannerChain:
    """Build the output scanners of `policy`; raises `PolicyError` when one cannot be built."""
    return _build_chain(policy, "output")


class ChainsByProfile:
    """One section's chain for each tenant and route that the policy overrides, built once per policy.

    Profiles with the same scanner list share one chain.
    """

    def __init__(self, policy: Policy, section: Section) -> None:
        """Build every chain; raises `PolicyError` when a scanner cannot be built."""
        self._policy = policy
        by_specs: dict[tuple[str, ...], ScannerChain] = {}
        self._chains: dict[tuple[str | None, str | None], ScannerChain] = {}
        for tenant, route in policy.profiles():
            resolved = policy.resolve(tenant, route)
            specs = resolved.input if section == "input" else resolved.output
            key = tuple(spec.model_dump_json() for spec in specs)
            if key not in by_specs:
                by_specs[key] = _build_chain(resolved, section)
            self._chains[(tenant, route)] = by_specs[key]

    @property
    def default(self) -> ScannerChain:
        """The chain of requests that no override applies to."""
        return self._chains[(None, None)]

    def for_request(self, tenant: str | None, route: str | None) -> ScannerChain:
        """Return the chain for a request of `tenant` on `route` (None when the route is not known)."""
        return self._chains[self._policy.profile(tenant, route)]


def build_input_chains(policy: Policy) -> ChainsByProfile:
    """Build the prompt scanners of every tenant and route profile; raises `PolicyError` when one cannot be built."""
    return ChainsByProfile(policy, "input")


def build_output_chains(policy: Policy) -> ChainsByProfile:
    """Build the output scanners of every tenant and route profile; raises `PolicyError` when one cannot be built."""
    return ChainsByProfile(policy, "output")


def _build_chain(policy: Policy, section: Section) -> ScannerChain:
    specs = policy.input if section == "input" else policy.output
    scanners = [
        _build_scanner(policy.source, section, index, spec)
        for index, spec in enumerate(specs)
        if not _redacts_only(spec)
    ]
    return ScannerChain(scanners)


def _redacts_only(spec: ScannerSpec) -> bool:
    """Return whether the entry gives no verdict: moderation's redactor replaces its secrets before release."""
    return isinstance(spec, OutputSecretsSpec) and spec.action == "redact"


def _build_scanner(source: str, section: Section, index: int, spec: ScannerSpec) -> PolicyScanner:
    try:
        scan = _construct(section, spec)
    # llm-guard and tiktoken raise whatever their dependencies raise (ValueError,
    # OSError, KeyError, ...); all of them mean this entry cannot be used.
    except Exception as error:
        raise PolicyError(
            f"policy file {source}: {section}[{index}] ({spec.label}) cannot be built: "
            f"{type(error).__name__}: {error}"
        ) from error

    return PolicyScanner(
        name=spec.label,
        action=spec.action,
        reason=spec.reason or _default_reason(spec),
        scan=scan,
        max_match_chars=_max_match_chars(spec),
        tail_start=_tail_start(spec),
    )


def _construct(section: Section, spec: ScannerSpec) -> ScanFunction:
    # Importing the package imports every scanner module: this is the slow step.
    from llm_guard import input_scanners, output_scanners

    from shared.scanning.pii import PiiScanner
    from shared.scanning.secrets import SecretsScanner

    options: dict[str, Any] = spec.options.model_dump()
    if isinstance(spec, SecretsSpec | OutputSecretsSpec):
        return SecretsScanner(**options).scan
    if isinstance(spec, PiiSpec):
        return PiiScanner(spec.options.entities, phone_regions=spec.options.phone_regions).scan
    if isinstance(spec, PromptClassifierSpec):
        from shared.scanning.classifier import PromptClassifier

        return PromptClassifier(thresholds=spec.options.thresholds, cascade=spec.options.cascade).scan
    if isinstance(spec, PromptInjectionSpec | ToxicitySpec):
        from shared.scanning.local_models import build_local_model_scanner

        return build_local_model_scanner(spec.type, Path(spec.options.model_dir), spec.options.threshold)
    if section == "input":
        return getattr(input_scanners, spec.type)(**options).scan  # type: ignore[no-any-return]

    scanner = getattr(output_scanners, spec.type)(**options)
    return _output_scan(scanner.scan)


def _output_scan(scan: Callable[[str, str], tuple[str, bool, float]]) -> ScanFunction:
    # Output scanners take (prompt, output). Moderation receives only the
    # output, and the scanners allowed in the output section ignore the prompt.
    def scan_output(text: str) -> tuple[str, bool, float]:
        return scan("", text)

    return scan_output


def _default_reason(spec: ScannerSpec) -> str:
    if isinstance(spec, TokenLimitSpec):
        return f"the text has {spec.options.limit} tokens or more ({spec.options.encoding_name})"
    if isinstance(spec, RegexSpec) and not spec.options.is_blocked:
        return "the text matches none of the allowed patterns"
    return _DEFAULT_REASONS[spec.type]


def _tail_start(spec: ScannerSpec) -> TailStart | None:
    """Return where a streaming scanner's match could begin at a text's end, or None to hold `max_match_chars`."""
    if isinstance(spec, BanSubstringsSpec):
        return substrings_tail_start(spec.options.substrings, case_sensitive=spec.options.case_sensitive)
    if isinstance(spec, RegexSpec) and spec.options.is_blocked:
        return patterns_tail_start(spec.options.patterns)
    return None


def _max_match_chars(spec: ScannerSpec) -> int | None:
    """Return the longest text one match can span, or None when only the whole text can be judged."""
    if isinstance(spec, BanSubstringsSpec) and not spec.options.contains_all:
        return max(len(substring) for substring in spec.options.substrings)
    if isinstance(spec, RegexSpec) and spec.options.is_blocked and spec.options.match_type != "fullmatch":
        return spec.max_match_chars
    if isinstance(spec, PiiSpec):
        return PII_MAX_MATCH_CHARS
    if isinstance(spec, OutputSecretsSpec):
        # A blocking output entry then runs on every streaming window, so it
        # stops the output before any of a secret that it finds is released.
        return SECRETS_MAX_MATCH_CHARS
    return None
