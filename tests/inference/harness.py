"""Running the inference service in the test process with a backends file written for the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from faststream import TestApp

from services.inference.app import make_app
from shared.embedded.infrastructure import free_port
from shared.settings import Settings

HOST = "127.0.0.1"


def write_backends(directory: Path, embedded_url: str, scripted_url: str) -> Path:
    """Write a backends file: `embedded`, `scripted`, and `unreachable` at a port with no listener."""
    path = directory / "backends.yaml"
    path.write_text(
        "backends:\n"
        f"  embedded: {{kind: tgi, url: '{embedded_url}', first_token_timeout_s: 60}}\n"
        f"  scripted: {{kind: tgi, url: '{scripted_url}', token_timeout_s: 2}}\n"
        f"  unreachable: {{kind: tgi, url: 'http://{HOST}:{free_port()}', connect_timeout_s: 1}}\n",
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def running_inference(bus_url: str, redis_url: str, backends_file: Path) -> AsyncIterator[None]:
    """Run the inference service in this process until the block ends."""
    settings = Settings(nats_url=bus_url, redis_url=redis_url, backends_file=backends_file)
    async with TestApp(make_app(settings)):
        yield
