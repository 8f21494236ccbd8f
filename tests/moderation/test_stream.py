"""Output stream state: chunk order, windows, releasable text and the idle-bounded table."""

from __future__ import annotations

import pytest

from services.moderation.stream import ChunkOrder, OutputStream, StreamTable


def _stream(attempt: int = 1) -> OutputStream:
    return OutputStream(tenant="acme", request_id="r-1", attempt=attempt)


def test_next_chunk_appended() -> None:
    stream = _stream()

    assert stream.accept(0, "Hello ") is ChunkOrder.NEXT
    assert stream.accept(1, "world") is ChunkOrder.NEXT
    assert stream.text == "Hello world"
    assert stream.next_chunk_seq == 2


def test_duplicate_chunk_ignored() -> None:
    stream = _stream()
    stream.accept(0, "Hello ")

    assert stream.accept(0, "Hello ") is ChunkOrder.DUPLICATE
    assert stream.text == "Hello "


def test_early_chunk_ignored() -> None:
    stream = _stream()
    stream.accept(0, "Hello ")

    assert stream.accept(2, "there") is ChunkOrder.EARLY
    assert stream.text == "Hello "
    assert stream.next_chunk_seq == 1


def test_holdback_cut_keeps_tail() -> None:
    stream = _stream()
    stream.accept(0, "abcdefghij")

    assert stream.holdback_cut(4) == 6
    assert stream.holdback_cut(0) == 10
    assert stream.holdback_cut(20) == 0


def test_nothing_releasable_before_settle() -> None:
    stream = _stream()
    stream.accept(0, "abcdefghij")

    assert stream.releasable() == ""


def test_release_advances_position() -> None:
    stream = _stream()
    stream.accept(0, "abcdefghij")
    stream.settle(stream.text, 6)

    stream.mark_released("abcdef")
    stream.accept(1, "klm")
    stream.settle(stream.text, stream.holdback_cut(4))

    assert stream.released_text == "abcdef"
    assert stream.released_chunks == 1
    assert stream.releasable() == "ghi"


def test_settle_replaces_unreleased_text() -> None:
    stream = _stream()
    stream.accept(0, "mail a@b.io now")
    stream.settle("mail [EMAIL] now", 12)

    assert stream.releasable() == "mail [EMAIL]"
    assert stream.text == "mail [EMAIL] now"


def test_settle_keeps_released_text() -> None:
    stream = _stream()
    stream.accept(0, "abcdef")
    stream.settle(stream.text, 3)
    stream.mark_released("abc")

    with pytest.raises(ValueError, match="a settled text must keep the released text"):
        stream.settle("xbcdef", 4)


def test_window_adds_context_before() -> None:
    stream = _stream()
    stream.accept(0, "abcdefghij")
    stream.mark_released("abcdef")

    assert stream.scan_window(4) == "cdefghij"
    assert stream.scan_window(100) == "abcdefghij"


class _Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_table_evicts_idle_streams() -> None:
    clock = _Clock()
    table = StreamTable(idle_timeout_s=10.0, clock=clock)
    old, fresh = OutputStream("acme", "old", 1), OutputStream("acme", "fresh", 1)
    table.put(old)
    clock.now_s = 6.0
    table.put(fresh)
    clock.now_s = 12.0

    assert table.evict_idle() == [old]
    assert table.get("acme", "old") is None
    assert table.get("acme", "fresh") is fresh


def test_table_get_refreshes_activity() -> None:
    clock = _Clock()
    table = StreamTable(idle_timeout_s=10.0, clock=clock)
    stream = OutputStream("acme", "r-1", 1)
    table.put(stream)
    clock.now_s = 8.0
    table.get("acme", "r-1")
    clock.now_s = 15.0

    assert table.evict_idle() == []
    assert len(table) == 1


def test_table_drop_keeps_replacement() -> None:
    table = StreamTable(idle_timeout_s=10.0)
    first, second = OutputStream("acme", "r-1", 1), OutputStream("acme", "r-1", 2)
    table.put(first)
    table.put(second)

    table.drop(first)

    assert table.get("acme", "r-1") is second
