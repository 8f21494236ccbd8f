"""Parity of Sluice's SecretsScanner with llm-guard 0.3.16's Secrets scanner, run on the same prompts.

Every case runs through both scanners in each redact mode and must give the
same verdict, the same sanitized prompt and the same secret types. llm-guard
logs the types it found, and `SecretsScanner.detect` returns them.

llm-guard applies its replacements in the order of a set, which varies
between processes, and its `TextReplaceBuilder` garbles the text unless it
replaces from the end to the start. `scan_with_llm_guard` therefore hands
llm-guard its findings in end-to-start order, the order SecretsScanner uses.
That changes only the order of replacements, never what is found, and it
matters only for prompts with more than one secret value.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from detect_secrets.core.secrets_collection import SecretsCollection
from structlog.testing import capture_logs

from shared.scanning.secrets import SecretsScanner, load_llm_guard_detectors
from shared.settings import REPO_ROOT
from tests.scanning.secret_examples import SPECIAL_EXAMPLES, example_for, random_text

REDACT_MODES = ("partial", "all", "hash")
PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"

# These plugins match only UUID-shaped values, and detect-secrets'
# `is_potential_uuid` filter drops every UUID, so llm-guard never reports them.
UUID_ONLY_PLUGINS = {
    "HerokuApiKeyDetector",
    "HubSpotApiTokenDetector",
    "SnykApiTokenDetector",
    "SquarespaceAccessTokenDetector",
}

_BASE64 = string.ascii_letters + string.digits + "+/"
AWS_KEY = "AKIAZ4TQ7NKW2FJX5L3M"
GITHUB_TOKEN = "ghp_" + random_text(string.ascii_letters + string.digits, 36, seed=41)
STRIPE_KEY = "sk_live_" + random_text(string.ascii_letters + string.digits, 24, seed=42)


def _plugin_cases() -> Iterator[tuple[str, str, str]]:
    """Yield (case id, plugin class name, prompt): one prompt per pattern of every plugin, or its special example."""
    plugins, _ = load_llm_guard_detectors()
    for plugin in plugins:
        name = type(plugin).__name__
        if name in SPECIAL_EXAMPLES:
            yield name, name, SPECIAL_EXAMPLES[name]
            continue
        for index, pattern in enumerate(plugin.denylist):
            yield f"{name}-{index}", name, f"Please keep this safe:\n{example_for(pattern, seed=index)}\nThanks."


PLUGIN_CASES = list(_plugin_cases())
PLUGIN_TYPES = {type(plugin).__name__: plugin.secret_type for plugin in load_llm_guard_detectors()[0]}

NEAR_MISSES = {
    "aws key one character short": f"The key {AWS_KEY[:-1]} is not complete.",
    "github token one character short": f"token {GITHUB_TOKEN[:-1]} expired",
    "stripe key with a wrong prefix": "sk_lve_" + STRIPE_KEY[8:],
    "basic auth on example.com": "Connect with postgres://admin:Xq7vLp2mWz@db.example.com/events",
    "uuid": "The request id was 123e4567-e89b-12d3-a456-426614174000, please check.",
    "templated secret": 'password = "${DB_PASSWORD}"\napi_key = "<your-api-key>"',
    "dollar-prefixed secret": 'secret = "$SECRET_VALUE_FROM_THE_ENVIRONMENT"',
    "sequential string": 'key = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"',
    "indirect reference": 'password = get_secret("database")\napi_key = request.headers["X-Api-Key"]',
    "allowlisted line": f'aws_key = "{AWS_KEY}"  # pragma: allowlist secret',
    "low-entropy quoted string": 'greeting = "hello world, this is fine"',
    "digits in quotes": 'order_number = "12345678901234567890"',
    "unquoted commit hash": "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed the build",
    "short line": "AKIA",
    "keyword without value": "Where do I put my GitHub token and my Stripe secret key?",
}

SPLIT_OVER_LINES = {
    "private key over lines": SPECIAL_EXAMPLES["PrivateKeyDetector"],
    "config section with an unquoted value": (
        f"[database]\nhost = db.internal\npassword = {random_text(_BASE64, 40, seed=51)}\n"
    ),
    "key-value lines without a section": f"api_secret: {random_text(_BASE64, 32, seed=52)}\ntimeout: 30\n",
    # Only the eager config-file pass, which runs after the first pass found
    # nothing, joins the value to its key.
    "value on a continuation line": f"client_secret:\n    {random_text(string.ascii_letters + string.digits, 40, seed=53)}\n",
    "aws key broken by a newline": f"{AWS_KEY[:10]}\n{AWS_KEY[10:]}",
    "windows line endings": f"first line\r\naws_access_key_id = {AWS_KEY}\r\nlast line\r\n",
    "old mac line endings": f"first line\raws_access_key_id = {AWS_KEY}\rlast line",
    "unicode line separators": f"first\u2028second {AWS_KEY}\x0cthird\u0085fourth",
    "allowlist pragma on the line before": f"# pragma: allowlist nextline secret\naws_key = '{AWS_KEY}'",
}

SEVERAL_SECRETS = {
    "three kinds on three lines": f"aws {AWS_KEY}\ngithub {GITHUB_TOKEN}\nstripe {STRIPE_KEY}\n",
    "two kinds on one line": f"use {AWS_KEY} and {GITHUB_TOKEN} together",
    "same key twice": f"first {AWS_KEY}, then again {AWS_KEY}",
    "key found by two plugins": f'stripe_key = "{STRIPE_KEY}"',
    "jwt and basic auth": f"{SPECIAL_EXAMPLES['JwtTokenDetector']}\n{SPECIAL_EXAMPLES['BasicAuthDetector']}",
}

UNICODE = {
    "accented text around a key": f"Voilà la clé : {AWS_KEY} — merci beaucoup, ça marche.",
    "emoji and cjk": f"🔑 鍵はこちら {GITHUB_TOKEN} 🙏",
    "kelvin sign in a keyword": f"\u212araken_api_key = {random_text(_BASE64, 80, seed=61)}==",
    "dotless i in a keyword": f"\u0131ntercom_token = '{random_text(string.ascii_letters + string.digits, 60, seed=62)}='",
}

FILLER_SENTENCES = (
    "The quarterly report covers revenue, churn and the hiring plan for next year.",
    "Please summarise the attached notes in three bullet points for the board.",
    "Our deployment runs on two regions with a shared database and a cache in front.",
    "Write a friendly reply to the customer who asked about the delayed shipment.",
    "List the risks of moving the nightly batch job to an event-driven design.",
)


def filler(chars: int) -> str:
    """Return exactly `chars` characters of benign sentences, one per line."""
    sentences = (FILLER_SENTENCES[index % len(FILLER_SENTENCES)] for index in range(chars))
    text = ""
    while len(text) < chars:
        text += next(sentences) + "\n"
    return text[:chars]


def long_prompt(secret_lines: list[str], chars: int = 2_000) -> str:
    """Return a prompt of exactly `chars` characters: benign sentences with `secret_lines` spread through it."""
    secret_chars = sum(len(line) + 2 for line in secret_lines)
    part_chars = (chars - secret_chars) // (len(secret_lines) + 1)
    parts = [filler(part_chars)]
    for line in secret_lines:
        parts += ["\n" + line + "\n", filler(part_chars)]
    text = "".join(parts)
    return text + filler(chars - len(text))


LONG_PROMPTS = {
    "2000 characters without a secret": long_prompt([]),
    "2000 characters with a key at the start": f"aws_access_key_id = {AWS_KEY}\n" + filler(2_000 - 41),
    "2000 characters with a key in the middle": long_prompt([f"github token {GITHUB_TOKEN}"]),
    "2000 characters with a key at the end": filler(2_000 - 25) + f"\nkey {AWS_KEY}",
    "2000 characters with three secrets": long_prompt(
        [f"aws {AWS_KEY}", f'stripe_key = "{STRIPE_KEY}"', SPECIAL_EXAMPLES["BasicAuthDetector"]]
    ),
    "2000 characters with a private key": long_prompt([SPECIAL_EXAMPLES["PrivateKeyDetector"]]),
}


@pytest.fixture(scope="module")
def sluice_scanners() -> dict[str, SecretsScanner]:
    return {mode: SecretsScanner(redact_mode=mode) for mode in REDACT_MODES}


@pytest.fixture(scope="module")
def llm_guard_scanners() -> dict[str, object]:
    from llm_guard.input_scanners import Secrets

    return {mode: Secrets(redact_mode=mode) for mode in REDACT_MODES}


class EndToStart:
    """llm-guard's set of found secrets, iterated from the one that occurs last in the prompt to the first."""

    def __init__(self, found: set[object], prompt: str) -> None:
        self._found = found
        self._prompt = prompt

    def add(self, secret: object) -> None:
        self._found.add(secret)

    def __iter__(self) -> Iterator[object]:
        def position(secret: object) -> tuple[int, int]:
            value = secret.secret_value  # type: ignore[attr-defined]
            return self._prompt.find(value), len(value)

        return iter(sorted(self._found, key=position, reverse=True))


