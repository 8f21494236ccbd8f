"""Helpers for the ingress tests: a uvicorn server on a thread, reading the EVENTS stream, polling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import nats
import uvicorn
from fastapi import FastAPI
from nats.aio.client import Client as NatsClient
from nats.js.api import DeliverPolicy

from shared.embedded.infrastructure import ManagedProcess, free_port, start_nats
from shared.events import Envelope, EventType, decode_envelope
from shared.settings import Settings
from shared.subjects import EVENTS_STREAM, event_subject

HOST = "127.0.0.1"
# Starting the app connects to NATS and Redis and declares the topology; the
# limit only stops a broken start from hanging the test session.
SERVER_START_TIMEOUT_S = 20.0
SERVER_STOP_TIMEOUT_S = 15.0
# Reading the EVENTS stream stops after this long without a message.
STREAM_IDLE_TIMEOUT_S = 0.5
# Polling for an asynchronous effect (a projected event) gives up after this long.
WAIT_TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class ApiKeys:
    path: Path
    # Keys of tenant "acme" and tenant "globex", so tenant isolation can be checked.
    acme: str
    globex: str
    # Key of tenant "reporting", whose traffic only the summary report test creates.
    reporting: str


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def start_private_nats(directory: Path, port: int | None = None) -> ManagedProcess:
    return start_nats(HOST, port or free_port(), directory, directory / "logs")


def make_settings(nats_url: str, redis_url: str, api_keys: ApiKeys, data_dir: Path) -> Settings:
    return Settings(
        host=HOST,
        http_port=free_port(),
        nats_url=nats_url,
        redis_url=redis_url,
        api_keys_file=api_keys.path,
        data_dir=data_dir,
    )


class UvicornThread:
    """Runs an ASGI app in a real uvicorn server on its own thread and event loop."""

    def __init__(self, app: FastAPI, port: int) -> None:
        config = uvicorn.Config(app, host=HOST, port=port, log_config=None, access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"ingress-{port}", daemon=True)
        self.base_url = f"http://{HOST}:{port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"ingress did not start on {self.base_url}; see the captured log")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(SERVER_STOP_TIMEOUT_S)


def wait_for_health(base_url: str, timeout_s: float = WAIT_TIMEOUT_S) -> bool:
    """Poll `/healthz` until it responds 200; return False when it did not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


async def read_events(client: NatsClient, event_type: EventType) -> list[Envelope]:
    """Return every envelope of `event_type` in the EVENTS stream, oldest first."""
    js = client.jetstream()
    subscription = await js.subscribe(
        event_subject(event_type), stream=EVENTS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    envelopes: list[Envelope] = []
    try:
        while True:
            message = await subscription.next_msg(timeout=STREAM_IDLE_TIMEOUT_S)
            envelopes.append(decode_envelope(message.data))
    except nats.errors.TimeoutError:
        pass
    finally:
        await subscription.unsubscribe()
    return envelopes


async def wait_until(condition: Callable[[], Awaitable[T]], timeout_s: float = WAIT_TIMEOUT_S) -> T:
    """Poll `condition` until it returns a truthy value; return that value, or the last one after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


@dataclass
class Outage:
    """An ingress whose own nats-server can be stopped and started again on the same port."""

    base_url: str
    tenant: str
    key: str
    nats_dir: Path
    nats: ManagedProcess

    def stop_nats(self) -> None:
        self.nats.stop()

    def start_nats(self) -> None:
        self.nats = start_private_nats(self.nats_dir, self.nats.port)
