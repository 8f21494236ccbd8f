"""Coalescing streamed text into chunk messages."""

from __future__ import annotations

import asyncio

import pytest

from services.inference.coalescing import ChunkCoalescer

INTERVAL_S = 0.05


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.published: list[str] = []
        self._fail_on = fail_on

    async def publish(self, text: str) -> None:
        if self._fail_on is not None and len(self.published) == self._fail_on:
            raise ConnectionError("NATS is down")
        self.published.append(text)


async def test_first_text_published_alone() -> None:
    recorder = Recorder()
    coalescer = ChunkCoalescer(recorder.publish, interval_s=INTERVAL_S)
    coalescer.start()

    coalescer.add("To")
    await asyncio.sleep(0.01)

    assert recorder.published == ["To"]
    await coalescer.flush()


async def test_burst_merges_into_one_chunk() -> None:
    recorder = Recorder()
    coalescer = ChunkCoalescer(recorder.publish, interval_s=INTERVAL_S)
    coalescer.start()

    coalescer.add("To")
    await asyncio.sleep(0.01)
    for word in [" be", " or", " not"]:
        coalescer.add(word)
    await coalescer.flush()

    assert recorder.published == ["To", " be or not"]


async def test_flush_publishes_everything_in_order() -> None:
    recorder = Recorder()
    coalescer = ChunkCoalescer(recorder.publish, interval_s=0.02)
    coalescer.start()
    words = [f"w{index} " for index in range(50)]

    for word in words:
        coalescer.add(word)
        await asyncio.sleep(0.001)
    await coalescer.flush()

    assert "".join(recorder.published) == "".join(words)
    assert len(recorder.published) < len(words)


async def test_abandon_drops_buffered_text() -> None:
    recorder = Recorder()
    coalescer = ChunkCoalescer(recorder.publish, interval_s=INTERVAL_S)
    coalescer.start()

    coalescer.add("kept")
    await asyncio.sleep(0.01)
    coalescer.add("dropped")
    await coalescer.abandon()

    assert recorder.published == ["kept"]


async def test_flush_raises_publish_error() -> None:
    coalescer = ChunkCoalescer(Recorder(fail_on=0).publish, interval_s=INTERVAL_S)
    coalescer.start()
    coalescer.add("text")

    with pytest.raises(ConnectionError):
        await coalescer.flush()


async def test_add_raises_after_failed_publish() -> None:
    coalescer = ChunkCoalescer(Recorder(fail_on=0).publish, interval_s=INTERVAL_S)
    coalescer.start()
    coalescer.add("text")
    await asyncio.sleep(0.01)

    with pytest.raises(ConnectionError):
        coalescer.add("more")
    await coalescer.abandon()
