"""A batch fetch loop on a durable JetStream pull consumer, written against nats-py directly.

FastStream 0.7.8's batch pull subscriber (`PullSub(batch=True)`) is not used.
It gathers a batch over several fetches and catches only
`nats.errors.TimeoutError`, but `PullSubscription.fetch` in nats-py 2.16.0
raises a bare `asyncio.TimeoutError` when it starts with its deadline nearly
spent. The exception discards the messages gathered so far, and JetStream
redelivers them only after the consumer's ack wait (30 s), again and again
while traffic is light. This loop treats every timeout as the end of a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from shared.subjects import ConsumerSpec

log = structlog.get_logger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[None]]

# After the connection or JetStream failed, wait this long before fetching
# again instead of spinning; nats-py reconnects on its own meanwhile.
FETCH_ERROR_PAUSE_S = 1.0


class BatchPuller:
    """Fetches batches of up to `batch_size` messages and hands each to `handler`.

    A batch is handed over when it is full or `fetch_timeout_s` seconds after
    its fetch began, whichever comes first.

    The handler settles every message itself (ack, nak or term). A handler
    that raises is logged, and its unsettled messages are redelivered by
    JetStream after the consumer's ack wait.
    """

    def __init__(self, spec: ConsumerSpec, handler: BatchHandler, *, batch_size: int, fetch_timeout_s: float) -> None:
        self._spec = spec
        self._handler = handler
        self._batch_size = batch_size
        self._fetch_timeout_s = fetch_timeout_s
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._fetching = False

    async def start(self, jetstream: JetStreamContext) -> None:
        """Bind to the durable consumer (it must exist already) and start the loop."""
        subscription = await jetstream.pull_subscribe_bind(durable=self._spec.durable, stream=self._spec.stream)
        self._subscription = subscription
        self._running = True
        self._task = asyncio.create_task(self._run(subscription), name=f"pull-{self._spec.durable}")
        log.info("pull_consumer_started", consumer=self._spec.durable, batch_size=self._batch_size)

    async def stop(self) -> None:
        """Stop fetching; a batch being handled is finished first, so its messages are settled."""
        self._running = False
        if self._task is None:
            return
        if self._fetching:
            self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._unsubscribe()
        log.info("pull_consumer_stopped", consumer=self._spec.durable)

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        while self._running:
            batch = await self._fetch_batch(subscription)
            if batch:
                await self._handle(batch)

    async def _fetch_batch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        self._fetching = True
        try:
            return await self._gather(subscription, time.monotonic() + self._fetch_timeout_s)
        except (ConnectionClosedError, ServiceUnavailableError) as error:
            log.warning(
                "pull_fetch_failed", consumer=self._spec.durable, error=repr(error), retry_in_s=FETCH_ERROR_PAUSE_S
            )
            await asyncio.sleep(FETCH_ERROR_PAUSE_S)
            return []
        finally:
            self._fetching = False

    async def _gather(self, subscription: JetStreamContext.PullSubscription, deadline: float) -> list[Msg]:
        # Messages fetched before a connection error stay unacked, and
        # JetStream redelivers them after the ack wait.
        batch: list[Msg] = []
        while len(batch) < self._batch_size and (remaining_s := deadline - time.monotonic()) > 0:
            try:
                batch += await subscription.fetch(self._batch_size - len(batch), timeout=remaining_s)
            except asyncio.TimeoutError:
                # Covers nats.errors.TimeoutError too, which derives from it.
                break
        return batch

    async def _handle(self, batch: list[Msg]) -> None:
        try:
            await self._handler(batch)
        except Exception:
            log.exception("pull_batch_handler_failed", consumer=self._spec.durable, messages=len(batch))

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except ConnectionClosedError:
                pass
            self._subscription = None
