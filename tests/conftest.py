"""Session fixtures that start real infrastructure on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test may reach a model hub; without this each hub lookup stalls before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from shared.embedded.infrastructure import ManagedProcess, free_port, start_nats, start_redis  # noqa: E402

HOST = "127.0.0.1"


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def nats_server(infra_dir: Path) -> Iterator[ManagedProcess]:
    server = start_nats(HOST, free_port(), infra_dir, infra_dir / "logs")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: ManagedProcess) -> str:
    return f"nats://{HOST}:{nats_server.port}"


@pytest.fixture(scope="session")
def redis_server(infra_dir: Path) -> Iterator[ManagedProcess]:
    server = start_redis(HOST, free_port(), infra_dir, infra_dir / "logs")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: ManagedProcess) -> str:
    return f"redis://{HOST}:{redis_server.port}/0"