def scan_with_llm_guard(scanner: object, prompt: str) -> tuple[str, bool, list[str]]:
    """Return llm-guard's sanitized prompt, verdict and logged secret types, with replacements from end to start."""
    unordered = SecretsCollection.__getitem__

    def end_to_start(collection: SecretsCollection, filename: str) -> EndToStart:
        return EndToStart(unordered(collection, filename), prompt)

    with pytest.MonkeyPatch.context() as patch, capture_logs() as logs:
        patch.setattr(SecretsCollection, "__getitem__", end_to_start)
        sanitized, valid, _ = scanner.scan(prompt)  # type: ignore[attr-defined]
    types = sorted(secret_type for entry in logs for secret_type in entry.get("secret_types", []))
    return sanitized, valid, types


def assert_same_as_llm_guard(
    prompt: str, sluice: dict[str, SecretsScanner], llm_guard: dict[str, object], modes: tuple[str, ...] = REDACT_MODES
) -> bool:
    """Assert that both scanners agree on `prompt` in every mode of `modes`; return llm-guard's verdict."""
    for mode in modes:
        expected_text, expected_valid, expected_types = scan_with_llm_guard(llm_guard[mode], prompt)
        text, valid, _ = sluice[mode].scan(prompt)
        types = sorted(secret.secret_type for secret in sluice[mode].detect(prompt))

        assert valid == expected_valid, f"verdict differs in mode {mode} for {prompt!r}"
        assert text == expected_text, f"sanitized prompt differs in mode {mode}"
        assert types == expected_types, f"secret types differ for {prompt!r}"
    return expected_valid


