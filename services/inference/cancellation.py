"""Stopping a running generation when its request is cancelled.

`RunningRequests` tracks the requests this replica is generating and hands
each a `CancelSignal`. `CancelListener` subscribes to every cancel notice on
core NATS (shared/cancellation.py) and fires the matching signal; a notice
for a request generated elsewhere is ignored here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from shared.cancellation import CancelNotice
from shared.subjects import CANCEL_SUBJECT_PREFIX

log = structlog.get_logger(__name__)


class CancelSignal:
    """A one-shot signal, with the reason, that fires when its request is cancelled."""

    def __init__(self) -> None:
        self._fired = asyncio.Event()
        self.reason: str | None = None

    def fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._fired.set()

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    async def wait(self) -> str:
        """Return the reason once the signal fires."""
        await self._fired.wait()
        return self.reason or ""


class RunningRequests:
    """The requests this replica is generating now, by tenant and request id."""

    def __init__(self) -> None:
        self._signals: dict[tuple[str, str], CancelSignal] = {}

    @contextlib.contextmanager
    def register(self, tenant: str, request_id: str) -> Iterator[CancelSignal]:
        """Yield the request's signal for as long as the block runs."""
        signal = CancelSignal()
        self._signals[(tenant, request_id)] = signal
        try:
            yield signal
        finally:
            if self._signals.get((tenant, request_id)) is signal:
                del self._signals[(tenant, request_id)]

    def cancel(self, tenant: str, request_id: str, reason: str) -> bool:
        """Fire the request's signal. Return False when this replica is not generating it."""
        signal = self._signals.get((tenant, request_id))
        if signal is None:
            return False
        signal.fire(reason)
        return True


class CancelListener:
    """A subscription to every cancel notice while the service runs, shaped like a puller so `build_app` starts it."""

    def __init__(self, connection: Callable[[], NatsClient], running: RunningRequests) -> None:
        self._connection = connection
        self._running = running
        self._subscription: Subscription | None = None

    async def start(self, _jetstream: JetStreamContext) -> None:
        self._subscription = await self._connection().subscribe(f"{CANCEL_SUBJECT_PREFIX}.>", cb=self._on_notice)

    async def stop(self) -> None:
        if self._subscription is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.unsubscribe()
        self._subscription = None

    async def _on_notice(self, msg: Msg) -> None:
        try:
            notice = CancelNotice.decode(msg.data)
        except ValueError as error:
            log.warning("cancel_notice_invalid", subject=msg.subject, error=str(error))
            return
        if self._running.cancel(notice.tenant, notice.request_id, notice.reason):
            log.info("generation_cancel_requested", request_id=notice.request_id, reason=notice.reason)
