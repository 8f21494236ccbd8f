"""Redacting secrets while the output streams: whole, split, growing, at the end, overlapping an email, and blocked."""

from __future__ import annotations

import string
import traceback

import pytest

from services.moderation.holdback import Holdback, OutputPolicy
from services.moderation.redaction import OutputRedactor, plan_release
from services.moderation.secret_redaction import SECRET_PLACEHOLDER, SecretMatch
from services.moderation.stream import OutputStream
from shared.scanning import PolicyError, ScannerChain, ScannerFailed, build_output_chain, parse_policy
from shared.scanning.pii import PiiEntity, PiiMatch
from shared.scanning.policy import SECRETS_MAX_MATCH_CHARS
from shared.scanning.secrets import SecretsScanner
from tests.moderation.support import OUTPUT_POLICY
from tests.scanning.secret_examples import SPECIAL_EXAMPLES, random_text

SECRETS_ENTRY = {"type": "Secrets", "action": "redact"}
EMAIL_ENTRY = {"type": "PII", "options": {"entities": {"EMAIL": "redact", "PHONE": "allow"}}}

GITHUB_TOKEN = "ghp_" + random_text(string.ascii_letters + string.digits, 36, seed=51)
# A base64 string that detect-secrets reports by its entropy, and by the AWS
# plugin once all 40 characters are there.
AWS_SECRET = random_text(string.ascii_letters + string.digits + "+/", 40, seed=52)
PRIVATE_KEY_TEXT = SPECIAL_EXAMPLES["PrivateKeyDetector"]
# detect-secrets reports the key body, the lines between the BEGIN and END lines.
PRIVATE_KEY_BODY = PRIVATE_KEY_TEXT.split("PRIVATE KEY-----\n")[1].split("\n-----END")[0]

# Longer than the holdback, so some of it is released before the secret arrives.
OPENING = "Here is a long and harmless opening, written to fill a few chunks before anything else. " * 4
CLOSING = " That is all you need, and nothing else follows but these few words of prose."

# Each case is the text around the secret, with {} where the secret goes, and the secret.
SECRET_CASES = {
    "github_token": ("Use the token {} to push.", GITHUB_TOKEN),
    "aws_secret": ('aws_secret_access_key = "{}"', AWS_SECRET),
    "private_key": (PRIVATE_KEY_TEXT.replace(PRIVATE_KEY_BODY, "{}"), PRIVATE_KEY_BODY),
}


@pytest.fixture(scope="module")
def redactor() -> OutputRedactor:
    return OutputRedactor(parse_policy({"output": [SECRETS_ENTRY]}, source="test").output)


@pytest.fixture(scope="module")
def email_and_secrets_redactor() -> OutputRedactor:
    return OutputRedactor(parse_policy({"output": [EMAIL_ENTRY, SECRETS_ENTRY]}, source="test").output)


def _chunks(text: str, chunk_chars: int) -> list[str]:
    return [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)]


async def _feed(holdback: Holdback, stream: OutputStream, chunks: list[str]) -> tuple[list[str], bool]:
    """Accept, check and release chunks as moderation does before generation ends, and return the released pieces."""
    released: list[str] = []
    for seq, text in enumerate(chunks):
        stream.accept(seq, text)
        if (await holdback.check(stream)).blocked:
            return released, True
        _release(stream, released)
    return released, False


async def _feed_to_end(holdback: Holdback, stream: OutputStream, chunks: list[str]) -> tuple[list[str], bool]:
    """Feed the chunks, then settle and release the held tail as moderation does once generation ended."""
    released, blocked = await _feed(holdback, stream, chunks)
    if not blocked:
        await holdback.settle_at_end(stream)
        _release(stream, released)
    return released, blocked


def _release(stream: OutputStream, released: list[str]) -> None:
    piece = stream.releasable()
    if piece:
        stream.mark_released(piece)
        released.append(piece)