@pytest.mark.parametrize("prompt", [case[2] for case in PLUGIN_CASES], ids=[case[0] for case in PLUGIN_CASES])
def test_plugin_example_matches(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)


def test_every_plugin_kind_has_a_case() -> None:
    assert {case[1] for case in PLUGIN_CASES} == set(PLUGIN_TYPES)
    # llm-guard 0.3.16 enables 112: 94 of its own, 16 built into detect-secrets and the 2 high-entropy plugins.
    assert len(PLUGIN_TYPES) == 112


def test_every_reportable_kind_found(
    sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    # Some patterns can never report (all-digit or UUID values, which
    # detect-secrets' filters drop), so each plugin needs one found case, not every pattern.
    found_by = {name: False for name in PLUGIN_TYPES}
    for _, plugin_name, prompt in PLUGIN_CASES:
        types = {secret.secret_type for secret in sluice_scanners["all"].detect(prompt)}
        rejected = not scan_with_llm_guard(llm_guard_scanners["all"], prompt)[1]
        found_by[plugin_name] |= rejected and PLUGIN_TYPES[plugin_name] in types

    assert {name for name, found in found_by.items() if not found} == UUID_ONLY_PLUGINS


@pytest.mark.parametrize("prompt", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_near_miss_matches(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)


@pytest.mark.parametrize("prompt", SPLIT_OVER_LINES.values(), ids=SPLIT_OVER_LINES.keys())
def test_split_lines_case_matches(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)


@pytest.mark.parametrize("prompt", SEVERAL_SECRETS.values(), ids=SEVERAL_SECRETS.keys())
def test_several_secrets_match(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    valid = assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)

    assert not valid


@pytest.mark.parametrize("prompt", UNICODE.values(), ids=UNICODE.keys())
def test_unicode_case_matches(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)


@pytest.mark.parametrize("prompt", LONG_PROMPTS.values(), ids=LONG_PROMPTS.keys())
def test_long_prompt_matches(
    prompt: str, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    assert len(prompt) == 2_000
    assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners)


def test_crlf_private_key_verdict_matches(
    sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    # The key body that detect-secrets reports has "\n" line endings, which a
    # "\r\n" prompt lacks verbatim. llm-guard then garbles the text around
    # it; SecretsScanner leaves the body in place. Both reject the prompt.
    prompt = SPECIAL_EXAMPLES["PrivateKeyDetector"].replace("\n", "\r\n")

    _, expected_valid, expected_types = scan_with_llm_guard(llm_guard_scanners["all"], prompt)
    text, valid, _ = sluice_scanners["all"].scan(prompt)

    assert not expected_valid
    assert not valid
    assert sorted(secret.secret_type for secret in sluice_scanners["all"].detect(prompt)) == expected_types
    assert text == prompt


def _prompt_files() -> list[Path]:
    return sorted(PROMPTS_DIR.glob("*.jsonl")) if PROMPTS_DIR.is_dir() else []


@pytest.mark.skipif(not _prompt_files(), reason=f"the labelled prompt files live in {PROMPTS_DIR}")
@pytest.mark.parametrize("path", _prompt_files(), ids=lambda path: path.name)
def test_prompt_file_matches(
    path: Path, sluice_scanners: dict[str, SecretsScanner], llm_guard_scanners: dict[str, object]
) -> None:
    with path.open(encoding="utf-8") as lines:
        prompts = [json.loads(line)["text"] for line in lines if line.strip()]

    # One mode suffices: the modes differ only in how a found secret reads.
    for prompt in prompts:
        assert_same_as_llm_guard(prompt, sluice_scanners, llm_guard_scanners, modes=("all",))
