"""Session fixtures that start real infrastructure on free loopback ports."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

# No test may reach a model hub; without this each hub lookup stalls before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from shared.embedded.infrastructure import ManagedProcess, free_port, start_nats, start_redis  # noqa: E402
from shared.settings import Settings  # noqa: E402

HOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """Undo any logging setup a test performs (a CLI command run in-process configures logging), so later tests capture logs as they expect."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


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


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chDB data path of the test session: chDB opens a single path per process."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse_dsn(chdb_dir: Path) -> str:
    """Return a `chdb:///` DSN of a new, empty database; close every client on it before the test ends."""
    import clickhouse_connect

    database = f"test_{uuid.uuid4().hex[:12]}"
    admin = clickhouse_connect.get_client(dsn=f"chdb:///{chdb_dir}")
    try:
        admin.command(f"CREATE DATABASE {database}")
    finally:
        admin.close()
    return f"chdb:///{chdb_dir}?database={database}"


@pytest.fixture
async def telemetry_app(nats_url: str, clickhouse_dsn: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Run the telemetry service in this process on a new database; yield its settings.

    Fetches and retries are shortened so that tests wait tenths of a second.
    """
    from services.telemetry.app import make_app
    from services.telemetry.settings import TelemetrySettings

    settings = Settings(nats_url=nats_url, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path)
    tuning = TelemetrySettings(fetch_timeout_s=0.1, retry_delay_initial_s=0.1, retry_delay_max_s=0.5)
    async with make_app(settings, tuning):
        yield settings
