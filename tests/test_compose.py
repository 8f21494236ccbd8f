"""docker-compose.yml describes a valid production stack whose services exist in this repository."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest
import yaml

from shared.settings import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
INFRASTRUCTURE = {"nats", "redis", "clickhouse", "tgi", "prometheus", "grafana"}
SLUICE_SERVICES = {"ingress", "safety", "assignment", "inference", "moderation", "telemetry", "drift"}


def _services() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.x is not installed (apt-get install docker-compose)")
def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_names_every_service() -> None:
    assert set(_services()) == INFRASTRUCTURE | SLUICE_SERVICES


@pytest.mark.parametrize("name", sorted(SLUICE_SERVICES))
def test_compose_command_module_exists(name: str) -> None:
    command = _services()[name]["command"]
    assert command[:2] == ["python", "-m"]
    module = command[2]
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


def test_tgi_serves_awq() -> None:
    command = _services()["tgi"]["command"]
    assert command[command.index("--quantize") + 1] == "awq"
