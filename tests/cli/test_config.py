"""`sluice config show|set` through the CLI entry point against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.kv import KeyValue
from typer.testing import CliRunner

from services.cli.main import app
from shared.config_store import EXPERIMENTS_KEY, POLICY_KEY, open_config_bucket
from shared.settings import Settings
from tests.support.jetstream import private_nats

pytestmark = pytest.mark.nats

SHIPPED_EXPERIMENTS = Settings().experiments_file.read_text()
DEFAULT_ONLY = """\
default_variant:
  key: from-cli
  backend: embedded
  params: {max_new_tokens: 8}
"""


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private nats-server: a value set here must not reach the services of other tests."""
    with private_nats(tmp_path_factory, "cli-config-nats") as url:
        yield url


def run_config(nats_url: str, *arguments: str) -> tuple[int, str]:
    """Run `sluice config ARGUMENTS --nats-url NATS_URL`; return the exit code and stdout with stderr."""
    result = CliRunner().invoke(app, ["config", *arguments, "--nats-url", nats_url])
    return result.exit_code, result.output


def flat(text: str) -> str:
    """Join the lines that the terminal renderer wrapped, so that a message can be matched whole."""
    return " ".join(text.split())


def read_entry(nats_url: str, key: str) -> KeyValue.Entry:
    async def read() -> KeyValue.Entry:
        connection = await nats.connect(nats_url)
        try:
            return await (await open_config_bucket(connection.jetstream())).get(key)
        finally:
            await connection.close()

    return asyncio.run(read())


def write_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "value.yaml"
    path.write_text(text)
    return path


def test_set_stores_file_and_prints_revision(bus_url: str, tmp_path: Path) -> None:
    exit_code, output = run_config(bus_url, "set", EXPERIMENTS_KEY, str(write_file(tmp_path, DEFAULT_ONLY)))

    entry = read_entry(bus_url, EXPERIMENTS_KEY)
    assert exit_code == 0, output
    assert entry.value == DEFAULT_ONLY.encode()
    assert f"sluice_config/experiments is now revision {entry.revision}" in flat(output)


def test_show_prints_stored_yaml(bus_url: str, tmp_path: Path) -> None:
    run_config(bus_url, "set", EXPERIMENTS_KEY, str(write_file(tmp_path, SHIPPED_EXPERIMENTS)))

    exit_code, output = run_config(bus_url, "show", EXPERIMENTS_KEY)

    assert exit_code == 0
    assert output.startswith(SHIPPED_EXPERIMENTS)
    assert f"revision {read_entry(bus_url, EXPERIMENTS_KEY).revision}" in output


def test_set_rejects_unknown_backend(bus_url: str, tmp_path: Path) -> None:
    run_config(bus_url, "set", EXPERIMENTS_KEY, str(write_file(tmp_path, SHIPPED_EXPERIMENTS)))
    before = read_entry(bus_url, EXPERIMENTS_KEY)
    invalid = write_file(tmp_path, DEFAULT_ONLY.replace("embedded", "missing"))

    exit_code, output = run_config(bus_url, "set", EXPERIMENTS_KEY, str(invalid))

    after = read_entry(bus_url, EXPERIMENTS_KEY)
    assert exit_code == 1
    assert f"{invalid}: variant 'from-cli' names backend 'missing'" in flat(output)
    assert "nothing was written" in output
    assert after.revision == before.revision
    assert after.value == before.value


def test_set_rejects_invalid_policy(bus_url: str, tmp_path: Path) -> None:
    run_config(bus_url, "set", POLICY_KEY, str(Settings().policy_file))
    before = read_entry(bus_url, POLICY_KEY)
    invalid = write_file(tmp_path, "input:\n  - type: TokenLimit\n    options: {limit: 0}\n")

    exit_code, output = run_config(bus_url, "set", POLICY_KEY, str(invalid))

    assert exit_code == 1
    assert "input[0].options.limit: Input should be greater than 0" in flat(output)
    assert read_entry(bus_url, POLICY_KEY).revision == before.revision


def test_show_unset_key_explains(tmp_path_factory: pytest.TempPathFactory) -> None:
    with private_nats(tmp_path_factory, "cli-config-empty-nats") as url:
        exit_code, output = run_config(url, "show", POLICY_KEY)

    assert exit_code == 1
    assert "sluice_config/policy is not set" in flat(output)


def test_set_accepts_shipped_policy(bus_url: str) -> None:
    shipped = Settings().policy_file

    exit_code, output = run_config(bus_url, "set", POLICY_KEY, str(shipped))

    assert exit_code == 0, output
    assert read_entry(bus_url, POLICY_KEY).value == shipped.read_bytes()


def test_set_rejects_invalid_yaml(bus_url: str, tmp_path: Path) -> None:
    exit_code, output = run_config(bus_url, "set", EXPERIMENTS_KEY, str(write_file(tmp_path, "default_variant: [")))

    assert exit_code == 1
    assert "invalid YAML" in output


def test_unknown_name_rejected(bus_url: str, tmp_path: Path) -> None:
    exit_code, output = run_config(bus_url, "set", "backends", str(write_file(tmp_path, DEFAULT_ONLY)))

    assert exit_code == 1
    assert "unknown configuration 'backends'; use one of: experiments, policy" in flat(output)


def test_missing_file_rejected(bus_url: str, tmp_path: Path) -> None:
    exit_code, output = run_config(bus_url, "set", EXPERIMENTS_KEY, str(tmp_path / "absent.yaml"))

    assert exit_code == 1
    assert "cannot read" in output
