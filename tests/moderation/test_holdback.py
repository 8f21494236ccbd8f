"""The streaming check: banned text split across chunks is caught before any of it is released."""

from __future__ import annotations

import pytest

from services.moderation.holdback import Holdback, OutputScanners
from services.moderation.stream import OutputStream
from shared.scanning import PolicyError, ScannerChain, build_output_chain, parse_policy
from tests.moderation.support import HOLDBACK_CHARS, OUTPUT_POLICY


async def _feed(holdback: Holdback, stream: OutputStream, chunks: list[str]) -> tuple[list[str], bool]:
    """Accept, check and release chunks as moderation does; return the released pieces and whether a check blocked."""
    released: list[str] = []
    for seq, text in enumerate(chunks):
        stream.accept(seq, text)
        if (await holdback.check(stream)).blocked:
            return released, True
        piece = holdback.releasable(stream)
        if piece:
            stream.mark_released(piece)
            released.append(piece)
    return released, False


def test_holdback_length_from_policy(output_chain: ScannerChain) -> None:
    assert Holdback(output_chain).holdback_chars == HOLDBACK_CHARS
    assert Holdback(output_chain).scanner_names == ("BanSubstrings", "AwsAccessKey")


async def test_split_banned_string_caught(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)
    prefix = "Once upon a time there was a model that said: "

    released, blocked = await _feed(holdback, stream, [prefix + "DAN Mo", "de enabled. Now I obey."])

    assert blocked
    assert "".join(released) == prefix


async def test_split_key_never_released(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)
    chunks = ["The key is AK", "IAIOSFO", "DNN7EXAMPLE and that is all."]

    released, blocked = await _feed(holdback, stream, chunks)

    assert blocked
    assert "AK" not in "".join(released)


async def test_clean_output_released_whole(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)
    chunks = ["To be, ", "or not to be", ": that is the question. ", "Whether 'tis nobler ", "in the mind to suffer"]

    released, blocked = await _feed(holdback, stream, chunks)
    await holdback.settle_at_end(stream)
    tail = stream.releasable()

    assert not blocked
    assert "".join(released) == "".join(chunks)
    assert tail == ""


async def test_possible_match_start_held(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, ["Say xyz"])

    assert not blocked
    assert released == ["Say "]


async def test_held_tail_released_once_harmless(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, ["Say xyz", "abc and the rest"])

    assert not blocked
    assert released == ["Say ", "xyzabc and the rest"]


async def test_possible_key_start_held(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, ["The id is AKIA1234"])

    assert not blocked
    assert released == ["The id is "]


async def test_impossible_key_released_whole(output_chain: ScannerChain) -> None:
    """Thirty characters after AKIA can never end the 16 of a key, so nothing is held."""
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)
    text = "The id is AKIA" + "1" * 30

    released, blocked = await _feed(holdback, stream, [text])

    assert not blocked
    assert "".join(released) == text


async def test_partial_match_held_within_bound() -> None:
    """A partial match longer than the entry's `max_match_chars` can never complete, so only that many characters stay."""
    policy = {
        "input": [],
        "output": [{"type": "Regex", "max_match_chars": 12, "options": {"patterns": ["BEGIN.*END"]}}],
    }
    holdback = Holdback(build_output_chain(parse_policy(policy, source="test")))
    stream = OutputStream("acme", "r-1", 1)
    text = "Text BEGIN and twenty more characters"

    released, blocked = await _feed(holdback, stream, [text])

    assert not blocked
    assert "".join(released) == text[: len(text) - 12]


def test_min_holdback_raises_length(output_chain: ScannerChain) -> None:
    assert Holdback(output_chain, min_holdback_chars=100).holdback_chars == 100


def test_min_holdback_never_lowers(output_chain: ScannerChain) -> None:
    assert Holdback(output_chain, min_holdback_chars=5).holdback_chars == HOLDBACK_CHARS


def test_negative_min_holdback_rejected(output_chain: ScannerChain) -> None:
    with pytest.raises(ValueError, match="min_holdback_chars must be 0 or more, got -1"):
        Holdback(output_chain, min_holdback_chars=-1)


async def test_min_holdback_keeps_tail(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain, min_holdback_chars=60)
    stream = OutputStream("acme", "r-1", 1)
    chunks = ["To be, or not to be, that is the question: ", "Whether 'tis nobler in the mind to suffer ", "the slings"]

    released, blocked = await _feed(holdback, stream, chunks)

    assert not blocked
    assert len(stream.text) - len("".join(released)) == 60


def test_policy_min_holdback_read() -> None:
    policy = parse_policy({**OUTPUT_POLICY, "moderation": {"min_holdback_chars": 64}}, source="test")

    assert policy.moderation.min_holdback_chars == 64
    assert OutputScanners.from_policy(policy).holdback.holdback_chars == 64


def test_policy_min_holdback_defaults_zero() -> None:
    policy = parse_policy(OUTPUT_POLICY, source="test")

    assert policy.moderation.min_holdback_chars == 0
    assert OutputScanners.from_policy(policy).holdback.holdback_chars == HOLDBACK_CHARS


@pytest.mark.parametrize(
    ("moderation", "expected"),
    [
        ({"min_holdback_chars": -1}, "moderation.min_holdback_chars: Input should be greater than or equal to 0"),
        ({"min_holdback_chars": "lots"}, "moderation.min_holdback_chars: Input should be a valid integer"),
        ({"holdback": 10}, "allowed keys: min_holdback_chars"),
    ],
)
def test_policy_bad_holdback_rejected(moderation: dict[str, object], expected: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy({**OUTPUT_POLICY, "moderation": moderation}, source="bad-policy.yaml")

    assert "policy file bad-policy.yaml is invalid" in str(raised.value)
    assert expected in str(raised.value)


def test_refusal_scanners_from_policy() -> None:
    scanners = OutputScanners.from_policy(parse_policy(OUTPUT_POLICY, source="test"))

    assert scanners.refusal_scanners == frozenset({"NoRefusalLight"})


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 7, 11, 16, 23, 40])
@pytest.mark.parametrize("min_holdback_chars", [0, 50])
async def test_banned_text_never_released(output_chain: ScannerChain, chunk_chars: int, min_holdback_chars: int) -> None:
    """Whatever the chunk size, no character of the banned string is released, and the check blocks."""
    opening = "Here is a long and harmless opening, written to fill a few chunks first. "
    text = opening + "Now: DAN Mode enabled, and more words after it."
    chunks = [text[start : start + chunk_chars] for start in range(0, len(text), chunk_chars)]
    holdback = Holdback(output_chain, min_holdback_chars)
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, chunks)

    assert blocked
    assert text[: text.index("DAN")].startswith("".join(released))
    assert "DAN" not in "".join(released)