def _leaked_prefixes(secret: str, piece: str) -> list[str]:
    """Return the prefixes of `secret`, 4 characters or longer, that occur in `piece`."""
    return [secret[:length] for length in range(4, len(secret) + 1) if secret[:length] in piece]


def test_finds_every_occurrence(redactor: OutputRedactor) -> None:
    text = f"first {GITHUB_TOKEN} then again {GITHUB_TOKEN}."

    matches = redactor.find(text)

    first = text.index(GITHUB_TOKEN)
    second = text.index(GITHUB_TOKEN, first + 1)
    assert matches == [
        SecretMatch(first, first + len(GITHUB_TOKEN)),
        SecretMatch(second, second + len(GITHUB_TOKEN)),
    ]


def test_finds_key_body_with_crlf(redactor: OutputRedactor) -> None:
    """detect-secrets reports the body with "\\n" between lines, and the match still covers the "\\r\\n" text."""
    text = PRIVATE_KEY_TEXT.replace("\n", "\r\n")
    body = PRIVATE_KEY_BODY.replace("\n", "\r\n")

    matches = redactor.find(text)

    assert matches == [SecretMatch(text.index(body), text.index(body) + len(body))]


def test_secret_overlapping_email_covers_both(email_and_secrets_redactor: OutputRedactor) -> None:
    """The password of a connection URL and the address-shaped text around it become one `[SECRET]` span."""
    text = "Connect with postgres://reporting:Xq7vLp2mWz@db.internal.sluice.net:5432/events"
    start = text.index("Xq7vLp2mWz")
    end = text.index(":5432")

    matches = email_and_secrets_redactor.find(text)

    assert matches == [SecretMatch(start, end)]


def test_overlap_same_in_either_order() -> None:
    text = "Connect with postgres://reporting:Xq7vLp2mWz@db.internal.sluice.net:5432/events"
    secrets_first = OutputRedactor(parse_policy({"output": [SECRETS_ENTRY, EMAIL_ENTRY]}, source="test").output)
    email_first = OutputRedactor(parse_policy({"output": [EMAIL_ENTRY, SECRETS_ENTRY]}, source="test").output)

    assert secrets_first.find(text) == email_first.find(text)


def test_email_apart_from_secret_kept(email_and_secrets_redactor: OutputRedactor) -> None:
    text = f"Mail a@b.io the token {GITHUB_TOKEN} today."

    matches = email_and_secrets_redactor.find(text)

    assert matches == [
        PiiMatch(5, 11, PiiEntity.EMAIL),
        SecretMatch(text.index(GITHUB_TOKEN), text.index(GITHUB_TOKEN) + len(GITHUB_TOKEN)),
    ]


def test_plan_redacts_settled_secret() -> None:
    text = "token ghp_xyz, then more text"

    plan = plan_release(text, 0, 20, [SecretMatch(6, 13)])

    assert plan.text == f"token {SECRET_PLACEHOLDER}, then more text"
    assert plan.release_end == len(f"token {SECRET_PLACEHOLDER}, then ")
    assert plan.redacted_count == 1


def test_plan_holds_secret_at_text_end() -> None:
    """A secret that ends where the text ends may still grow, so the release stops at its start."""
    text = "the value is abcdef"

    plan = plan_release(text, 0, 16, [SecretMatch(13, len(text))])

    assert plan.text == text
    assert plan.release_end == 13
    assert plan.redacted_count == 0


def test_holdback_is_secrets_bound(output_chain: ScannerChain, redactor: OutputRedactor) -> None:
    assert redactor.max_match_chars == SECRETS_MAX_MATCH_CHARS
    assert Holdback(output_chain, redactor=redactor).holdback_chars == SECRETS_MAX_MATCH_CHARS


def test_redactor_names_in_policy_order(email_and_secrets_redactor: OutputRedactor) -> None:
    assert email_and_secrets_redactor.names == ("PII", "Secrets")


