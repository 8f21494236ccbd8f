from __future__ import annotations

from services.model_server.text_tracking import IncrementalDecoder, find_stop, held_back_length


def test_decoder_pieces_join_to_full_text(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    ids = tokenizer("Wherefore art thou, Romeo? Ça va, 日本語 🙂")["input_ids"]
    decoder = IncrementalDecoder(tokenizer)

    pieces = [decoder.push(token_id, final=index == len(ids) - 1) for index, token_id in enumerate(ids)]

    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) == "Wherefore art thou, Romeo? Ça va, 日本語 🙂"


def test_decoder_withholds_partial_character(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    ids = tokenizer("🙂")["input_ids"]
    decoder = IncrementalDecoder(tokenizer)

    pieces = [decoder.push(token_id, final=False) for token_id in ids]

    assert len(ids) > 1
    assert "\ufffd" not in "".join(pieces)
    assert pieces[-1] == "🙂"


def test_decoder_skips_special_tokens(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    decoder = IncrementalDecoder(tokenizer)

    piece = decoder.push(tokenizer.eos_token_id, final=True)

    assert piece == ""
    assert decoder.text == ""


def test_find_stop_returns_earliest_start() -> None:
    assert find_stop("to be or not to be", ("not", "or"), search_from=0) == 6


def test_find_stop_ignores_earlier_text() -> None:
    assert find_stop("ab\n\ncd", ("\n\n",), search_from=5) is None


def test_find_stop_catches_match_spanning_pieces() -> None:
    # "\n" was already searched; the second "\n" arrives at index 3.
    assert find_stop("abc\n\n", ("\n\n",), search_from=4) == 3


def test_find_stop_without_sequences() -> None:
    assert find_stop("anything", (), search_from=0) is None


def test_held_back_covers_stop_prefix() -> None:
    assert held_back_length("Good night\nRO", ("\nROMEO:",)) == 3


def test_held_back_zero_without_prefix() -> None:
    assert held_back_length("Good night", ("\nROMEO:",)) == 0


def test_held_back_takes_longest_prefix() -> None:
    assert held_back_length("thee\n\n", ("\n", "\n\nJULIET")) == 2
