"""The entry point shared by the bus services: logging, JetStream topology, start and stop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker
from nats.js import JetStreamContext

from shared.bus import ensure_jetstream
from shared.logs import configure_logging
from shared.settings import Settings

log = structlog.get_logger(__name__)

Hook = Callable[[], Awaitable[None]]


class Puller(Protocol):
    """An object that `build_app` starts and stops with the connection, such as a `shared.pulling.PullLoop` or a configuration watch."""

    async def start(self, jetstream: JetStreamContext) -> None: ...

    async def stop(self) -> None: ...


def build_app(
    service: str,
    broker: NatsBroker,
    settings: Settings,
    *,
    pullers: Sequence[Puller] = (),
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
) -> FastStream:
    """Wrap `broker` in a FastStream app that declares the JetStream topology before any puller starts.

    `on_startup` runs after the topology exists and before messages flow (load
    models, open clients there). The `pullers` start after it, in order. On
    shutdown they stop first, in the same order, while the connection can
    still ack. `on_shutdown` runs after the broker stopped.
    """
    app = FastStream(broker, logger=None)

    @app.on_startup
    async def declare_topology() -> None:
        connection = await broker.connect()
        await ensure_jetstream(connection.jetstream())
        if on_startup is not None:
            await on_startup()
        log.info("service_starting", nats_url=settings.resolved_nats_url)

    @app.after_startup
    async def start_pulling() -> None:
        jetstream = broker.connection.jetstream()
        for puller in pullers:
            await puller.start(jetstream)
        log.info("service_started")

    @app.on_shutdown
    async def stop_pulling() -> None:
        # In reverse order, so a puller that another one relies on stops last.
        for puller in reversed(pullers):
            await puller.stop()

    @app.after_shutdown
    async def report_stopped() -> None:
        if on_shutdown is not None:
            await on_shutdown()
        log.info("service_stopped")

    return app


def run(service: str, settings: Settings, make_app: Callable[[Settings], FastStream]) -> None:
    """Configure logging and run the app until SIGINT or SIGTERM."""
    configure_logging(service, settings.log_level)
    structlog.contextvars.bind_contextvars(service=service)
    asyncio.run(make_app(settings).run())
