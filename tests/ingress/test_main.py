"""`python -m services.ingress` as a child process: it serves, logs JSON and fails clearly without a key file."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded.infrastructure import free_port
from shared.settings import REPO_ROOT

from tests.ingress.support import HOST, ApiKeys
from tests.support.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# Importing FastAPI, FastStream and redis takes seconds on a loaded machine; the
# limits only stop a broken start or stop from hanging the test session.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def _environment(nats_url: str, redis_url: str, keys_file: Path, port: int, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SLUICE_HOST": HOST,
        "SLUICE_HTTP_PORT": str(port),
        "SLUICE_NATS_URL": nats_url,
        "SLUICE_REDIS_URL": redis_url,
        "SLUICE_API_KEYS_FILE": str(keys_file),
        "SLUICE_DATA_DIR": str(data_dir),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _log_events(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]


@pytest.fixture
def running_ingress(
    ingress_nats_url: str, redis_url: str, api_keys: ApiKeys, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log_path = tmp_path / "ingress.log"
    process = spawn_service("services.ingress", _environment(ingress_nats_url, redis_url, api_keys.path, port, tmp_path), log_path)
    try:
        yield process, f"http://{HOST}:{port}", log_path
    finally:
        process.terminate()
        process.wait(STOP_TIMEOUT_S)


def test_module_serves_health(running_ingress: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, base_url, log_path = running_ingress

    healthy = _wait_healthy(f"{base_url}/healthz", process)

    assert healthy, log_path.read_text()
    started = [event for event in _log_events(log_path) if event.get("event") == "service_started"]
    assert len(started) == 1
    assert started[0]["service"] == "ingress"


def test_missing_key_file_exits_with_error(ingress_nats_url: str, redis_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keys.json"
    log_path = tmp_path / "ingress.log"

    process = spawn_service("services.ingress", _environment(ingress_nats_url, redis_url, missing, free_port(), tmp_path), log_path)

    assert process.wait(START_TIMEOUT_S) == 1
    [failure] = [event for event in _log_events(log_path) if event.get("event") == "service_start_failed"]
    assert str(missing) in failure["error"]
