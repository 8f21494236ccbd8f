"""Turn generated token ids into text as they arrive: incremental detokenization and stop-sequence search."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# The character a decoder returns for bytes that do not yet form a whole UTF-8 character.
REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """Decode a growing list of token ids into text, one token at a time, without splitting characters.

    Special tokens decode to nothing. A token that ends inside a multi-byte
    character yields "" until a later token completes it. The concatenation of
    every piece returned equals `tokenizer.decode(ids, skip_special_tokens=True)`
    once `push` was last called with `final=True`. Not thread-safe.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self.text = ""

    def push(self, token_id: int, *, final: bool) -> str:
        """Add `token_id` and return the text it completes; `final` flushes a trailing partial character."""
        self._ids.append(token_id)
        decoded = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if decoded.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        piece = decoded[len(self.text) :]
        self.text = decoded
        return piece


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> int | None:
    """Return the index in `text` where the earliest stop sequence begins, looking only at matches that end after `search_from`."""
    starts = []
    for stop in stops:
        index = text.find(stop, max(0, search_from - len(stop) + 1))
        if index >= 0:
            starts.append(index)
    return min(starts, default=None)


def held_back_length(text: str, stops: tuple[str, ...]) -> int:
    """Return how many trailing characters of `text` could still grow into a stop sequence.

    A streaming reply withholds them so that no part of a stop sequence
    reaches the client before the whole sequence is recognised.
    """
    longest = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:length]):
                longest = length
                break
    return longest
