"""Sluice's own secrets detector, with the contract, options and plugin set of llm-guard's Secrets scanner.

Policy entries of `type: Secrets` build a `SecretsScanner`, not llm-guard's
`Secrets` class. It takes the same option (`redact_mode`) and returns the
same `(sanitized_prompt, is_valid, risk_score)`. It finds the same secrets,
because it scans with llm-guard 0.3.16's list of 112 detect-secrets plugins
and detect-secrets' default filters. The list names 94 plugins in
llm-guard's own folder, 16 built into detect-secrets, and the Base64 and Hex
high-entropy plugins with limits 4.5 and 3.0.

llm-guard's scanner writes each prompt to a temporary file and switches
detect-secrets' process-wide settings around every scan, which re-creates
all 112 plugins. This scanner resolves the plugins and filters once, at
construction, and scans the prompt in memory (see `secret_plugins`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from detect_secrets.plugins.base import BasePlugin
from detect_secrets.settings import get_filters, get_plugins, transient_settings

from shared.scanning.policy import RedactMode
from shared.scanning.secret_plugins import DetectedSecret, SecretPlugins

__all__ = ["REDACTED_TEXT", "DetectedSecret", "SecretsScanner", "load_llm_guard_detectors"]

# llm-guard 0.3.16's verdicts: a secret gives risk 1.0, none gives -1.0.
SECRET_RISK_SCORE = 1.0
NO_SECRET_RISK_SCORE = -1.0

# The text that replaces a secret in `redact_mode="all"`, as in llm-guard.
REDACTED_TEXT = "******"


class SecretsScanner:
    """A secrets detector for prompts that gives llm-guard 0.3.16's `Secrets` verdicts without its per-scan setup.

    Construction resolves llm-guard's plugin list, which imports llm-guard
    (about 6 s, once per process) and switches detect-secrets' process-wide
    settings for a moment. Build scanners at startup, before any thread
    scans. After that, `scan` and `detect` are thread-safe.
    """

    def __init__(self, *, redact_mode: RedactMode = "all") -> None:
        """Raise `ValueError` when `redact_mode` is not "partial", "all" or "hash"."""
        self._redact = _redactor(redact_mode)
        self._plugins = SecretPlugins(*load_llm_guard_detectors())

    def scan(self, prompt: str) -> tuple[str, bool, float]:
        """Return the prompt with its secrets redacted, whether it is valid, and the risk score.

        A prompt is valid when it has no secret. The risk score is 1.0 when a
        secret was found and -1.0 otherwise.
        """
        secrets = self.detect(prompt)
        if not secrets:
            return prompt, True, NO_SECRET_RISK_SCORE
        return _redact_secrets(prompt, secrets, self._redact), False, SECRET_RISK_SCORE

    def detect(self, prompt: str) -> tuple[DetectedSecret, ...]:
        """Return each distinct (type, value) pair found in `prompt`, in the order the values first occur.

        A prompt of only whitespace has no secrets, as in llm-guard.
        """
        if not prompt.strip():
            return ()
        found = self._plugins.find(prompt)
        return tuple(sorted(found, key=lambda secret: (prompt.find(secret.value), secret.secret_type)))


def load_llm_guard_detectors() -> tuple[list[BasePlugin], list[Callable[..., Any]]]:
    """Return new instances of the plugins, and the filter functions, that llm-guard's Secrets scanner scans with.

    Switches detect-secrets' process-wide settings while it runs, as every
    scan of llm-guard's scanner does.
    """
    # llm-guard exposes its plugin list only as this module constant of its
    # scanner. Reading it, rather than copying 112 entries, keeps the set in
    # step with the installed llm-guard.
    from llm_guard.input_scanners.secrets import _default_detect_secrets_config

    # Resolving through detect-secrets' settings, as llm-guard does, matters:
    # where two plugins share a class name, the name resolves to the
    # built-in one (llm-guard's "SlackDetector" is detect-secrets' Slack
    # plugin, not the one in llm-guard's plugin folder).
    with transient_settings(_default_detect_secrets_config):
        return list(get_plugins()), list(get_filters())


def _redactor(mode: RedactMode) -> Callable[[str], str]:
    """Return llm-guard 0.3.16's replacement for a secret in `mode`."""
    if mode == "partial":
        return lambda value: f"{value[:2]}..{value[-2:]}"
    if mode == "hash":
        # MD5 labels the secret, as in llm-guard. It protects nothing.
        return lambda value: hashlib.md5(value.encode()).hexdigest()  # noqa: S324
    if mode == "all":
        return lambda value: REDACTED_TEXT
    raise ValueError(f"redact_mode {mode!r} is not valid; use 'partial', 'all' or 'hash'")


def _redact_secrets(prompt: str, secrets: Sequence[DetectedSecret], redact: Callable[[str], str]) -> str:
    """Replace the first occurrence of each secret, from the end of the prompt to its start, as llm-guard does.

    llm-guard replaces through presidio's `TextReplaceBuilder` in the order of
    a set, which varies between processes. The builder gives a consistent
    text only when it replaces from the end to the start, which is the order
    here, with the arithmetic kept. So where two plugins report the same
    value, the text gets both replacements, as in llm-guard ("******" twice
    in "all" mode). Later occurrences of a value stay, as in llm-guard; the
    verdict is invalid either way.
    """
    spans = []
    for secret in secrets:
        start = prompt.find(secret.value)
        # NOTE: a value that the prompt lacks verbatim stays unredacted. That
        # is a private key body found in a prompt with "\r\n" line endings,
        # or a value that the config-file transformer rewrote. llm-guard
        # garbles the text around such a value instead.
        if start >= 0:
            spans.append((start, start + len(secret.value)))

    output = prompt
    last_start = len(prompt)
    for start, end in sorted(spans, reverse=True):
        output = output[:start] + redact(prompt[start:end]) + output[min(end, last_start) :]
        last_start = start
    return output
