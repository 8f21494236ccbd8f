"""A batch fetch loop on a durable JetStream pull consumer, written against the JetStream pull API.

Each batch is one pull request: a publish to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` whose body requests up to
`batch_size` messages and `batch_max_bytes` bytes, waiting at most
`fetch_timeout_s`. The server delivers the messages to the request's reply
subject, then ends a request that it did not fill with a status message
(408 when it expired, 409 when the byte limit was reached).

nats-py 2.16's `PullSubscription.fetch` is not used: it waits for each
message with a new task and `asyncio.wait_for`, which cost about 30 µs of CPU
per message on a two-core machine, more than everything else the service
does with it. Here one subscription callback appends each message to the
batch. FastStream 0.7.8's batch pull subscriber is not used either, because
it discards the messages gathered so far when a fetch times out half-way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DEFAULT_PREFIX, StatusCode

from shared.consuming import BUS_ERRORS
from shared.subjects import ConsumerSpec

log = structlog.get_logger(__name__)

BatchHandler = Callable[[list[Msg]], Awaitable[None]]

# After the connection or JetStream failed, wait this long before fetching
# again instead of spinning; nats-py reconnects on its own meanwhile.
FETCH_ERROR_PAUSE_S = 1.0
# The server ends a pull request with a status at its expiry. When that
# status is lost (a reconnect), the loop stops waiting this much later.
STATUS_GRACE_S = 1.0

# JetStream's ack subjects, as nats-py 2.16's `Msg.Metadata` reads them:
# `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`,
# or with `<domain>.<account hash>` after `$JS.ACK` and a random token at the
# end (nats-py accepts 11 tokens or more).
_ACK_TOKENS = 9
_ACK_TOKENS_WITH_DOMAIN = 11

# The server counts a message's subject into a request's byte limit, besides
# its headers and body that max_payload bounds. A subject fits in a protocol
# line, which nats-server caps at 4 KiB unless `max_control_line` is raised.
SUBJECT_HEADROOM_BYTES = 4096


def delivery_count(message: Msg) -> int:
    """Return how many times JetStream has delivered `message`, 1 the first time.

    Reads one token of the ack subject, where `Msg.metadata` would parse
    them all into objects for about 3 µs a message. Raises `ValueError` for
    a message that did not come from a JetStream consumer.
    """
    tokens = (message.reply or "").split(".")
    if tokens[:2] == ["$JS", "ACK"]:
        if len(tokens) == _ACK_TOKENS:
            return int(tokens[4])
        if len(tokens) >= _ACK_TOKENS_WITH_DOMAIN:
            return int(tokens[6])
    raise ValueError(f"message on {message.subject} has no JetStream ack subject; its reply is {message.reply!r}")


class BatchPuller:
    """Fetches batches of up to `batch_size` messages and `batch_max_bytes` bytes and hands each to `handler`.

    A batch is handed over when it is full or `fetch_timeout_s` seconds after
    its fetch began, whichever comes first. The next batch is fetched while
    the handler works on the previous one, so up to two batches are unacked
    at a time, but a batch is handed over only after the previous handler
    call returned. `batch_max_bytes` must exceed the server's max_payload by
    `SUBJECT_HEADROOM_BYTES`, or the largest messages could never be
    fetched; `start` raises `ValueError` otherwise.

    The handler settles every message itself (ack, nak or term). A handler
    that raises is logged, and its unsettled messages are redelivered by
    JetStream after the consumer's ack wait.
    """

    def __init__(
        self,
        spec: ConsumerSpec,
        handler: BatchHandler,
        *,
        batch_size: int,
        batch_max_bytes: int,
        fetch_timeout_s: float,
    ) -> None:
        self._spec = spec
        self._handler = handler
        self._batch_size = batch_size
        self._batch_max_bytes = batch_max_bytes
        self._fetch_timeout_s = fetch_timeout_s
        self._next_subject = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._request_count = 0
        self._reply_subject = ""
        self._batch: list[Msg] = []
        self._request_ended = asyncio.Event()
        self._ending_status: Msg | None = None
        self._task: asyncio.Task[None] | None = None
        self._handling: asyncio.Task[None] | None = None
        self._running = False
        self._fetching = False

    async def start(self, connection: NatsClient) -> None:
        """Subscribe to the reply subjects and start the loop. The durable consumer must exist already."""
        self._check_max_bytes(connection.max_payload)
        self._inbox = connection.new_inbox()
        # Twice the batch: a request's messages can still arrive after the loop gave up on it.
        self._subscription = await connection.subscribe(
            f"{self._inbox}.*",
            cb=self._receive,
            pending_msgs_limit=2 * self._batch_size,
            pending_bytes_limit=2 * self._batch_max_bytes,
        )
        self._running = True
        self._task = asyncio.create_task(self._run(connection), name=f"pull-{self._spec.durable}")
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
        await self._finish_handling()
        await self._unsubscribe()
        log.info("pull_consumer_stopped", consumer=self._spec.durable)

    def _check_max_bytes(self, max_payload: int) -> None:
        required = max_payload + SUBJECT_HEADROOM_BYTES
        if self._batch_max_bytes < required:
            raise ValueError(
                f"batch_max_bytes is {self._batch_max_bytes}, but the NATS server accepts messages of up to "
                f"{max_payload} bytes and a larger one than the limit could never be fetched; "
                f"set SLUICE_TELEMETRY_BATCH_MAX_BYTES to at least {required}"
            )

    async def _run(self, connection: NatsClient) -> None:
        # The handler's ClickHouse insert runs in a thread, so the next
        # fetch goes on while it waits.
        while self._running:
            batch = await self._fetch_batch(connection)
            await self._finish_handling()
            if batch:
                self._handling = asyncio.create_task(self._handle(batch), name=f"handle-{self._spec.durable}")
        await self._finish_handling()

    async def _finish_handling(self) -> None:
        if self._handling is not None:
            await self._handling
            self._handling = None

    async def _fetch_batch(self, connection: NatsClient) -> list[Msg]:
        self._fetching = True
        try:
            await self._request(connection)
            await self._wait_for_end()
        except BUS_ERRORS as error:
            log.warning(
                "pull_fetch_failed", consumer=self._spec.durable, error=repr(error), retry_in_s=FETCH_ERROR_PAUSE_S
            )
            await asyncio.sleep(FETCH_ERROR_PAUSE_S)
        finally:
            self._fetching = False
        # Messages fetched before an error are handed over too, and any that
        # arrive later join the next batch.
        batch, self._batch = self._batch, []
        await self._pause_if_failed(batch)
        return batch

    async def _request(self, connection: NatsClient) -> None:
        self._request_count += 1
        self._reply_subject = f"{self._inbox}.{self._request_count}"
        self._request_ended.clear()
        self._ending_status = None
        if len(self._batch) >= self._batch_size:
            self._request_ended.set()
            return
        body = {
            "batch": self._batch_size - len(self._batch),
            "max_bytes": self._batch_max_bytes,
            # JetStream reads the expiry in nanoseconds.
            "expires": int(self._fetch_timeout_s * 1e9),
        }
        await connection.publish(self._next_subject, json.dumps(body).encode(), reply=self._reply_subject)

    async def _wait_for_end(self) -> None:
        try:
            await asyncio.wait_for(self._request_ended.wait(), self._fetch_timeout_s + STATUS_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("pull_request_unanswered", consumer=self._spec.durable, messages=len(self._batch))

    async def _receive(self, message: Msg) -> None:
        # JetStream's status messages have no body; a message without a body
        # and without a status is an event, and the handler rejects it.
        if not message.data and JetStreamContext.is_status_msg(message) is not None:
            self._end_request(message)
            return
        self._batch.append(message)
        if len(self._batch) >= self._batch_size:
            self._request_ended.set()

    def _end_request(self, status: Msg) -> None:
        # A status of an earlier request, which the loop gave up on, changes nothing.
        if status.subject == self._reply_subject:
            self._ending_status = status
            self._request_ended.set()

    async def _pause_if_failed(self, batch: list[Msg]) -> None:
        # A request that ended with nothing delivered before it expired (503
        # when the consumer does not exist, 409 when it was deleted) would
        # end the same way if repeated at once.
        status = self._ending_status
        if batch or status is None or status.headers is None:
            return
        code = JetStreamContext.is_status_msg(status)
        if code == StatusCode.REQUEST_TIMEOUT.value:
            return
        description = status.headers.get("Description", "")
        log.warning(
            "pull_request_failed",
            consumer=self._spec.durable,
            status=code,
            description=description.strip(),
            retry_in_s=FETCH_ERROR_PAUSE_S,
        )
        await asyncio.sleep(FETCH_ERROR_PAUSE_S)

    async def _handle(self, batch: list[Msg]) -> None:
        try:
            await self._handler(batch)
        except Exception:
            log.exception("pull_batch_handler_failed", consumer=self._spec.durable, messages=len(batch))

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            try:
                await self._subscription.unsubscribe()
            except BUS_ERRORS:
                pass
            self._subscription = None