def test_detector_error_raises_scanner_failed(redactor: OutputRedactor, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_detect(self: SecretsScanner, prompt: str) -> tuple[()]:
        raise RuntimeError(f"could not parse {prompt}")

    monkeypatch.setattr(SecretsScanner, "detect", failing_detect)

    with pytest.raises(ScannerFailed) as caught:
        redactor.find(f"token {GITHUB_TOKEN}")

    logged = "".join(traceback.format_exception(caught.value))
    assert caught.value.scanner == "Secrets"
    assert str(caught.value) == "scanner Secrets raised RuntimeError"
    assert "in failing_detect" in logged
    assert GITHUB_TOKEN not in logged


def test_build_error_raises_policy_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.moderation import secret_redaction

    def fail_to_build() -> None:
        raise ImportError("llm_guard is not installed")

    # Valid policies build, so the detector class is replaced by one that raises as a broken install does.
    monkeypatch.setattr(secret_redaction, "SecretsScanner", fail_to_build)
    specs = parse_policy({"output": [{"type": "Secrets", "name": "Keys", "action": "redact"}]}, source="test").output

    with pytest.raises(PolicyError) as caught:
        OutputRedactor(specs)

    assert str(caught.value) == "output scanner Keys cannot be built: ImportError: llm_guard is not installed"


@pytest.mark.parametrize("chunk_chars", [5, 200])
async def test_secret_in_one_chunk_redacted(output_chain: ScannerChain, redactor: OutputRedactor, chunk_chars: int) -> None:
    line = f"Use the token {GITHUB_TOKEN} to push."
    chunks = [*_chunks(OPENING, chunk_chars), line, *_chunks(CLOSING, chunk_chars)]
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed_to_end(Holdback(output_chain, redactor=redactor), stream, chunks)

    assert not blocked
    assert "".join(released) == OPENING + f"Use the token {SECRET_PLACEHOLDER} to push." + CLOSING
    assert stream.redacted_count == 1


@pytest.mark.parametrize("chunk_chars", [1, 3, 7, 16, 41, 97])
@pytest.mark.parametrize("case", sorted(SECRET_CASES))
async def test_split_secret_never_released_in_part(
    output_chain: ScannerChain, redactor: OutputRedactor, case: str, chunk_chars: int
) -> None:
    """Whatever the chunk size, no released piece contains the start of the secret, and the whole release has none of it."""
    template, secret = SECRET_CASES[case]
    text = OPENING + template.format(secret) + CLOSING
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed_to_end(Holdback(output_chain, redactor=redactor), stream, _chunks(text, chunk_chars))

    assert not blocked
    assert "".join(released) == OPENING + template.format(SECRET_PLACEHOLDER) + CLOSING
    for piece in released:
        assert _leaked_prefixes(secret, piece) == []
    assert _leaked_prefixes(secret, "".join(released)) == []


async def test_growing_secret_at_text_end_held(output_chain: ScannerChain, redactor: OutputRedactor) -> None:
    """A quoted value that has not closed yet is reported as a secret that ends at the text's end, and none of it goes."""
    text = OPENING + f'aws_secret_access_key = "{AWS_SECRET}'
    stream = OutputStream("acme", "r-1", 1)
    holdback = Holdback(output_chain, redactor=redactor)

    released, blocked = await _feed(holdback, stream, _chunks(text, 10))

    window = stream.text[stream.scan_start(holdback.holdback_chars) :]
    assert not blocked
    assert [match.end for match in redactor.find(window)] == [len(window)]
    assert released
    assert _leaked_prefixes(AWS_SECRET, "".join(released)) == []


async def test_final_release_redacts_end_secret(output_chain: ScannerChain, redactor: OutputRedactor) -> None:
    text = OPENING + f"Use the token {GITHUB_TOKEN}"
    stream = OutputStream("acme", "r-1", 1)
    holdback = Holdback(output_chain, redactor=redactor)

    released, _ = await _feed(holdback, stream, _chunks(text, 9))
    released_before_end = "".join(released)
    await holdback.settle_at_end(stream)
    _release(stream, released)

    assert _leaked_prefixes(GITHUB_TOKEN, released_before_end) == []
    assert released[-1].endswith(f"Use the token {SECRET_PLACEHOLDER}")
    assert "".join(released) == OPENING + f"Use the token {SECRET_PLACEHOLDER}"


@pytest.mark.parametrize("chunk_chars", [1, 6, 50])
async def test_split_secret_and_email_redacted(
    email_and_secrets_redactor: OutputRedactor, output_chain: ScannerChain, chunk_chars: int
) -> None:
    url = "postgres://reporting:Xq7vLp2mWz@db.internal.sluice.net:5432/events"
    # On one line with the URL, the address would make detect-secrets drop the password.
    text = OPENING + f"Connect with {url}\nor mail jane.doe@example.com." + CLOSING
    stream = OutputStream("acme", "r-1", 1)
    holdback = Holdback(output_chain, redactor=email_and_secrets_redactor)

    released, blocked = await _feed_to_end(holdback, stream, _chunks(text, chunk_chars))

    expected = f"Connect with postgres://reporting:{SECRET_PLACEHOLDER}:5432/events\nor mail [EMAIL]."
    assert not blocked
    assert "".join(released) == OPENING + expected + CLOSING
    assert all("Xq7v" not in piece for piece in released)


@pytest.mark.parametrize("chunk_chars", [1, 7, 41])
async def test_block_action_stops_before_release(chunk_chars: int) -> None:
    policy = parse_policy({"output": [{"type": "Secrets"}]}, source="test")
    holdback = Holdback(build_output_chain(policy), redactor=OutputRedactor(policy.output))
    text = OPENING + f"Use the token {GITHUB_TOKEN} to push." + CLOSING
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, _chunks(text, chunk_chars))

    assert blocked
    assert released
    assert _leaked_prefixes(GITHUB_TOKEN, "".join(released)) == []


