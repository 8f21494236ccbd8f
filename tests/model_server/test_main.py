from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shared.embedded.infrastructure import free_port

from tests.support.services import spawn_service

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0


@pytest.fixture
def server_process(tmp_path: Path):
    port = free_port(HOST)
    log_path = tmp_path / "model_server.log"
    env = {**os.environ, "SLUICE_HOST": HOST, "SLUICE_MODEL_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    process = spawn_service("services.model_server", env, log_path)
    yield f"http://{HOST}:{port}", process, log_path
    process.terminate()
    process.wait(timeout=10)


def _wait_healthy(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the model server exited with {process.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"the model server was not healthy within {START_TIMEOUT_S} s: {log_path.read_text()}")


def test_entry_point_serves_and_logs_json(server_process) -> None:
    url, process, log_path = server_process

    _wait_healthy(url, process, log_path)
    response = httpx.post(f"{url}/generate", json={"inputs": "ROMEO:\n", "parameters": {"max_new_tokens": 3}})
    events = [json.loads(line)["event"] for line in log_path.read_text().splitlines() if line.startswith("{")]

    assert response.status_code == 200
    assert "service_starting" in events
    assert "model_loaded" in events
    assert all(line.startswith("{") for line in log_path.read_text().splitlines())
