"""A private nats-server, the real model server, and helpers to run the inference service and read what it publishes.

The nats-server is private because the CHUNKS stream is a work queue: only
its durable `moderation` consumer may read it, and these tests read chunks
through that consumer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from nats.js import JetStreamContext

from shared.bus import ensure_jetstream
from tests.inference.model_servers import running_model_server
from tests.inference.scripted_tgi import ScriptedServer
from tests.support.jetstream import jetstream_client, private_nats
from tests.support.lora import train_adapters


@pytest.fixture(scope="package")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_nats(tmp_path_factory, "inference-nats") as url:
        yield url


@pytest.fixture(scope="package")
def model_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `python -m services.model_server` on a free port and wait for `GET /health`."""
    with _model_server(tmp_path_factory, "model-server", {}) as url:
        yield url


@pytest.fixture(scope="package")
def adapter_model_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A model server that also serves the adapters of `tests.support.lora`, trained for this package."""
    adapters_dir = train_adapters(tmp_path_factory.mktemp("adapters"))
    with _model_server(tmp_path_factory, "adapter-model-server", {"SLUICE_MODEL_ADAPTERS_DIR": str(adapters_dir)}) as url:
        yield url


@contextmanager
def _model_server(tmp_path_factory: pytest.TempPathFactory, name: str, extra_env: dict[str, str]) -> Iterator[str]:
    with running_model_server(tmp_path_factory.mktemp(name), name, extra_env) as server:
        yield server.url


@pytest.fixture(scope="package")
async def jetstream(bus_url: str) -> AsyncIterator[JetStreamContext]:
    async with jetstream_client(bus_url) as js:
        # Tests publish before the service starts, so the topology must exist first.
        await ensure_jetstream(js)
        yield js


@pytest.fixture(scope="package")
async def scripted_tgi() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def scripted(scripted_tgi: ScriptedServer) -> ScriptedServer:
    """The scripted server, reset to stream a short successful completion."""
    scripted_tgi.reset()
    return scripted_tgi
