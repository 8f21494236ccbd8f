"""A private nats-server and a running assignment service for this package's tests.

The server is private so that the durable `assignment` consumer receives only the
messages these tests publish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from faststream import TestApp
from nats.js import JetStreamContext

from services.assignment.app import make_app
from shared.embedded.infrastructure import free_port, start_nats
from shared.settings import Settings

HOST = "127.0.0.1"


@pytest.fixture(scope="package")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("assignment-nats")
    server = start_nats(HOST, free_port(), directory, directory / "logs")
    yield f"nats://{HOST}:{server.port}"
    server.stop()


@pytest.fixture(scope="package")
async def assignment_service(bus_url: str) -> AsyncIterator[None]:
    async with TestApp(make_app(Settings(nats_url=bus_url))):
        yield


@pytest.fixture(scope="package")
async def jetstream(bus_url: str, assignment_service: None) -> AsyncIterator[JetStreamContext]:
    client = await nats.connect(bus_url)
    yield client.jetstream()
    await client.close()
