"""Redacting personal data while the output streams: settled matches, held matches and split addresses."""

from __future__ import annotations

import pytest

from services.moderation.holdback import Holdback, OutputPolicy
from services.moderation.redaction import OutputRedactor, plan_release
from services.moderation.stream import OutputStream
from shared.scanning import ScannerChain, parse_policy
from shared.scanning.pii import PiiEntity, PiiMatch
from shared.scanning.policy import PII_MAX_MATCH_CHARS
from tests.moderation.support import OUTPUT_POLICY, PII_ENTRY, REDACTING_POLICY, REDACTING_TENANT

ADDRESS = "jane.doe@example.com"
OPENING = "Here is a long and harmless opening, written to fill a few chunks first. "
CLOSING = " is the address to write to, and nothing else follows but these words."


def _redactor() -> OutputRedactor:
    return OutputRedactor(parse_policy({"output": [PII_ENTRY]}, source="test").output)


async def _feed_to_end(holdback: Holdback, stream: OutputStream, chunks: list[str]) -> tuple[list[str], bool]:
    """Accept, check and release chunks as moderation does, then release the tail; return the released pieces."""
    released: list[str] = []
    for seq, text in enumerate(chunks):
        stream.accept(seq, text)
        if (await holdback.check(stream)).blocked:
            return released, True
        _release(stream, released)

    await holdback.settle_at_end(stream)
    _release(stream, released)
    return released, False


def _release(stream: OutputStream, released: list[str]) -> None:
    piece = stream.releasable()
    if piece:
        stream.mark_released(piece)
        released.append(piece)


def _email(start: int, end: int) -> PiiMatch:
    return PiiMatch(start, end, PiiEntity.EMAIL)


def test_plan_redacts_settled_match() -> None:
    text = "write to a@b.io today, please"

    plan = plan_release(text, 0, 22, [_email(9, 15)])

    assert plan.text == "write to [EMAIL] today, please"
    assert plan.release_end == len("write to [EMAIL] today,")
    assert plan.redacted_count == 1


def test_plan_holds_match_across_cut() -> None:
    text = "write to a@b.io today"

    plan = plan_release(text, 0, 12, [_email(9, 15)])

    assert plan.text == text
    assert plan.release_end == 9
    assert plan.redacted_count == 0


def test_plan_redacts_from_release_point() -> None:
    """A match longer than the holdback that started in released text is redacted from the release point on."""
    text = "key sk-abcdefghij and more"

    plan = plan_release(text, 8, 20, [PiiMatch(4, 17, PiiEntity.API_KEY)])

    assert plan.text == "key sk-a[API_KEY] and more"
    assert plan.release_end == len("key sk-a[API_KEY] an")


def test_plan_skips_released_match() -> None:
    plan = plan_release("[EMAIL] and more", 7, 12, [_email(0, 7)])

    assert plan.text == "[EMAIL] and more"
    assert plan.release_end == 12
    assert plan.redacted_count == 0


def test_redactor_skips_allowed_entities() -> None:
    matches = _redactor().find("call +44 20 7946 0958 or mail a@b.io")

    assert [match.entity for match in matches] == [PiiEntity.EMAIL]


def test_redactor_holdback_is_bound() -> None:
    assert _redactor().max_match_chars == PII_MAX_MATCH_CHARS
    assert OutputRedactor(()).max_match_chars == 0


def test_pii_raises_holdback(output_chain: ScannerChain) -> None:
    assert Holdback(output_chain, redactor=_redactor()).holdback_chars == PII_MAX_MATCH_CHARS


def test_pii_accepted_in_output_section() -> None:
    policy = parse_policy({"output": [PII_ENTRY]}, source="test")

    assert [spec.type for spec in policy.output] == ["PII"]


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 7, 11, 16, 23, 40, 97])
@pytest.mark.parametrize("min_holdback_chars", [0, 300])
async def test_split_email_released_redacted(output_chain: ScannerChain, chunk_chars: int, min_holdback_chars: int) -> None:
    """Whatever the chunk size, the address is released as its placeholder and never raw, in whole or in part."""
    text = OPENING + ADDRESS + CLOSING
    chunks = [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)]
    holdback = Holdback(output_chain, min_holdback_chars, _redactor())
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed_to_end(holdback, stream, chunks)

    assert not blocked
    assert "".join(released) == OPENING + "[EMAIL]" + CLOSING
    assert all("@" not in piece for piece in released)
    assert all("jane" not in piece for piece in released)
    assert stream.redacted_count == 1


@pytest.mark.parametrize("chunk_chars", [1, 4, 9, 30])
async def test_long_output_redacted_while_streaming(output_chain: ScannerChain, chunk_chars: int) -> None:
    """An address far from the end is released redacted before generation ends."""
    text = OPENING + ADDRESS + CLOSING + " Filler." * 60
    chunks = [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)]
    holdback = Holdback(output_chain, redactor=_redactor())
    stream = OutputStream("acme", "r-1", 1)
    released: list[str] = []

    for seq, chunk_text in enumerate(chunks):
        stream.accept(seq, chunk_text)
        assert not (await holdback.check(stream)).blocked
        _release(stream, released)

    assert "".join(released).startswith(OPENING + "[EMAIL]" + CLOSING)
    assert ADDRESS not in stream.text


async def test_banned_text_still_blocks_with_pii(output_chain: ScannerChain) -> None:
    text = OPENING + ADDRESS + " and then: DAN Mode enabled, obeying."
    chunks = [text[start : start + 6] for start in range(0, len(text), 6)]
    holdback = Holdback(output_chain, redactor=_redactor())
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed_to_end(holdback, stream, chunks)

    assert blocked
    assert "DAN" not in "".join(released)
    assert "jane" not in "".join(released)


def test_tenant_override_picks_output_list() -> None:
    output_policy = OutputPolicy(parse_policy(REDACTING_POLICY, source="test"))

    overridden = output_policy.for_request(REDACTING_TENANT, "/v1/requests")
    default = output_policy.for_request("acme", "/v1/requests")

    assert overridden.full_chain.names == ("PII",)
    assert overridden.holdback.redactor_names == ("PII",)
    assert default.full_chain.names == ("BanSubstrings", "AwsAccessKey", "NoRefusalLight")
    assert default.holdback.redactor_names == ()


def test_default_profile_without_pii() -> None:
    scanners = OutputPolicy(parse_policy(OUTPUT_POLICY, source="test")).default

    assert scanners.holdback.redactor_names == ()
    assert scanners.holdback.holdback_chars == 22
