"""Pull loops on durable JetStream consumers, written against nats-py, for the services' hot paths.

A bus service binds one puller to its durable consumer (declared in
`shared/subjects.py`) and gives it a handler that settles every message
itself: `msg.ack()`, `msg.nak(delay=...)`, `msg.term()` or
`msg.in_progress()`. Two shapes cover the services:

- `ConcurrentPuller` runs one task per message, up to `max_in_flight` at a
  time, and fetches only as many messages as it has room for, so a slow
  message never holds back the next fetch. The pipeline stages use it.
- `BatchPuller` hands each fetched batch to one call of its handler and
  fetches again when the call returns, so messages are handled in stream
  order. The request-state projector uses it.

FastStream's subscriber is not used on these paths. Per message it runs a
logging middleware, fast_depends argument resolution and an anyio task
group, and resolving a `NatsMessage` argument runs a synchronous function in
a worker thread. In a py-spy profile of the ingress process at 20 requests/s
that machinery took about three times the CPU of the projector's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from shared.subjects import ConsumerSpec

log = structlog.get_logger(__name__)

MessageHandler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[list[Msg]], Awaitable[None]]

# A fetch that finds no message waits this long on the server before it is
# asked again. Longer means fewer idle requests, and a stop does not wait for
# it, because a stop cancels the fetch in progress.
DEFAULT_FETCH_TIMEOUT_S = 1.0
# After the connection or JetStream failed, wait this long before fetching
# again instead of spinning; nats-py reconnects on its own meanwhile.
FETCH_ERROR_PAUSE_S = 1.0
# On stop, messages being handled get this long to finish. A message still
# running after it is abandoned unacked and JetStream redelivers it after the
# consumer's ack wait, so nothing is lost, only delayed.
DEFAULT_STOP_GRACE_S = 10.0


async def fetch_available(
    subscription: JetStreamContext.PullSubscription, max_messages: int, timeout_s: float
) -> list[Msg]:
    """Return up to `max_messages` messages: those available now, or the first to arrive within `timeout_s`.

    Returns an empty list when none arrived in time. nats-py 2.16 raises a
    bare `asyncio.TimeoutError` as well as its own `nats.errors.TimeoutError`
    (a subclass), so both mean "nothing yet".
    """
    try:
        return await subscription.fetch(max_messages, timeout=timeout_s)
    except asyncio.TimeoutError:
        return []


class PullLoop:
    """Binds to a durable consumer and alternates fetching and dispatching until stopped."""

    def __init__(self, spec: ConsumerSpec, fetch_timeout_s: float) -> None:
        self.spec = spec
        self._fetch_timeout_s = fetch_timeout_s
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._running = False
        # True while the loop waits for messages or for room, where a stop may cancel it.
        self._waiting = False

    async def start(self, jetstream: JetStreamContext) -> None:
        """Bind to the durable consumer (it must exist already) and start the loop."""
        self._subscription = await jetstream.pull_subscribe_bind(durable=self.spec.durable, stream=self.spec.stream)
        self._running = True
        self._task = asyncio.create_task(self._run(self._subscription), name=f"pull-{self.spec.durable}")
        log.info("pull_consumer_started", consumer=self.spec.durable)

    async def stop(self) -> None:
        """Stop fetching, let the messages being handled finish, then unbind."""
        self._running = False
        if self._task is not None:
            if self._waiting:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._finish_in_flight()
        await self._unsubscribe()
        log.info("pull_consumer_stopped", consumer=self.spec.durable)

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        while self._running:
            self._waiting = True
            try:
                messages = await self._next(subscription)
            except (ConnectionClosedError, ServiceUnavailableError) as error:
                # Messages fetched before the error stay unacked and are redelivered after the ack wait.
                log.warning(
                    "pull_fetch_failed", consumer=self.spec.durable, error=repr(error), retry_in_s=FETCH_ERROR_PAUSE_S
                )
                await asyncio.sleep(FETCH_ERROR_PAUSE_S)
                continue
            finally:
                self._waiting = False
            if messages:
                await self._dispatch(messages)

    async def _next(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        raise NotImplementedError

    async def _dispatch(self, messages: list[Msg]) -> None:
        raise NotImplementedError

    async def _finish_in_flight(self) -> None:
        """Wait for messages still being handled; the batch loop has none once its task ended."""

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(ConnectionClosedError):
                await self._subscription.unsubscribe()
            self._subscription = None


class ConcurrentPuller(PullLoop):
    """Handles each message in its own task, at most `max_in_flight` at a time.

    A handler that raises is logged as `message_handler_failed`; its message,
    if unsettled, is redelivered by JetStream after the consumer's ack wait.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        handler: MessageHandler,
        *,
        max_in_flight: int,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        super().__init__(spec, fetch_timeout_s)
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._stop_grace_s = stop_grace_s
        self._in_flight: set[asyncio.Task[None]] = set()
        self._room_freed = asyncio.Event()

    async def _next(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        while len(self._in_flight) >= self._max_in_flight:
            self._room_freed.clear()
            await self._room_freed.wait()
        return await fetch_available(subscription, self._max_in_flight - len(self._in_flight), self._fetch_timeout_s)

    async def _dispatch(self, messages: list[Msg]) -> None:
        for msg in messages:
            task = asyncio.create_task(self._handle(msg))
            self._in_flight.add(task)
            task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._room_freed.set()

    async def _handle(self, msg: Msg) -> None:
        await _handle_logged(self._handler, msg)

    async def _finish_in_flight(self) -> None:
        abandoned = await finish_in_flight(self._in_flight, self._stop_grace_s)
        if abandoned:
            log.warning("pull_consumer_abandoned_messages", consumer=self.spec.durable, messages=abandoned)


async def finish_in_flight(tasks: set[asyncio.Task[None]], stop_grace_s: float) -> int:
    """Give `tasks` `stop_grace_s` seconds to finish, cancel the rest and return how many were cancelled.

    A cancelled handler leaves its message unacked, so JetStream redelivers it.
    """
    if not tasks:
        return 0
    _done, pending = await asyncio.wait(set(tasks), timeout=stop_grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def _handle_logged(handler: MessageHandler, msg: Msg) -> None:
    try:
        await handler(msg)
    except Exception:
        log.exception("message_handler_failed", subject=msg.subject)


def one_at_a_time(handler: MessageHandler) -> BatchHandler:
    """Return a batch handler that awaits `handler` for each message of a batch in turn, in stream order.

    A handler that raises is logged as `message_handler_failed`, and the next
    message is handled as usual. The failed one, if unsettled, is redelivered
    after the consumer's ack wait.
    """

    async def handle_in_order(batch: list[Msg]) -> None:
        for msg in batch:
            await _handle_logged(handler, msg)

    return handle_in_order


class BatchPuller(PullLoop):
    """Hands each fetch of up to `batch_size` messages to one call of `handler`, in stream order.

    A stop lets the batch being handled finish. A handler that raises is
    logged as `pull_batch_handler_failed`; the batch's unsettled messages are
    redelivered after the consumer's ack wait.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch_size: int,
        fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(spec, fetch_timeout_s)
        self._handler = handler
        self._batch_size = batch_size

    async def _next(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        return await fetch_available(subscription, self._batch_size, self._fetch_timeout_s)

    async def _dispatch(self, messages: list[Msg]) -> None:
        try:
            await self._handler(messages)
        except Exception:
            log.exception("pull_batch_handler_failed", consumer=self.spec.durable, messages=len(messages))
