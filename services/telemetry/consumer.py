"""Storing batches of the EVENTS stream: decode, insert once, then acknowledge.

Each batch comes from the durable pull consumer `telemetry`. A message that
is not a valid envelope is terminated: JetStream never redelivers it and
nothing is stored. The valid ones are inserted with one insert into
`events`, their signal rows with a second one into `request_signals`, and
each message is acknowledged only after both inserts returned. Before the
inserts, the signal rows whose request's assignment this process does not
remember get it from one query of `request_signals` per batch. When the
store fails, the batch is negatively acknowledged with a delay that doubles
on each delivery, so JetStream redelivers it later and no message is acked
before it is stored.
A message that JetStream delivers again may have been stored before its ack
was lost, so the store looks its event id up before inserting it.

Memory and backpressure: the puller keeps at most two batches, each bounded
by `batch_size` and `batch_max_bytes`, and hands a batch over only after the
previous insert returned. A slow ClickHouse therefore slows the pull, and the
backlog waits in JetStream. While ClickHouse is down, the negatively
acknowledged messages still count toward the consumer's `max_ack_pending`
(20,000, two default batches) until JetStream redelivers them. So the
service tries at most that many messages per retry delay, and the rest of
the backlog stays undelivered in the stream
(`test_store_down_leaves_backlog_undelivered`).

NOTE: the writer sends no in-progress acks. When an insert takes longer than
the consumer's ack wait (30 s), JetStream redelivers the batch fetched
meanwhile while it still waits. The writer skips those copies as recently
inserted, so the cost is a second delivery, not a second row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg

from services.telemetry.metrics import TelemetryMetrics
from services.telemetry.prompt_embeddings import PromptEmbedder
from services.telemetry.puller import delivery_count
from services.telemetry.rows import EventRow, InvalidEvent, decode_event
from services.telemetry.signals import Signal, SignalBuilder, SignalRow
from services.telemetry.store import EventStore
from services.telemetry.text_storage import TextStorage
from shared.consuming import log_rejected
from shared.store_client import StoreError

log = structlog.get_logger(__name__)

# How many request ids the log line of assignments not found lists.
LOGGED_REQUEST_IDS_MAX = 10


@dataclass(frozen=True)
class RetryDelay:
    """Delay before JetStream redelivers a batch that could not be stored, in seconds."""

    initial_s: float
    max_s: float

    def after(self, deliveries: int) -> float:
        """Return the delay after the `deliveries`-th failed delivery (1 for the first).

        The delay is `initial_s`, doubled for each further delivery and capped at `max_s`.
        """
        # The cap keeps 2**exponent a small number after thousands of deliveries.
        exponent = min(max(deliveries, 1) - 1, 32)
        return min(self.initial_s * 2**exponent, self.max_s)


class EventBatchWriter:
    """Stores one batch of JetStream messages at a time and settles every message of it.

    `text_storage` returns the storage modes of the policy in force, read
    once per batch; None stores every text as it arrived. With
    `embed_prompts`, each request.accepted signal row gets its prompt
    embedding, computed in a worker thread before the insert.
    """

    def __init__(
        self,
        store: EventStore,
        retry_delay: RetryDelay,
        text_storage: Callable[[], TextStorage] | None = None,
        metrics: TelemetryMetrics | None = None,
        *,
        embed_prompts: bool = False,
    ) -> None:
        self._store = store
        self._retry_delay = retry_delay
        self._text_storage = text_storage
        self._signals = SignalBuilder()
        self._embedder = PromptEmbedder() if embed_prompts else None
        # Without `metrics`, the writer counts into a registry that no endpoint serves.
        self._metrics = metrics or TelemetryMetrics()

    async def store_batch(self, messages: list[Msg]) -> None:
        """Insert the batch's valid events and ack them, and terminate the invalid ones.

        When the store fails, every valid message is nacked with the retry delay instead.
        """
        self._metrics.batch_size.observe(len(messages))
        batch = await self._decode_or_terminate(messages)
        if not batch.messages:
            return
        if self._embedder is not None:
            # NOTE: a batch that fails to store is embedded again on each delivery.
            await self._embedder.fill(batch.signals())
        started = time.perf_counter()
        try:
            await self._fill_assignments(batch)
            inserted = await self._store.insert_new(batch.first_deliveries, redelivered=batch.redeliveries)
        except StoreError as error:
            self._metrics.insert_duration.observe(time.perf_counter() - started)
            self._metrics.insert_retries.inc()
            await self._retry_later(batch.messages, error)
            return
        duration_s = time.perf_counter() - started
        self._metrics.insert_duration.observe(duration_s)
        await _ack_all(batch.messages)
        self._metrics.events_written.inc(inserted)
        log.info(
            "event_batch_stored",
            events=len(batch.messages),
            inserted=inserted,
            duplicates=len(batch.messages) - inserted,
            duration_ms=round(duration_s * 1000, 3),
        )

    async def _decode_or_terminate(self, messages: list[Msg]) -> _DecodedBatch:
        batch = _DecodedBatch()
        text_storage = self._text_storage() if self._text_storage is not None else None
        for message in messages:
            try:
                row = decode_event(message.data, text_storage, self._signals)
            except InvalidEvent as error:
                await self._terminate(message, error)
                continue
            batch.add(message, row)
        return batch

    async def _fill_assignments(self, batch: _DecodedBatch) -> None:
        # After the whole batch is decoded, so that its own request.assigned
        # events are remembered first and need no lookup. A failed lookup
        # raises StoreError, and the batch is retried like a failed insert,
        # because a row stored without its assignment would stay that way.
        # Its redelivered copy would be skipped as already stored.
        unassigned = self._signals.unassigned(batch.signals())
        if not unassigned:
            return
        self._metrics.assignment_lookups.inc()
        found = await self._store.stored_assignments(unassigned)
        # NOTE: a request.assigned that another replica has fetched but not
        # inserted yet is not found, and neither is one older than the
        # lookup's bound. Such rows are stored without the assignment.
        still_unassigned = self._signals.assign(unassigned, found)
        if still_unassigned:
            self._log_not_found(still_unassigned)

    def _log_not_found(self, rows: list[SignalRow]) -> None:
        # Expected for a request that the ingress cancelled before it was
        # assigned, and so logged at info.
        self._metrics.assignments_not_found.inc(len(rows))
        request_ids = sorted({row.request_id for row in rows})
        log.info(
            "signal_assignments_not_found",
            rows=len(rows),
            requests=len(request_ids),
            request_ids=request_ids[:LOGGED_REQUEST_IDS_MAX],
        )

    async def _terminate(self, message: Msg, error: InvalidEvent) -> None:
        log_rejected(error, subject=message.subject, stream_sequence=message.metadata.sequence.stream)
        await message.term()

    async def _retry_later(self, messages: list[Msg], error: StoreError) -> None:
        deliveries = max(delivery_count(message) for message in messages)
        delay_s = self._retry_delay.after(deliveries)
        log.warning(
            "event_batch_store_failed",
            events=len(messages),
            deliveries=deliveries,
            retry_delay_s=delay_s,
            error=str(error),
        )
        for message in messages:
            await message.nak(delay=delay_s)


@dataclass
class _DecodedBatch:
    """The valid messages of a batch, with their rows split by whether JetStream delivered them before."""

    messages: list[Msg] = field(default_factory=list)
    first_deliveries: list[EventRow] = field(default_factory=list)
    redeliveries: list[EventRow] = field(default_factory=list)

    def add(self, message: Msg, row: EventRow) -> None:
        self.messages.append(message)
        if delivery_count(message) == 1:
            self.first_deliveries.append(row)
        else:
            self.redeliveries.append(row)

    def signals(self) -> list[Signal]:
        rows = self.first_deliveries + self.redeliveries
        return [row.signal for row in rows if row.signal is not None]


async def _ack_all(messages: Iterable[Msg]) -> None:
    for message in messages:
        await message.ack()
