"""The in-memory state of each request's output stream and the table that bounds it."""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.events import FailedPayload, ModeratedPayload, Usage

if TYPE_CHECKING:
    from services.moderation.holdback import OutputScanners


class ChunkOrder(enum.Enum):
    """Position of a chunk relative to the chunks already accepted."""

    NEXT = "next"
    # Accepted before: a redelivery.
    DUPLICATE = "duplicate"
    # An earlier chunk has not arrived yet.
    EARLY = "early"


@dataclass
class Closing:
    """The planned end of a stream, decided once so that a retry after a failed write repeats the same writes.

    The writes run in order. First the held tail is released (when
    `release_tail`). A completed or blocked output then publishes its events
    and appends `final` to the release log. A failure of moderation itself
    appends `final` first and publishes `request.failed` only when that
    closed the log.
    """

    final: dict[str, Any]
    release_tail: bool = False
    # Published as `output.moderated`.
    moderated: ModeratedPayload | None = None
    # Set when `output.delivered` is published: its finish reason and usage.
    delivered_finish_reason: str | None = None
    delivered_usage: Usage = field(default_factory=Usage)
    # Published as `request.failed` when moderation itself ends the request.
    failed: FailedPayload | None = None
    # None until the final entry was written; then whether it closed the log.
    final_stored: bool | None = None


@dataclass
class OutputStream:
    """The output of one generation attempt and how much of it was released.

    Chunk `seq` values start at 0 for each attempt. `text` contains every
    accepted chunk, with the personal data that moderation redacted replaced
    by placeholders up to `release_end` and raw after it.
    `text[:released_chars]` is what clients received, in `released_chunks`
    release-log chunks.
    """

    tenant: str
    request_id: str
    attempt: int
    text: str = ""
    next_chunk_seq: int = 0
    released_chars: int = 0
    released_chunks: int = 0
    # End of the text that passed the check and may be released; at least `released_chars`.
    release_end: int = 0
    # Matches of personal data replaced by placeholders so far; a count only, never the values.
    redacted_count: int = 0
    # Secret values that a check of this stream found, redacted wherever they
    # occur later even when the detector no longer reports them. Never logged.
    known_secrets: set[str] = field(default_factory=set, repr=False)
    # Set when a later chunk arrived before `next_chunk_seq`; generation.end waits then.
    awaiting_missing_chunk: bool = False
    closing: Closing | None = None
    # True once every write of `closing` succeeded; later chunks are ignored.
    closed: bool = False
    # The scanners of the policy in force when the stream opened. The stream
    # keeps them to its end, so a policy change never moves the holdback or
    # judges one output by two policies. None only for a stream built outside `Moderator`.
    scanners: OutputScanners | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.request_id)

    @property
    def released_text(self) -> str:
        return self.text[: self.released_chars]

    def accept(self, seq: int, text: str) -> ChunkOrder:
        """Append chunk `seq` when it is the next one; a duplicate or early chunk changes nothing."""
        if seq < self.next_chunk_seq:
            return ChunkOrder.DUPLICATE
        if seq > self.next_chunk_seq:
            return ChunkOrder.EARLY

        self.text += text
        self.next_chunk_seq += 1
        self.awaiting_missing_chunk = False
        return ChunkOrder.NEXT

    def scan_start(self, holdback_chars: int) -> int:
        """Return where the scan window starts: `holdback_chars` characters before the unreleased text."""
        return max(0, self.released_chars - holdback_chars)

    def scan_window(self, holdback_chars: int) -> str:
        """Return the unreleased text plus the `holdback_chars` characters before it.

        A match of at most `holdback_chars` characters that overlaps the
        unreleased text lies entirely inside this window.
        """
        return self.text[self.scan_start(holdback_chars) :]

    def holdback_cut(self, holdback_chars: int) -> int:
        """Return the end of the unreleased text except its last `holdback_chars` characters."""
        return max(self.released_chars, len(self.text) - holdback_chars)

    def settle(self, text: str, release_end: int) -> None:
        """Replace the text after a passing check (with redactions applied) and allow release up to `release_end`."""
        if text[: self.released_chars] != self.released_text or release_end < self.released_chars:
            raise ValueError(f"stream of request {self.request_id}: a settled text must keep the released text")
        self.text = text
        self.release_end = release_end

    def releasable(self) -> str:
        """Return the text that passed the check and is not released yet; may be empty."""
        return self.text[self.released_chars : self.release_end]

    def mark_released(self, piece: str) -> None:
        self.released_chars += len(piece)
        self.released_chunks += 1


class StreamTable:
    """The output streams this replica tracks, keyed by (tenant, request id).

    A stream that receives no message for `idle_timeout_s` seconds is
    forgotten by `evict_idle`, so requests whose last message never comes
    do not hold memory forever. Not thread-safe: use it from one event loop.
    """

    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        # Least recently used first; the value is (stream, last activity on `clock`).
        self._streams: OrderedDict[tuple[str, str], tuple[OutputStream, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, tenant: str, request_id: str) -> OutputStream | None:
        """Return the stream of the request and mark it active, or None when none is tracked."""
        entry = self._streams.get((tenant, request_id))
        if entry is None:
            return None
        self.put(entry[0])
        return entry[0]

    def put(self, stream: OutputStream) -> None:
        """Track `stream`, replacing any stream of the same request, and mark it active."""
        self._streams[stream.key] = (stream, self._clock())
        self._streams.move_to_end(stream.key)

    def drop(self, stream: OutputStream) -> None:
        """Forget `stream` if it is the one tracked for its request."""
        entry = self._streams.get(stream.key)
        if entry is not None and entry[0] is stream:
            del self._streams[stream.key]

    def evict_idle(self) -> list[OutputStream]:
        """Forget and return the streams idle for longer than `idle_timeout_s`."""
        cutoff = self._clock() - self._idle_timeout_s
        evicted: list[OutputStream] = []
        while self._streams:
            key, (stream, last_active) = next(iter(self._streams.items()))
            if last_active > cutoff:
                break
            del self._streams[key]
            evicted.append(stream)
        return evicted
