"""A private nats-server, API keys of two tenants and a running ingress (real uvicorn on a free port).

The nats-server is private so that the EVENTS stream and the durable
`request-state` consumer see only the messages these tests publish. Redis is
the session's server; the tests use their own request ids and idempotency keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import nats
import pytest
import redis.asyncio as redis
from nats.aio.client import Client as NatsClient

from shared.api_keys import add_api_key
from shared.settings import Settings

from services.ingress.app import create_app
from tests.ingress.support import HOST, ApiKeys, Outage, UvicornThread, make_settings, start_private_nats, wait_for_health


@pytest.fixture(scope="package")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> ApiKeys:
    path = tmp_path_factory.mktemp("ingress-keys") / "api-keys.json"
    return ApiKeys(
        path,
        acme=add_api_key(path, "acme"),
        globex=add_api_key(path, "globex"),
        reporting=add_api_key(path, "reporting"),
    )


@pytest.fixture(scope="package")
def ingress_nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_private_nats(tmp_path_factory.mktemp("ingress-nats"))
    yield f"nats://{HOST}:{server.port}"
    server.stop()


@pytest.fixture(scope="package")
def settings(ingress_nats_url: str, redis_url: str, api_keys: ApiKeys, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(ingress_nats_url, redis_url, api_keys, tmp_path_factory.mktemp("ingress-data"))


@pytest.fixture(scope="package")
def ingress(settings: Settings) -> Iterator[str]:
    """Return the base URL of a running ingress whose projector consumes the private server's events."""
    server = UvicornThread(create_app(settings), settings.http_port)
    server.start()
    yield server.base_url
    server.stop()


@pytest.fixture
async def http(ingress: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingress, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="package")
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="package")
async def nats_client(ingress_nats_url: str, ingress: str) -> AsyncIterator[NatsClient]:
    """A NATS client on the private server, connected after the ingress declared the topology."""
    client = await nats.connect(ingress_nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="package")
def outage(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    """A second ingress, with a tenant of its own, whose nats-server is stopped for the tests."""
    directory = tmp_path_factory.mktemp("ingress-outage")
    tenant = f"outage-{uuid.uuid4().hex[:8]}"
    keys_path = directory / "api-keys.json"
    key = add_api_key(keys_path, tenant)
    nats = start_private_nats(directory / "bus")
    settings = make_settings(f"nats://{HOST}:{nats.port}", redis_url, ApiKeys(keys_path, key, key, key), directory / "data")
    server = UvicornThread(create_app(settings), settings.http_port)
    server.start()
    state = Outage(server.base_url, tenant, key, directory / "bus", nats)
    state.stop_nats()
    yield state
    # Bring NATS back and wait for the reconnect, so the ingress drains its connection and stops cleanly.
    state.start_nats()
    wait_for_health(server.base_url)
    server.stop()
    state.nats.stop()


@pytest.fixture
async def outage_http(outage: Outage) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=outage.base_url, timeout=10.0) as client:
        yield client