def test_redact_entry_gives_no_verdict() -> None:
    policy = parse_policy({"output": [*OUTPUT_POLICY["output"], SECRETS_ENTRY]}, source="test")

    scanners = OutputPolicy(policy).default

    assert scanners.full_chain.names == ("BanSubstrings", "AwsAccessKey", "NoRefusalLight")
    assert scanners.holdback.redactor_names == ("Secrets",)
    assert scanners.holdback.holdback_chars == SECRETS_MAX_MATCH_CHARS


def test_block_entry_checked_while_streaming() -> None:
    policy = parse_policy({"output": [{"type": "Secrets", "name": "OutputSecrets"}]}, source="test")

    scanners = OutputPolicy(policy).default

    assert scanners.full_chain.names == ("OutputSecrets",)
    assert scanners.holdback.scanner_names == ("OutputSecrets",)
    assert scanners.holdback.redactor_names == ("OutputSecrets",)
    assert scanners.holdback.holdback_chars == SECRETS_MAX_MATCH_CHARS


@pytest.mark.parametrize("chunk_chars", [1, 6, 50])
async def test_secret_dropped_by_detector_still_redacted(
    email_and_secrets_redactor: OutputRedactor, output_chain: ScannerChain, chunk_chars: int
) -> None:
    """detect-secrets stops reporting the password once an address follows on its line; the stream remembers it."""
    password = "Xq7vLp2mWz"
    text = OPENING + f"Connect with postgres://reporting:{password}@db.internal.sluice.net:5432/events or mail jane.doe@example.com." + CLOSING
    stream = OutputStream("acme", "r-1", 1)
    holdback = Holdback(output_chain, redactor=email_and_secrets_redactor)

    released, blocked = await _feed_to_end(holdback, stream, _chunks(text, chunk_chars))

    assert not blocked
    assert _leaked_prefixes(password, "".join(released)) == []
    assert "[EMAIL]" in "".join(released)
    assert "".join(released).endswith(CLOSING)
