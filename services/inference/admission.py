"""Fair admission to an endpoint pool: per-tenant queues in JetStream, served in weighted turn.

`request.assigned` is published on `sluice.events.request.assigned.<backend>.<tenant>`,
and each pool and tenant has a durable pull consumer on that subject
(`inference@<backend>@<tenant>`), created the first time this service finds
the tenant's work in the pool. Waiting requests stay in JetStream, not in
this process. An `AdmissionLoop` has the pool's `max_in_flight` slots.
Whenever a slot is free it picks the next tenant with waiting work by
`WeightedTurn`, fetches one message from that tenant's consumer and hands it
to the handler in its own task. The slot frees when the handler returns.
Fetching one message at a time from one consumer per tenant keeps each
tenant's requests in arrival order.

The loop finds which tenants have waiting work without polling every consumer:
- a doorbell, a headers-only ordered consumer on the pool's subjects that
  starts at new messages, marks a tenant as soon as a request is stored;
- each fetched message carries its consumer's `num_pending`, the count of
  that tenant's requests still waiting;
- a rescan every `rescan_interval_s` lists the pool's tenant subjects in the
  stream (`stream_info` with a subject filter) and asks each idle tenant's
  consumer for pending and unacked messages. It finds work stored while the
  service was down and messages that JetStream redelivers after a nak or an
  expired ack wait, which ring no doorbell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from redis.exceptions import RedisError

from services.inference.weighted_turn import WeightedTurn
from shared.bus import ensure_consumer
from shared.pulling import (
    DEFAULT_STOP_GRACE_S,
    FETCH_ERROR_PAUSE_S,
    MessageHandler,
    fetch_available,
    finish_in_flight,
)
from shared.queue_positions import QueuePositions
from shared.subjects import EVENTS_STREAM, SubjectTokenError, pool_queue_consumer, pool_subject_filter

log = structlog.get_logger(__name__)

# A fetch follows a doorbell or a count of pending messages, so the message
# is normally there at once. The wait runs out only when another replica took
# the message first, or when a rescan counted a message whose redelivery
# delay has not passed yet. The slot stays unused for that long.
DEFAULT_ADMISSION_FETCH_TIMEOUT_S = 0.5
# A slot frees when its handler has acked, but nats-server applies acks
# asynchronously, so a consumer capped at exactly the slot count would still
# count the finished message and leave the next fetch waiting. Twice the slots
# absorbs that lag, and the slots themselves still bound what runs. In the
# pipeline benchmark this took 100 req/s from 23 to 50 req/s served.
ACK_PENDING_PER_SLOT = 2
# Redelivered messages ring no doorbell, so they wait up to this long after
# JetStream makes them available again (2 s after a nak, 30 s after an
# expired ack wait). Each rescan costs one JetStream request per pool plus one
# per idle tenant.
DEFAULT_RESCAN_INTERVAL_S = 5.0


@dataclass
class _TenantQueue:
    """One tenant's consumer in the pool and the loop's record of its waiting work."""

    tenant: str
    subscription: JetStreamContext.PullSubscription
    # True when the tenant may have a message to fetch. A fetch that finds none clears it.
    has_work: bool = True
    # Doorbells heard for this tenant, so a fetch can tell whether one rang while it ran.
    doorbells: int = 0
    in_flight: int = 0
    # The tenant's requests waiting in the consumer: the last fetched message's
    # `num_pending` or the rescan's count, plus the doorbells heard since.
    waiting: int = 0


class AdmissionLoop:
    """Admits one endpoint pool's requests, at most `max_in_flight` at a time, fairly across tenants.

    It is a `shared.service.Puller`, so `build_app` starts and stops it.
    A stop works as in `shared.pulling`: the loop stops fetching, requests
    being handled get `stop_grace_s` to finish, and any still running are
    abandoned unacked, so JetStream redelivers them after the ack wait.
    """

    def __init__(
        self,
        backend: str,
        max_in_flight: int,
        handler: MessageHandler,
        positions: QueuePositions,
        weights: Mapping[str, int],
        *,
        fetch_timeout_s: float = DEFAULT_ADMISSION_FETCH_TIMEOUT_S,
        rescan_interval_s: float = DEFAULT_RESCAN_INTERVAL_S,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight of backend {backend!r} must be at least 1, got {max_in_flight}")
        self.backend = backend
        self._subject_filter = pool_subject_filter(backend)
        self._max_in_flight = max_in_flight
        self._handler = handler
        self._positions = positions
        self._turn = WeightedTurn(weights)
        self._fetch_timeout_s = fetch_timeout_s
        self._rescan_interval_s = rescan_interval_s
        self._stop_grace_s = stop_grace_s

        self._slots = asyncio.Semaphore(max_in_flight)
        self._queues: dict[str, _TenantQueue] = {}
        # Tenants seen but not yet bound to their consumer, in the order seen (a dict as an ordered set).
        self._unbound: dict[str, None] = {}
        self._skipped_tenants: set[str] = set()
        self._work_arrived = asyncio.Event()
        self._next_rescan_at = 0.0
        self._jetstream: JetStreamContext | None = None
        self._doorbell: JetStreamContext.PushSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def waiting_requests(self) -> int:
        """Return the pool's requests waiting in JetStream for a slot, summed over tenants, as last counted."""
        return sum(queue.waiting for queue in self._queues.values())

    async def start(self, jetstream: JetStreamContext) -> None:
        """Subscribe the doorbell, find the tenants that already have work, and start admitting."""
        self._jetstream = jetstream
        self._doorbell = await jetstream.subscribe(
            self._subject_filter,
            stream=EVENTS_STREAM,
            cb=self._on_doorbell,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
        )
        await self._rescan()
        self._task = asyncio.create_task(self._run(), name=f"admission-{self.backend}")
        log.info("admission_started", backend=self.backend, max_in_flight=self._max_in_flight)

    async def stop(self) -> None:
        """Stop admitting, let the requests being handled finish, then unsubscribe."""
        if self._task is not None:
            # The loop can only be cancelled while it waits (for a slot, work, a fetch or a rescan). A message
            # that arrives for a cancelled fetch stays unacked and is redelivered, so nothing is lost.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._finish_in_flight()
        await self._unsubscribe()
        log.info("admission_stopped", backend=self.backend)

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            admitted = False
            try:
                admitted = await self._admit_next()
            except Exception:
                # Every NATS error is handled below, so this is a bug. The loop goes on rather than stop admitting.
                log.exception("admission_failed", backend=self.backend, retry_in_s=FETCH_ERROR_PAUSE_S)
                await asyncio.sleep(FETCH_ERROR_PAUSE_S)
            finally:
                if not admitted:
                    self._slots.release()

    async def _admit_next(self) -> bool:
        """Fetch one message from the next tenant in turn and start handling it. Return False when none came."""
        queue = await self._next_queue()
        msg = await self._fetch_one(queue)
        if msg is None:
            return False
        queue.in_flight += 1
        task = asyncio.create_task(self._handle(queue, msg))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return True

    async def _next_queue(self) -> _TenantQueue:
        """Wait until some tenant may have work, then return the queue whose turn it is."""
        while True:
            if time.monotonic() >= self._next_rescan_at:
                await self._rescan()
            await self._bind_unbound()
            waiting = [tenant for tenant, queue in self._queues.items() if queue.has_work]
            if waiting:
                return self._queues[self._turn.choose(waiting)]
            self._work_arrived.clear()
            wait_s = max(self._next_rescan_at - time.monotonic(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work_arrived.wait(), timeout=wait_s)

    async def _fetch_one(self, queue: _TenantQueue) -> Msg | None:
        doorbells = queue.doorbells
        try:
            messages = await fetch_available(queue.subscription, 1, self._fetch_timeout_s)
        except nats.errors.Error as error:
            # A message fetched before the error stays unacked and is redelivered after the ack wait.
            log.warning(
                "admission_fetch_failed",
                backend=self.backend,
                tenant=queue.tenant,
                error=repr(error),
                retry_in_s=FETCH_ERROR_PAUSE_S,
            )
            queue.has_work = False
            await asyncio.sleep(FETCH_ERROR_PAUSE_S)
            return None
        msg = messages[0] if messages else None
        queue.waiting = msg.metadata.num_pending if msg is not None else 0
        more_pending = queue.waiting > 0
        queue.has_work = more_pending or queue.doorbells != doorbells
        return msg

    async def _handle(self, queue: _TenantQueue, msg: Msg) -> None:
        try:
            await self._record_admission(queue.tenant, msg)
            await self._handler(msg)
        except Exception:
            log.exception("message_handler_failed", subject=msg.subject)
        finally:
            queue.in_flight -= 1
            self._slots.release()

    async def _record_admission(self, tenant: str, msg: Msg) -> None:
        """Log the admission and take the request out of its queue. A Redis failure is logged and does not stop the request."""
        request_id = _request_id_of(msg.data)
        log.info(
            "request_admitted",
            backend=self.backend,
            tenant=tenant,
            request_id=request_id,
            stream_sequence=msg.metadata.sequence.stream,
            tenant_pending=msg.metadata.num_pending,
        )
        if request_id is None:
            # Malformed: the handler terminates it.
            return
        try:
            await self._positions.mark_admitted(self.backend, tenant, request_id)
        except RedisError as error:
            # The projector admits it again at its first token. Until then its queue position is stale.
            log.warning("queue_position_update_failed", backend=self.backend, request_id=request_id, error=repr(error))

    async def _on_doorbell(self, msg: Msg) -> None:
        tenant = msg.subject.rsplit(".", 1)[-1]
        queue = self._queues.get(tenant)
        if queue is None:
            self._unbound.setdefault(tenant, None)
        else:
            queue.doorbells += 1
            queue.waiting += 1
            queue.has_work = True
        self._work_arrived.set()

    async def _rescan(self) -> None:
        """List the pool's tenants in the stream and check every idle tenant's consumer for work."""
        self._next_rescan_at = time.monotonic() + self._rescan_interval_s
        try:
            info = await self._started_jetstream().stream_info(EVENTS_STREAM, subjects_filter=self._subject_filter)
        except nats.errors.Error as error:
            log.warning("admission_rescan_failed", backend=self.backend, error=repr(error))
            return
        for subject in info.state.subjects or {}:
            tenant = subject.rsplit(".", 1)[-1]
            if tenant not in self._queues:
                self._unbound.setdefault(tenant, None)
        await self._bind_unbound()
        idle = [queue for queue in self._queues.values() if not queue.has_work]
        await asyncio.gather(*(self._check_for_work(queue) for queue in idle))

    async def _check_for_work(self, queue: _TenantQueue) -> None:
        try:
            consumer = await queue.subscription.consumer_info()
        except nats.errors.Error as error:
            log.warning("admission_rescan_failed", backend=self.backend, tenant=queue.tenant, error=repr(error))
            return
        # Unacked messages beyond this replica's own are waiting for redelivery or held by another replica.
        queue.has_work = consumer.num_pending > 0 or consumer.num_ack_pending > queue.in_flight
        queue.waiting = consumer.num_pending

    async def _bind_unbound(self) -> None:
        """Create and bind the consumer of every tenant seen since the last call."""
        jetstream = self._started_jetstream()
        for tenant in list(self._unbound):
            try:
                spec = pool_queue_consumer(self.backend, tenant, ACK_PENDING_PER_SLOT * self._max_in_flight)
            except SubjectTokenError as error:
                # Only a publisher other than Sluice's can put such a subject in the stream.
                del self._unbound[tenant]
                self._skip_once(tenant, error)
                continue
            try:
                await ensure_consumer(jetstream, spec)
                subscription = await jetstream.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            except nats.errors.Error as error:
                log.warning("admission_bind_failed", backend=self.backend, tenant=tenant, error=repr(error))
                continue
            del self._unbound[tenant]
            self._queues[tenant] = _TenantQueue(tenant, subscription)
            log.info("tenant_queue_bound", backend=self.backend, tenant=tenant, consumer=spec.durable)

    def _started_jetstream(self) -> JetStreamContext:
        if self._jetstream is None:
            raise RuntimeError(f"the admission loop of backend {self.backend!r} is used before start()")
        return self._jetstream

    def _skip_once(self, tenant: str, error: SubjectTokenError) -> None:
        if tenant not in self._skipped_tenants:
            self._skipped_tenants.add(tenant)
            log.warning("tenant_queue_skipped", backend=self.backend, error=str(error))

    async def _finish_in_flight(self) -> None:
        abandoned = await finish_in_flight(self._in_flight, self._stop_grace_s)
        if abandoned:
            log.warning("admission_abandoned_messages", backend=self.backend, messages=abandoned)

    async def _unsubscribe(self) -> None:
        subscriptions = [self._doorbell, *(queue.subscription for queue in self._queues.values())]
        for subscription in subscriptions:
            if subscription is not None:
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()
        self._doorbell = None
        self._queues.clear()


def _request_id_of(data: bytes) -> str | None:
    """Return the envelope's request id without validating the rest, or None when the message is malformed."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    request_id = document.get("request_id") if isinstance(document, dict) else None
    return request_id if isinstance(request_id, str) else None
