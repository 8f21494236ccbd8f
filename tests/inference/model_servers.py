"""Model server child processes for tests: start one on a free port, count its chat requests, kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.embedded.infrastructure import free_port
from shared.settings import REPO_ROOT
from tests.support.services import spawn_service

HOST = "127.0.0.1"
MODEL_SERVER_PACKAGE = REPO_ROOT / "services" / "model_server" / "__main__.py"
# Loading torch, transformers and the model takes 5 to 15 s on two cores.
MODEL_SERVER_START_TIMEOUT_S = 120.0
# Part of uvicorn's access log line for each chat completion request, written
# when the response starts. The server logs JSON, so the line's quotes are escaped.
_CHAT_REQUEST_LOG = "POST /v1/chat/completions HTTP/1.1"


@dataclass
class ModelServerProcess:
    """A running `python -m services.model_server`, its URL and the file its output goes to."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def chat_requests(self) -> int:
        """Return how many chat completion requests the server has started to respond to, from its access log."""
        return self.log_path.read_text(encoding="utf-8", errors="replace").count(_CHAT_REQUEST_LOG)

    def kill(self) -> None:
        """Stop the process at once with SIGKILL, as a crash would, and wait for it to exit."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process with SIGTERM, or SIGKILL after 10 s; do nothing when it has exited."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def running_model_server(directory: Path, name: str, extra_env: dict[str, str]) -> Iterator[ModelServerProcess]:
    """Start a model server on a free port, wait for `GET /health`, and stop it when the block ends."""
    if not MODEL_SERVER_PACKAGE.exists():
        pytest.skip(f"the model server is not written yet: {MODEL_SERVER_PACKAGE} does not exist")
    port = free_port()
    log_path = directory / f"{name}.log"
    env = {**os.environ, "SLUICE_MODEL_SERVER_PORT": str(port), "SLUICE_HOST": HOST, "HF_HUB_OFFLINE": "1", **extra_env}
    server = ModelServerProcess(f"http://{HOST}:{port}", spawn_service("services.model_server", env, log_path), log_path)
    try:
        _wait_for_health(server)
        yield server
    finally:
        server.stop()


def _wait_for_health(server: ModelServerProcess) -> None:
    deadline = time.monotonic() + MODEL_SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the model server exited with code {server.process.returncode}; see {server.log_path}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"the model server did not respond to GET {server.url}/health within {MODEL_SERVER_START_TIMEOUT_S} s; see {server.log_path}"
    )
