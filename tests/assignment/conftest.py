"""A private nats-server and a running assignment service, on the session's redis-server, for this package's tests.

The server is private so that the durable `assignment` consumer receives only the
messages these tests publish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from faststream import TestApp
from nats.js import JetStreamContext

from services.assignment.app import make_app
from shared.embedded.infrastructure import free_port
from shared.settings import Settings
from tests.support.jetstream import jetstream_client, private_nats


@pytest.fixture(scope="package")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_nats(tmp_path_factory, "assignment-nats") as url:
        yield url


@pytest.fixture(scope="package")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="package")
async def assignment_service(bus_url: str, redis_url: str, metrics_port: int) -> AsyncIterator[None]:
    async with TestApp(make_app(Settings(nats_url=bus_url, redis_url=redis_url, assignment_metrics_port=metrics_port))):
        yield


@pytest.fixture(scope="package")
async def jetstream(bus_url: str, assignment_service: None) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(bus_url) as jetstream:
        yield jetstream
