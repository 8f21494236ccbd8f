"""SecretsScanner on its own: verdicts, redaction, option checks, edge cases and concurrent scans."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.scanning.secrets import REDACTED_TEXT, DetectedSecret, SecretsScanner

AWS_KEY = "AKIAZ4TQ7NKW2FJX5L3M"
GITHUB_TOKEN = "ghp_yvok56yK5SsJry2UXzG0bG1pqFvCEwKTmdKr"


@pytest.fixture(scope="module")
def scanner() -> SecretsScanner:
    return SecretsScanner()


def test_empty_prompt_is_valid(scanner: SecretsScanner) -> None:
    assert scanner.scan("") == ("", True, -1.0)


def test_whitespace_prompt_is_valid(scanner: SecretsScanner) -> None:
    assert scanner.scan(" \n\t\r\n ") == (" \n\t\r\n ", True, -1.0)


def test_prompt_without_secret_unchanged(scanner: SecretsScanner) -> None:
    prompt = "Summarise the meeting notes: we agreed on the key dates."

    assert scanner.scan(prompt) == (prompt, True, -1.0)


def test_secret_gives_risk_one(scanner: SecretsScanner) -> None:
    sanitized, valid, risk_score = scanner.scan(f"my key is {AWS_KEY}")

    assert sanitized == f"my key is {REDACTED_TEXT}"
    assert valid is False
    assert risk_score == 1.0


@pytest.mark.parametrize(
    ("mode", "replacement"),
    [
        ("all", "******"),
        ("partial", "AK..3M"),
        ("hash", hashlib.md5(AWS_KEY.encode()).hexdigest()),  # noqa: S324
    ],
)
def test_redact_mode_replacement(mode: str, replacement: str) -> None:
    sanitized, _, _ = SecretsScanner(redact_mode=mode).scan(f"key={AWS_KEY};")  # type: ignore[arg-type]

    assert sanitized == f"key={replacement};"


def test_invalid_redact_mode_rejected() -> None:
    with pytest.raises(ValueError, match="redact_mode 'some' is not valid; use 'partial', 'all' or 'hash'"):
        SecretsScanner(redact_mode="some")  # type: ignore[arg-type]


def test_detect_orders_by_position(scanner: SecretsScanner) -> None:
    found = scanner.detect(f"first {GITHUB_TOKEN}\nthen {AWS_KEY}")

    assert found == (DetectedSecret("GitHub Token", GITHUB_TOKEN), DetectedSecret("AWS Access Key", AWS_KEY))


def test_only_first_occurrence_redacted(scanner: SecretsScanner) -> None:
    # llm-guard redacts the first occurrence of each secret only; the verdict is what blocks the prompt.
    sanitized, valid, _ = scanner.scan(f"{AWS_KEY} and again {AWS_KEY}")

    assert sanitized == f"{REDACTED_TEXT} and again {AWS_KEY}"
    assert valid is False


def test_unicode_around_secret_kept(scanner: SecretsScanner) -> None:
    sanitized, valid, _ = scanner.scan(f"Ключ 🔑 {AWS_KEY} — ça marche 日本")

    assert sanitized == f"Ключ 🔑 {REDACTED_TEXT} — ça marche 日本"
    assert valid is False


def test_lone_surrogate_scanned(scanner: SecretsScanner) -> None:
    # llm-guard raises UnicodeEncodeError writing such a prompt to its file; this scanner reads it in memory.
    sanitized, valid, _ = scanner.scan(f"broken \ud800 text with {AWS_KEY}")

    assert sanitized == f"broken \ud800 text with {REDACTED_TEXT}"
    assert valid is False


def test_crlf_private_key_body_left_in_place(scanner: SecretsScanner) -> None:
    body = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9OiZ1BjP5CE/Wm/Rr500P"
    prompt = f"-----BEGIN RSA PRIVATE KEY-----\r\n{body}\r\n{body[::-1]}\r\n-----END RSA PRIVATE KEY-----\r\n"

    sanitized, valid, _ = scanner.scan(prompt)

    assert sanitized == prompt
    assert valid is False


def test_private_key_found_on_every_scan(scanner: SecretsScanner) -> None:
    # detect-secrets' private-key plugin reads a file whole only once; a shared instance would miss the second scan.
    prompt = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----"

    verdicts = [scanner.scan(prompt)[1] for _ in range(3)]

    assert verdicts == [False, False, False]


def test_concurrent_scans_match_sequential(scanner: SecretsScanner) -> None:
    prompts = [
        f"aws {AWS_KEY}",
        "nothing to see here, just a question about the weather",
        f"token: {GITHUB_TOKEN}",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\nZ1BjP5CE/Wm/Rr500P\n-----END RSA PRIVATE KEY-----",
        'password = "hunter2"',
    ] * 40
    expected = [scanner.scan(prompt) for prompt in prompts]
    # Switch threads every few microseconds rather than every 5 ms, so scans interleave.
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(scanner.scan, prompts))
    finally:
        sys.setswitchinterval(previous_interval)

    assert results == expected
