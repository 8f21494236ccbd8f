"""The streaming check: banned text split across chunks is caught before any of it is released."""

from __future__ import annotations

from services.moderation.holdback import Holdback
from services.moderation.stream import OutputStream
from shared.scanning import ScannerChain
from tests.moderation.support import HOLDBACK_CHARS


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
    assert "".join(released) == prefix[: len(prefix) + len("DAN Mo") - HOLDBACK_CHARS]
    assert "D" not in "".join(released)


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
    tail = stream.releasable(0)

    assert not blocked
    assert len(stream.text) - len("".join(released)) == HOLDBACK_CHARS
    assert "".join(released) + tail == "".join(chunks)


async def test_banned_text_in_tail_caught(output_chain: ScannerChain) -> None:
    holdback = Holdback(output_chain)
    stream = OutputStream("acme", "r-1", 1)

    released, blocked = await _feed(holdback, stream, ["A long and harmless opening line, ", "then xy", "zzy"])

    assert blocked
    assert "xy" not in "".join(released)
