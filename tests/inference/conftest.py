"""A private nats-server, the real model server, and helpers to run the inference service and read what it publishes.

The nats-server is private because the CHUNKS stream is a work queue: only
its durable `moderation` consumer may read it, and these tests read chunks
through that consumer.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from shared.bus import ensure_jetstream
from shared.embedded.infrastructure import free_port
from shared.settings import REPO_ROOT
from tests.inference.scripted_tgi import ScriptedServer
from tests.support.jetstream import jetstream_client, private_nats
from tests.support.lora import train_adapters
from tests.support.services import spawn_service

HOST = "127.0.0.1"
MODEL_SERVER_PACKAGE = REPO_ROOT / "services" / "model_server" / "__main__.py"
# Loading torch, transformers and the model takes 5 to 15 s on two cores.
MODEL_SERVER_START_TIMEOUT_S = 120.0


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
    if not MODEL_SERVER_PACKAGE.exists():
        pytest.skip(f"the model server is not written yet: {MODEL_SERVER_PACKAGE} does not exist")
    port = free_port()
    log_path = tmp_path_factory.mktemp(name) / f"{name}.log"
    env = {**os.environ, "SLUICE_MODEL_SERVER_PORT": str(port), "SLUICE_HOST": HOST, "HF_HUB_OFFLINE": "1", **extra_env}
    process = spawn_service("services.model_server", env, log_path)
    url = f"http://{HOST}:{port}"
    try:
        _wait_for_health(url, process, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_health(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + MODEL_SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the model server did not answer {url}/health within {MODEL_SERVER_START_TIMEOUT_S} s; see {log_path}")


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
